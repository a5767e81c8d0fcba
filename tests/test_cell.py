"""One cell end to end: the run folder's contract, resume after a crash, the model families."""

import json

import numpy as np
import pytest

import memstudy.pipeline.cell as cell
from memstudy.config import ConfigError, RunConfig

CFG = RunConfig(train_steps=20, checkpoints=(10,), ae_steps=10, encoder_steps=10, ddim_steps=5)


@pytest.fixture(scope="module")
def complete_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("complete")
    return run_dir, cell.run_cell(CFG, run_dir, progress=False)


def test_run_folder_holds_what_the_book_reads(complete_run):
    run_dir, metrics = complete_run
    for name in ["config.json", "env.json", "split.json", "stats.jsonl", "metrics.json",
                 "samples/step_000010.npz", "samples/step_000020.npz",
                 "figures/hist_step000020_contrastive.png", "figures/gallery_step000020_pixel.png",
                 "figures/training_curve.png", "figures/train_examples.png"]:
        assert (run_dir / name).exists(), name
    assert RunConfig.from_json((run_dir / "config.json").read_text()) == CFG
    assert {(r["step"], r["detector"]) for r in metrics["rows"]} == {
        (s, d) for s in (10, 20) for d in ("contrastive", "pixel")}
    split = json.loads((run_dir / "split.json").read_text())
    assert set(split["train_used"]) <= set(split["train"])
    assert set(split["holdout_used"]) <= set(split["holdout"])
    assert not set(split["train"]) & set(split["holdout"])
    assert np.load(run_dir / "samples/step_000020.npz")["images"].shape == (CFG.num_gen, 1, 32, 32)


def test_a_complete_folder_is_returned_not_redone(complete_run):
    run_dir, metrics = complete_run
    before = (run_dir / "metrics.json").stat().st_mtime_ns
    assert cell.run_cell(CFG, run_dir, progress=False) == metrics
    assert (run_dir / "metrics.json").stat().st_mtime_ns == before


def test_a_folder_with_another_config_is_refused(complete_run):
    run_dir, _ = complete_run
    with pytest.raises(ConfigError, match="different config.*dataset_size"):
        cell.run_cell(CFG.replace(dataset_size=16), run_dir, progress=False)


def test_a_crash_after_a_checkpoint_resumes_to_identical_results(complete_run, tmp_path, monkeypatch):
    run_dir, metrics = complete_run
    real = cell.evaluate_checkpoint

    def crash_after_first(cfg, step, *args, **kwargs):
        real(cfg, step, *args, **kwargs)
        raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(cell, "evaluate_checkpoint", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        cell.run_cell(CFG, tmp_path, progress=False)
    assert not cell.is_complete(tmp_path)  # never looks complete
    monkeypatch.setattr(cell, "evaluate_checkpoint", real)
    resumed = cell.run_cell(CFG, tmp_path, progress=False)
    assert resumed["rows"] == metrics["rows"]
    for step in (10, 20):
        a = np.load(run_dir / f"samples/step_{step:06d}.npz")["images"]
        b = np.load(tmp_path / f"samples/step_{step:06d}.npz")["images"]
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("model", ["pixel_dm", "autoencoder", "gan"])
def test_every_model_family_runs_a_cell(model, tmp_path):
    cfg = CFG.replace(model=model)
    metrics = cell.run_cell(cfg, tmp_path, progress=False)
    assert {r["step"] for r in metrics["rows"]} == set(cfg.eval_steps)
    images = np.load(tmp_path / f"samples/step_{max(cfg.eval_steps):06d}.npz")["images"]
    assert images.shape == (cfg.num_gen, 1, 32, 32) and 0 <= images.min() and images.max() <= 1


@pytest.mark.parametrize("changes", [{"ema_decay": 0.99}, {"adversarial_weight": 0.1}])
def test_optional_training_features_run(changes, tmp_path):
    """EMA weights sample the model; the PatchDiscriminator joins stage 1."""
    metrics = cell.run_cell(CFG.replace(**changes), tmp_path, progress=False)
    assert len(metrics["rows"]) == 4 and metrics["autoencoder_recon_pearson_holdout"] > 0

"""One cell end to end: the run folder's contract, resume after a crash, the model families."""

import json

import numpy as np
import pytest
from conftest import kill_after_first_checkpoint_then_resume
import torch

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
    resumed = kill_after_first_checkpoint_then_resume(CFG, tmp_path, monkeypatch)
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


def test_ema_weights_sample_the_model(tmp_path, monkeypatch):
    """With ``ema_decay`` the sampler is the averaged network, and it differs from the raw one."""
    import memstudy.models.train as train

    gaps = []
    real_sample = train.DiffusionTraining.sample

    def spy(self, *args, **kwargs):
        sampler = self.denoiser()
        assert sampler is not self.unet, "EMA is on but the raw weights sample"
        gaps.append(max((e - r).abs().max().item()
                        for e, r in zip(sampler.parameters(), self.unet.parameters())))
        return real_sample(self, *args, **kwargs)

    monkeypatch.setattr(train.DiffusionTraining, "sample", spy)
    metrics = cell.run_cell(CFG.replace(ema_decay=0.99), tmp_path, progress=False)
    assert len(metrics["rows"]) == 4
    assert len(gaps) == len(CFG.replace(ema_decay=0.99).eval_steps)  # one per checkpoint
    assert min(gaps) > 1e-4, gaps  # an average over 10-20 steps is not the last step's weights


def test_patch_discriminator_trains_with_stage_1(tmp_path, monkeypatch):
    """With ``adversarial_weight`` a PatchDiscriminator is built and learns during stage 1."""
    import sys

    import memstudy.models.networks as networks

    real_build = networks.build_discriminator
    built = []

    def spy(*args, **kwargs):
        disc = real_build(*args, **kwargs)
        built.append((disc, {k: v.detach().clone() for k, v in disc.state_dict().items()}))
        return disc

    # Patch every memstudy module that imported the builder by name.
    for name, module in list(sys.modules.items()):
        if name.startswith("memstudy") and getattr(module, "build_discriminator", None) is real_build:
            monkeypatch.setattr(module, "build_discriminator", spy)
    metrics = cell.run_cell(CFG.replace(adversarial_weight=0.1), tmp_path, progress=False)
    assert metrics["autoencoder_recon_pearson_holdout"] > 0
    assert len(built) == 1, "no PatchDiscriminator was built for stage 1"
    disc, before = built[0]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.parameters()), \
        "the discriminator received no gradients"
    after = disc.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "its weights never changed"

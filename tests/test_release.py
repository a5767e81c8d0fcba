"""The release filter on a fake run folder whose answers are known by hand."""

import json

import numpy as np
import pytest

from memstudy.analysis.release import available_steps, filter_release

N = 6


def _eval_npz(path, sim):
    sim = np.asarray(sim, dtype=np.float32)
    np.savez_compressed(path, sim_gen_train=sim, nn_gen_train=np.arange(N),
                        sim_gen_holdout=sim - 0.1, nn_gen_holdout=np.arange(N),
                        sim_train_gen=np.full(4, 0.5, np.float32),
                        sim_train_holdout=np.full(4, 0.5, np.float32),
                        sim_holdout_train=np.array([0.3, 0.4, 0.5, 0.6], np.float32))


@pytest.fixture
def run(tmp_path):
    """A run with checkpoints 10 and 20; step 20 scored by three detectors, one without npz."""
    run = tmp_path / "cell-a"
    (run / "samples").mkdir(parents=True)
    (run / "eval").mkdir()
    for step in (10, 20):
        images = (np.arange(N)[:, None, None, None] * np.ones((1, 1, 4, 4)) / 10 + step / 100)
        np.savez_compressed(run / "samples" / f"step_{step:06d}.npz",
                            images=images.astype(np.float16))
    rows = [{"step": 20, "detector": "contrastive", "tau": 0.8, "holdout_copy_rate": 0.05},
            {"step": 20, "detector": "pixel", "tau": 0.9},
            {"step": 20, "detector": "ssim", "tau": 0.7}]  # ssim has a row but no npz
    (run / "eval" / "step_000020.json").write_text(json.dumps(rows))
    #                 sample:    0     1     2     3     4     5
    _eval_npz(run / "eval" / "step_000020_contrastive.npz", [0.95, 0.85, 0.79, 0.5, 0.4, 0.3])
    _eval_npz(run / "eval" / "step_000020_pixel.npz", [0.99, 0.5, 0.95, 0.92, 0.1, 0.2])
    (run / "eval" / "step_000010.json").write_text(json.dumps(rows[:1]))
    _eval_npz(run / "eval" / "step_000010_contrastive.npz", [0.1] * N)
    return run


def test_the_last_checkpoint_is_filtered_by_default(run):
    assert available_steps(run) == [10, 20]
    report = filter_release(run)
    assert report["step"] == 20 and report["detector"] == "contrastive"
    assert report["tau"] == pytest.approx(0.8)
    # 0.95 and 0.85 are above tau and dropped; 0.79, just below, is kept.
    assert (report["n_before"], report["n_dropped"], report["n_kept"]) == (6, 2, 4)
    assert report["holdout_copy_rate"] == pytest.approx(0.05)


def test_kept_samples_are_written_with_their_origin(run):
    filter_release(run)
    released = np.load(run / "release" / "released.npz")
    assert released["source_index"].tolist() == [2, 3, 4, 5]
    original = np.load(run / "samples" / "step_000020.npz")["images"]
    assert released["images"].dtype == np.float16
    assert np.array_equal(released["images"], original[[2, 3, 4, 5]])
    assert json.loads((run / "release" / "release_report.json").read_text())["n_kept"] == 4
    assert (run / "release" / "release_hist.png").stat().st_size > 0


def test_residual_copies_by_every_other_detector_with_an_npz(run):
    report = filter_release(run)
    assert set(report["residual"]) == {"pixel"}  # ssim has no npz at this step
    pixel = report["residual"]["pixel"]
    # pixel flags samples 0, 2 and 3 (> 0.9); of the kept 2..5, samples 2 and 3 remain.
    assert pixel["copy_rate_before"] == pytest.approx(3 / 6)
    assert pixel["n_residual_copies"] == 2
    assert pixel["residual_copy_rate"] == pytest.approx(2 / 4)


def test_another_detector_step_and_folder(run, tmp_path):
    report = filter_release(run, step=20, detector="pixel", out_dir=tmp_path / "out")
    assert (report["n_dropped"], report["n_kept"]) == (3, 3)
    assert report["residual"]["contrastive"]["residual_copy_rate"] == pytest.approx(1 / 3)
    assert (tmp_path / "out" / "released.npz").exists()
    assert not (run / "release").exists()
    early = filter_release(run, step=10)
    assert early["n_dropped"] == 0 and early["residual"] == {}


def test_clear_errors(run, tmp_path):
    with pytest.raises(FileNotFoundError, match="steps available"):
        filter_release(run, step=30)
    with pytest.raises(FileNotFoundError, match="scored: .*contrastive"):
        filter_release(run, detector="ssim")
    with pytest.raises(FileNotFoundError, match="no synthetic set"):
        filter_release(tmp_path / "empty")


# --- the filter's own error and the one-page report -------------------------------------------


def _fake_benchmark(folder, image_size=4, seeds=(0, 1, 2)):
    """A benchmark folder in which the contrastive filter caught 90 % of copies, 5 % of novel."""
    import pandas as pd

    folder.mkdir(parents=True)
    pd.DataFrame([{"detector": "contrastive", "recall": 0.9, "recall_lo": 0.85, "recall_hi": 0.94,
                   "fpr_novel": 0.05, "fpr_novel_lo": 0.02, "fpr_novel_hi": 0.09}]).to_parquet(
        folder / "validation.parquet")
    pd.DataFrame([{"detector": "contrastive", "kind": k, "rate": r, "lo": r - 0.1, "hi": 1.0, "n": 96}
                  for k, r in (("shift", 0.8), ("flip", 1.0), ("novel", 0.05))]).to_parquet(
        folder / "recall.parquet")
    (folder / "benchmark.json").write_text(json.dumps({"params": {
        "image_size": image_size, "detectors": ["contrastive", "pixel"], "seeds": list(seeds),
        "seed": seeds[0]}}))


def test_the_filter_error_comes_from_the_benchmark_at_the_same_size(run, tmp_path):
    from memstudy.analysis.release import filter_error

    _fake_benchmark(tmp_path / "results" / "validation_4px")
    _fake_benchmark(tmp_path / "results" / "validation_8px", image_size=8, seeds=(0,))
    err = filter_error("contrastive", 4, tmp_path / "results")
    assert err["measured"] and err["seeds"] == [0, 1, 2]
    assert err["sensitivity"] == pytest.approx(0.9) and err["miss_rate"] == pytest.approx(0.1)
    assert (err["miss_rate_lo"], err["miss_rate_hi"]) == pytest.approx((0.06, 0.15))
    assert err["specificity"] == pytest.approx(0.95)
    assert (err["specificity_lo"], err["specificity_hi"]) == pytest.approx((0.91, 0.98))
    assert set(err["by_change"]) == {"shift", "flip"}  # novel is not a change
    missing = filter_error("ssim", 4, tmp_path / "results")
    assert not missing["measured"] and "memstudy validate --image-size 4" in missing["how"]


def test_the_report_states_the_filter_error_and_lists_ids_and_hashes(run, tmp_path):
    _fake_benchmark(tmp_path / "results" / "validation")
    report = filter_release(run, validation_root=tmp_path / "results")
    assert report["filter_error"]["sensitivity"] == pytest.approx(0.9)
    pixel = report["residual"]["pixel"]
    assert pixel["residual_lo"] < 0.5 < pixel["residual_hi"]  # 2 of 4: exact interval
    hashes = [s["hash"] for s in report["samples"]]
    assert len(set(hashes)) == N and [s["kept"] for s in report["samples"]] == [False, False] + [True] * 4
    page = (run / "release" / "release_report.md").read_text()
    for text in ("miss rate", "10.0% [6.0%, 15.0%]", "specificity", "95.0%", hashes[0], hashes[1],
                 "| pixel |"):
        assert text in page, text
    assert hashes[2] not in page  # kept samples are listed in the json only
    bare = filter_release(run, validation_root=tmp_path / "nothing")
    assert not bare["filter_error"]["measured"]
    assert "miss rate of this filter is unknown" in (run / "release" / "release_report.md").read_text()

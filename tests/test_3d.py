"""3D cells (spatial_dims=3): volumes of the same patients, the 3D copy detector, a whole cell
under papermill, and resume after a kill. Volumes are 16-cubed so that each test takes seconds."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import papermill as pm
import pytest
from conftest import kill_after_first_checkpoint_then_resume
import torch
from monai.networks.layers import AffineTransform

import memstudy.pipeline.cell as cell
from memstudy.config import ConfigError, RunConfig
from memstudy.data.sets import load_sets, patient_split
from memstudy.data.volumes import patient_volumes
from memstudy.detect.contrastive3d import Contrastive3DDetector
from memstudy.metrics.scoring import score
from memstudy.models.augment import AugmentSpec, BatchAugment

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "ablation.ipynb"
# The smallest 3D cell: 2 training patients (8 "slices" at 4 per patient -> 2 volumes), 16-cubed
# volumes, an autoencoder that downsamples twice (8-cubed latents), budgets of a few steps.
SMOKE_3D = dict(spatial_dims=3, image_size=16, ae_channels=(8, 16), dataset_size=8,
                holdout_size=8, ae_steps=4, train_steps=6, checkpoints=(3, 6), num_gen=4,
                ddim_steps=3, encoder_steps=3, unet_preset="XS", batch_size=4,
                detectors=("contrastive3d", "pixel"), device="cpu")
CFG = RunConfig(**SMOKE_3D)


def test_volumes_are_the_patients_of_the_same_2d_cell():
    sets_3d = load_sets(CFG)
    sets_2d = load_sets(CFG.replace(spatial_dims=2, detectors=("contrastive", "pixel")))
    assert sets_3d.train.images.shape == (2, 1, 16, 16, 16)
    np.testing.assert_array_equal(sets_3d.train.patient_id, np.unique(sets_2d.train.patient_id))
    np.testing.assert_array_equal(sets_3d.holdout.patient_id, np.unique(sets_2d.holdout.patient_id))
    assert not set(sets_3d.train.patient_id) & set(sets_3d.holdout.patient_id)


@pytest.mark.parametrize("change, message", [
    (dict(spatial_dims=4), "spatial_dims must be 2"),
    (dict(detectors=("contrastive", "pixel")), "compare 2D slices"),
    (dict(model="gan"), "no 3D version"),
    (dict(image_size=128), "too large"),
    (dict(image_size=12), "divisible"),
    (dict(adversarial_weight=0.1), "no 3D discriminator"),
])
def test_impossible_3d_configs_are_refused_before_work(change, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**{**SMOKE_3D, **change})


def test_the_3d_detector_is_refused_in_a_2d_cell():
    with pytest.raises(ConfigError, match="compares volumes"):
        RunConfig(detectors=("contrastive3d",))


def test_3d_augmentation_flips_left_right_and_keeps_shapes():
    x = torch.rand(3, 1, 8, 8, 8)
    flipped = BatchAugment(AugmentSpec(flip_p=1.0), torch.Generator().manual_seed(0))(x)
    torch.testing.assert_close(flipped, x.flip(-1))  # W is the patient's left-right axis
    strong = BatchAugment("strong", torch.Generator().manual_seed(0))(x)
    assert strong.shape == x.shape and not torch.equal(strong, x)


def _shift(x: torch.Tensor, voxels: float) -> torch.Tensor:
    """Translate volumes by ``voxels`` along the left-right axis (zero padding)."""
    theta = torch.eye(3, 4).repeat(len(x), 1, 1)
    theta[:, 2, 3] = 2 * voxels / x.shape[-1]
    return AffineTransform(normalized=True, padding_mode="zeros", align_corners=False)(x, theta)


def test_contrastive3d_flags_planted_copies_and_passes_new_patients():
    # Known truth from the generated cohort: 16 training volumes; the "synthetic" set holds
    # exact, half-voxel-shifted, 5-degree-rotated and mirrored copies of training volumes, then
    # volumes of 16 test-share patients no model or ruler has seen.
    split = patient_split(CFG)
    vol = lambda ids: torch.from_numpy(patient_volumes(ids, CFG).images)  # noqa: E731
    train, holdout, novel = vol(split["train"][:16]), vol(split["holdout"][:16]), vol(split["test"][:16])
    rotate = BatchAugment(AugmentSpec(rotate_deg=5.0), torch.Generator().manual_seed(1))
    copies = torch.cat([train[:4], _shift(train[4:8], 0.5), rotate(train[8:12]), train[12:16].flip(-1)])
    detector = Contrastive3DDetector(steps=30, batch_size=16, seed=0).fit(train)
    found = score(detector, train, holdout, torch.cat([copies, novel]))
    above = found.sim_gen_train > found.result.tau
    assert above[:16].all(), f"missed planted copies: {np.round(found.sim_gen_train[:16], 3)}"
    np.testing.assert_array_equal(found.nn_gen_train[:16], np.arange(16))  # the right original
    # New patients sit near the floor (about 5 % by construction of tau): allow 4 of 16.
    assert above[16:].sum() <= 4, f"new patients flagged: {np.round(found.sim_gen_train[16:], 3)}"
    assert detector.embed(train[:2]).shape == (2, 32)  # Dar et al.'s 32-d 3D embedding


@pytest.fixture(scope="module")
def complete_3d(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cell3d")
    return run_dir, cell.run_cell(CFG, run_dir, progress=False)


def test_a_3d_cell_fills_its_run_folder(complete_3d):
    run_dir, metrics = complete_3d
    for name in ["figures/gallery_step000006_contrastive3d.png", "figures/hist_step000006_pixel.png",
                 "figures/train_examples.png", "samples/step_000006_nifti/gen_000.nii.gz"]:
        assert (run_dir / name).exists(), name
    assert np.load(run_dir / "samples/step_000006.npz")["images"].shape == (4, 1, 16, 16, 16)
    assert nib.load(run_dir / "samples/step_000006_nifti/gen_000.nii.gz").shape == (16, 16, 16)
    rows = metrics["rows"]
    assert {(r["step"], r["detector"]) for r in rows} == {
        (s, d) for s in (3, 6) for d in ("contrastive3d", "pixel")}
    assert all(r["n_train"] == 2 and r["n_gen"] == 4 and r["n_train_patients"] == 2 for r in rows)


def test_a_killed_3d_cell_resumes_to_identical_results(complete_3d, tmp_path, monkeypatch):
    run_dir, metrics = complete_3d
    resumed = kill_after_first_checkpoint_then_resume(CFG, tmp_path, monkeypatch)
    assert resumed["rows"] == metrics["rows"]
    np.testing.assert_array_equal(np.load(run_dir / "samples/step_000006.npz")["images"],
                                  np.load(tmp_path / "samples/step_000006.npz")["images"])


def test_a_3d_cell_runs_under_papermill(tmp_path):
    run_dir = tmp_path / "run"
    params = {k: ",".join(map(str, v)) if isinstance(v, tuple) else v for k, v in SMOKE_3D.items()}
    pm.execute_notebook(str(NOTEBOOK), str(tmp_path / "out.ipynb"), progress_bar=False,
                        parameters={**params, "train_steps": 3, "checkpoints": "",
                                    "run_dir": str(run_dir)})
    config = json.loads((run_dir / "config.json").read_text())
    assert config["spatial_dims"] == 3 and config["image_size"] == 16
    assert (run_dir / "metrics.json").exists()
    assert (run_dir / "figures" / "gallery_step000003_contrastive3d.png").exists()


def test_dims_table_puts_each_arm_beside_its_null_with_intervals():
    import pandas as pd

    from memstudy.analysis.dims import RATES, dims_table, onset

    def row(dims, seed, excess):
        cols = {"status": "complete", "spatial_dims": dims, "dataset_size": 8, "seed": seed,
                "detector": "pixel", "step": 100, "n_train_patients": 2}
        for name in RATES:
            cols |= {name: 0.05 + excess, f"null_{name}": 0.05, f"excess_{name}": excess,
                     f"excess_{name}_lo": excess - 0.1, f"excess_{name}_hi": excess + 0.1}
        return cols

    # 2D at its null in both replicates, 3D well above it: the difference must show, and only 3D
    # starts memorizing by step 100.
    df = pd.DataFrame([row(2, 0, 0.0), row(2, 1, 0.0), row(3, 0, 0.6), row(3, 1, 0.7)])
    table = dims_table(df).set_index("spatial_dims")
    assert table.loc[3, "excess_copy_rate"] == pytest.approx(0.65)
    assert table.loc[3, "excess_copy_rate_lo"] > 0.3 and table.loc[2, "excess_copy_rate_lo"] < 0
    assert table.loc[3, "diff_patients_matched_rate"] == pytest.approx(0.65)
    assert table.loc[3, "diff_patients_matched_rate_lo"] > 0
    starts = onset(dims_table(df)).set_index("spatial_dims")["onset_copy_rate"]
    assert starts[3] == 100 and pd.isna(starts[2])
    with pytest.raises(ValueError, match="grid run dims"):
        dims_table(df.drop(columns="excess_copy_rate"))


def test_the_dims_preset_pairs_2d_and_3d_cells_on_the_same_patients():
    from memstudy.data.sets import cell_patients
    from memstudy.pipeline.grid import load_spec

    cells = load_spec("dims").cells()
    assert {c.config.spatial_dims for c in cells} == {2, 3}
    by_key = {}
    for c in cells:
        key = (c.config.dataset_size, c.config.seed, c.config.model)
        by_key.setdefault(key, []).append(c.config)
    for pair in by_key.values():
        flat, vol = sorted(pair, key=lambda cfg: cfg.spatial_dims)
        assert flat.replace(spatial_dims=3) == vol  # only the dimensionality differs
        np.testing.assert_array_equal(cell_patients(flat)[1], cell_patients(vol)[1])
    assert len({k[1] for k in by_key}) >= 2  # replicates


def test_never_seen_volumes_of_the_null_and_negative_control_are_test_share_and_disjoint():
    from memstudy.data.volumes import unseen_volumes
    from memstudy.models.controls import UNSEEN_SALT

    cfg = CFG.replace(model="control_negative")
    null = unseen_volumes(cfg, 4, UNSEEN_SALT)
    negative = unseen_volumes(cfg, 4, UNSEEN_SALT, skip=4)
    test_share = set(patient_split(cfg)["test"])
    assert set(null.patient_id) <= test_share and set(negative.patient_id) <= test_share
    assert not set(null.patient_id) & set(negative.patient_id)
    assert null.images.shape == (4, 1, 16, 16, 16)
    with pytest.raises(ValueError, match="raise cohort_patients"):
        unseen_volumes(cfg, len(test_share), UNSEEN_SALT, skip=1)


def test_v_prediction_trains_and_samples_against_the_velocity():
    """prediction_type reaches both schedulers and the loss: the target is the velocity
    sqrt(a) * noise - sqrt(1 - a) * x0 (a = alpha-bar at t), checked on known numbers, and an
    unknown type is refused before any work."""
    from memstudy.models.networks import (build_sample_scheduler, build_train_scheduler,
                                          diffusion_target)

    cfg = CFG.replace(prediction_type="v_prediction")
    train, sample = build_train_scheduler(cfg), build_sample_scheduler(cfg)
    assert train.prediction_type == sample.prediction_type == "v_prediction"
    x0, noise, t = torch.full((1, 3, 4, 4, 4), 2.0), torch.ones(1, 3, 4, 4, 4), torch.tensor([500])
    a = train.alphas_cumprod[500]
    expected = a.sqrt() * 1.0 - (1 - a).sqrt() * 2.0
    assert torch.allclose(diffusion_target(train, x0, noise, t), expected.expand_as(x0))
    assert torch.equal(diffusion_target(build_train_scheduler(CFG), x0, noise, t), noise)
    with pytest.raises(ConfigError, match="prediction_type"):
        CFG.replace(prediction_type="x0")

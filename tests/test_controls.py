"""The controls: a ruler must find training images (positive) and sit at its null on new ones."""

import numpy as np
import pytest
import torch

from memstudy.config import RunConfig
from memstudy.data.sets import load_sets
from memstudy.detect.factory import make_detector
from memstudy.metrics.evidence import checkpoint_evidence
from memstudy.metrics.scoring import score
from memstudy.models.controls import NegativeControl, PositiveControl, null_set, unseen_slices
from memstudy.models.train import PixelSpace


class _Identity(PixelSpace):
    """A perfect autoencoder: the round trip returns the images (the fast test's stand-in)."""


def _evidence(cfg, sets, gen, null):
    train, holdout = sets.tensors()
    det = make_detector("pixel")
    found = score(det, train, holdout, gen)
    return checkpoint_evidence(det, found, train, holdout, gen, torch.from_numpy(null.images),
                               sets.train.patient_id, sets.holdout.patient_id, null.patient_id)


@pytest.fixture(scope="module")
def small():
    cfg = RunConfig.from_params(dict(image_size=32, dataset_size=16, holdout_size=32, num_gen=32,
                                     model="control_positive", device="cpu"))
    return cfg, load_sets(cfg), null_set(cfg)


def test_null_and_negative_control_patients_are_never_seen(small):
    cfg, sets, null = small
    control = unseen_slices(cfg, cfg.num_gen, 7, skip=-(-cfg.num_gen // cfg.slices_per_patient))
    seen = set(sets.train.patient_id) | set(sets.holdout.patient_id)
    assert not seen & set(null.patient_id) and not seen & set(control.patient_id)
    assert not set(null.patient_id) & set(control.patient_id)
    assert set(null.patient_id) <= set(sets.split["test"])


def test_positive_control_is_flagged(small):
    cfg, sets, null = small
    train, _ = sets.tensors()
    gen = PositiveControl(cfg, _Identity(), train, "cpu").sample(cfg.num_gen, seed=0)
    row = _evidence(cfg, sets, gen, null)
    assert row["copy_rate"] >= 0.95 and row["mem_rate"] >= 0.95
    assert row["excess_copy_rate_lo"] > 0.5


def test_negative_control_sits_at_its_null(small):
    cfg, sets, null = small
    gen = NegativeControl(cfg.replace(model="control_negative"), _Identity(), "cpu").sample(cfg.num_gen, seed=0)
    row = _evidence(cfg, sets, gen, null)
    assert row["excess_copy_rate_lo"] <= 0 <= row["excess_copy_rate_hi"]
    assert row["excess_mem_rate_lo"] <= 0 <= row["excess_mem_rate_hi"]


def test_control_cell_runs_with_nulls_and_epochs(tmp_path):
    from memstudy.pipeline.cell import run_cell

    cfg = RunConfig.from_params(dict(model="control_negative", ae_steps=5, encoder_steps=5,
                                     num_gen=8, holdout_size=8, device="cpu", detectors="pixel"))
    rows = run_cell(cfg, tmp_path / "cell", progress=False)["rows"]
    assert [r["step"] for r in rows] == [5]
    for key in ("null_copy_rate", "excess_copy_rate_lo", "null_mem_rate", "epochs", "n_gen_mem"):
        assert key in rows[0], key


def test_config_refuses_a_test_share_too_small_for_the_null_and_the_negative_control():
    from memstudy.config import ConfigError

    with pytest.raises(ConfigError, match="raise cohort_patients to at least 854"):
        RunConfig(num_gen=64, slices_per_patient=1, dataset_size=8)  # 2 x 64 patients > 90
    RunConfig(num_gen=64, slices_per_patient=1, dataset_size=8, cohort_patients=1000)

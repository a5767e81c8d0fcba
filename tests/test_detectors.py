"""Detectors against planted copies with known truth, and new patients at the floor rate."""

import numpy as np
import pytest
import torch

from memstudy.config import RunConfig
from memstudy.data.sets import load_sets, patient_slices
from memstudy.detect.contrastive import ContrastiveDetector, nt_xent
from memstudy.detect.pixel import PixelDetector
from memstudy.metrics.scoring import score

CFG = RunConfig(image_size=32, dataset_size=32, holdout_size=64)


@pytest.fixture(scope="module")
def planted():
    """Synthetic set = 16 exact copies + 16 near copies of training slices + 64 slices of
    16 never-seen (test-share) patients.

    Each detector's near copies carry the change it claims to tolerate: pixel correlation is
    invariant to a brightness/contrast change (plus a little noise); Dar et al.'s encoder is
    taught only flips and small rotations, so its near copies are flipped. Other changes are
    measured, with intervals, by the planted-copy benchmark (memstudy validate).
    """
    sets = load_sets(CFG)
    train, holdout = sets.tensors()
    g = torch.Generator().manual_seed(0)
    exact = train[:16].clone()
    near = {"pixel": 0.9 * train[16:32] + 0.05 + 0.02 * torch.randn(train[16:32].shape, generator=g),
            "contrastive": train[16:32].flip(-1)}
    test_ids = sets.split["test"][:16]
    novel = torch.from_numpy(patient_slices(test_ids, CFG).images)
    gen = {name: torch.cat([exact, changed, novel]) for name, changed in near.items()}
    return train, holdout, gen


@pytest.fixture(scope="module")
def contrastive(planted):
    train = planted[0]
    return ContrastiveDetector(dim=128, steps=300, batch_size=32, seed=0).fit(train)


@pytest.mark.parametrize("name", ["pixel", "contrastive"])
def test_planted_copies_are_flagged_and_new_patients_sit_at_the_floor(planted, contrastive, name):
    train, holdout, gen = planted
    det = PixelDetector() if name == "pixel" else contrastive
    found = score(det, train, holdout, gen[name], percentile=95)
    flagged = found.sim_gen_train > found.result.tau
    assert flagged[:16].all(), "every exact copy must be flagged"
    assert found.nn_gen_train[:16].tolist() == list(range(16)), "and matched to its original"
    assert flagged[16:32].mean() >= 0.9, f"near copies flagged: {flagged[16:32].mean():.2f}"
    novel_rate = flagged[32:].mean()
    assert novel_rate <= 0.15, f"new patients flagged at {novel_rate:.2f}, expected about 0.05"
    assert found.result.fp_floor == pytest.approx(0.05, abs=0.04)


def test_pixel_detector_scores_exact_copies_at_one(planted):
    train, holdout, gen = planted
    found = score(PixelDetector(), train, holdout, gen["pixel"])
    assert np.allclose(found.sim_gen_train[:16], 1.0, atol=1e-5)


def test_nt_xent_prefers_matching_views():
    z = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    aligned = nt_xent(z, z + 0.01 * torch.randn_like(z))
    shuffled = nt_xent(z, z[torch.randperm(8)])
    assert aligned < shuffled

"""The added detectors (nn_ratio, ssim, external) and patient-level memorization, on cases
whose answers are known by hand."""

import numpy as np
import pytest
import torch
from monai.metrics.regression import compute_ssim_and_cs

from memstudy.data.cohort import make_cohort
from memstudy.detect.base import Detector
from memstudy.detect.external import EXTERNAL_ENV, ExternalDetector
from memstudy.detect.factory import ALL_DETECTORS, make_detector
from memstudy.detect.nn_ratio import NNRatioDetector, nn_distance_ratio
from memstudy.detect.pixel import PixelDetector
from memstudy.detect.ssim import SSIMDetector, pairwise_ssim, pairwise_ssim_matrix
from memstudy.detect.trusted import TrustedSpec
from memstudy.metrics.patient import patient_level
from memstudy.metrics.scoring import score


@pytest.fixture(scope="module")
def slices():
    """64 slices of 16 patients and 64 of 16 others, at 32 px."""
    a = torch.from_numpy(make_cohort(16, 32, 4, seed=0).images)
    b = torch.from_numpy(make_cohort(16, 32, 4, seed=0, first_patient=100).images)
    return a, b


# --- nn_ratio ---------------------------------------------------------------------------------


def test_nn_ratio_copy_of_an_isolated_reference_is_flagged():
    # References: three points far apart in a 4-pixel "image"; the query equals the first.
    ref = torch.tensor([[0.0, 0, 0, 0], [1.0, 1, 1, 1], [0.0, 1, 0, 1]]).view(3, 1, 2, 2)
    query = ref[:1] + 0.01
    ratio, d1, idx = nn_distance_ratio(query, ref)
    assert idx.tolist() == [0]
    assert d1.item() == pytest.approx(0.01, rel=1e-4)  # l2 / sqrt(CHW): 0.01 on every pixel
    d2 = np.sqrt(2 * 0.01**2 + 2 * 0.99**2) / 2  # to (0, 1, 0, 1), the second nearest
    assert ratio.item() == pytest.approx(0.01 / d2, rel=1e-3)
    sim, _ = NNRatioDetector().search(query.view(1, -1), ref.view(3, -1))
    assert sim.item() > 2 / 3


def test_nn_ratio_equidistant_query_is_not_flagged():
    ref = torch.tensor([[0.0, 0], [2.0, 0], [10.0, 10]]).view(3, 1, 1, 2)
    query = torch.tensor([[1.0, 0]]).view(1, 1, 1, 2)  # halfway between the first two
    ratio, _, _ = nn_distance_ratio(query, ref)
    assert ratio.item() == pytest.approx(1.0)
    sim, _ = NNRatioDetector().nearest(query, ref)
    assert sim.item() == pytest.approx(0.0, abs=1e-6)
    assert not sim.item() > NNRatioDetector.fixed_tau


def test_nn_ratio_rule_is_gu_et_al_one_third():
    # 1-pixel references at 0, 10 and -100: a query at d from 0 has d1 = d and d2 = 10 - d.
    ref = torch.tensor([0.0, 10.0, -100.0]).view(3, 1, 1, 1)
    for d, copy in ((2.0, True), (2.4, True), (2.6, False), (4.0, False)):  # 1/3 at d = 2.5
        query = torch.tensor([d]).view(1, 1, 1, 1)
        ratio, _, _ = nn_distance_ratio(query, ref)
        assert ratio.item() == pytest.approx(d / (10 - d))
        sim, _ = NNRatioDetector().nearest(query, ref)
        assert (sim.item() > NNRatioDetector.fixed_tau) == copy


def test_nn_ratio_exact_copies_score_one_and_use_the_fixed_tau(slices):
    a, b = slices
    found = score(NNRatioDetector(), a, b, a[:8])
    assert np.allclose(found.sim_gen_train, 1.0)
    assert found.nn_gen_train.tolist() == list(range(8))
    assert found.result.tau == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="k=1"):
        NNRatioDetector().nearest(a[:2], a, k=2)


# --- ssim -------------------------------------------------------------------------------------


def test_ssim_of_an_image_with_itself_is_one(slices):
    a, _ = slices
    s = pairwise_ssim(a[:5], a[:5])
    assert torch.allclose(s.diag(), torch.ones(5), atol=1e-5)
    assert (s - torch.eye(5)).max() < 1.0  # and distinct slices are below 1


def test_pairwise_ssim_equals_monai_and_does_not_depend_on_chunks(slices):
    a, b = slices
    q, r = a[:6], b[:7]
    mine = pairwise_ssim(q, r)
    ssim_map, _ = compute_ssim_and_cs(q.repeat_interleave(len(r), 0), r.repeat(len(q), 1, 1, 1),
                                      spatial_dims=2, kernel_size=(11, 11),
                                      kernel_sigma=(1.5, 1.5), data_range=1.0)
    monai = ssim_map.mean(dim=(1, 2, 3)).view(len(q), len(r))
    assert torch.allclose(mine, monai, atol=1e-5)
    assert torch.allclose(pairwise_ssim(q, r, max_floats=1), mine, atol=1e-6)


def test_ssim_nearest_is_the_best_pair_of_the_full_matrix(slices):
    # Speed belongs to benchmarks; here: the chunked search returns the brute-force answer.
    a, b = slices
    sims, idx = SSIMDetector().nearest(a, b)
    full = pairwise_ssim(a, b)
    assert sims.shape == idx.shape == (64, 1)
    assert torch.allclose(torch.as_tensor(sims)[:, 0], full.max(dim=1).values, atol=1e-5)
    assert (torch.as_tensor(idx)[:, 0] == full.argmax(dim=1)).all()


def test_the_batched_window_products_equal_the_filtered_product_maps(slices):
    # The fast SSIM (one matrix product per window position) against the first implementation
    # (a filtered product map per pair), with bands and chunks of every size.
    a, b = slices
    q, r = a[:9], b[:13]
    slow = pairwise_ssim_matrix(q, r)
    for max_floats in (1, 5_000, 2**23):
        assert torch.allclose(pairwise_ssim(q, r, max_floats=max_floats), slow, atol=2e-6)
    x64 = torch.nn.functional.interpolate(a[:3], size=64, mode="bilinear")
    assert torch.allclose(pairwise_ssim(x64, x64.flip(0)), pairwise_ssim_matrix(x64, x64.flip(0)),
                          atol=2e-6)


def test_the_ssim_detector_reuses_the_transpose_of_a_search_the_other_way(slices, monkeypatch):
    from memstudy.detect import ssim as ssim_mod

    a, b = slices
    calls = []
    real = ssim_mod.pairwise_ssim
    monkeypatch.setattr(ssim_mod, "pairwise_ssim", lambda q, r, *args: calls.append(1) or real(q, r, *args))
    found = score(SSIMDetector(), a[:16], b[:12], a[20:30])
    assert len(calls) == 3  # gen-train, gen-holdout, train-holdout; the other two are transposes
    full = real(a[:16], a[20:30])
    assert np.allclose(found.sim_train_gen, full.max(dim=1).values.numpy(), atol=1e-6)
    assert np.allclose(found.sim_gen_train, full.max(dim=0).values.numpy(), atol=1e-6)


def test_ssim_detector_flags_planted_copies_with_holdout_tau(slices):
    a, b = slices
    gen = torch.cat([a[:4], (a[4:8] + 0.02).clamp(0, 1)])
    found = score(SSIMDetector(), a, b, gen)
    assert found.sim_gen_train[:4] == pytest.approx(1.0, abs=1e-5)
    assert (found.sim_gen_train > found.result.tau).all()
    assert found.result.tau == pytest.approx(np.percentile(found.sim_train_holdout, 95))


# --- external ---------------------------------------------------------------------------------


# TorchScript is deprecated in recent PyTorch (still supported); its warning is not our concern.
jit_ok = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


class _TinyEncoder(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(x, 4).flatten(1)


@jit_ok
def test_external_encoder_is_loaded_from_a_local_torchscript_file(tmp_path, slices, monkeypatch):
    a, b = slices
    path = tmp_path / "encoder.pt"
    torch.jit.script(_TinyEncoder()).save(str(path))
    det = ExternalDetector(path)
    assert det.embed(a[:3]).shape == (3, 64)
    found = score(det, a, b, a[:4])
    assert np.allclose(found.sim_gen_train, 1.0, atol=1e-5)
    monkeypatch.setenv(EXTERNAL_ENV, str(path))  # the environment variable works too
    assert make_detector("external").embed(a[:2]).shape == (2, 64)


def test_external_encoder_may_be_a_torch_export_program(tmp_path, slices):
    a, _ = slices
    batch = torch.export.Dim("batch")
    program = torch.export.export(_TinyEncoder(), (a[:2],), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(tmp_path / "encoder.pt2"))
    det = ExternalDetector(tmp_path / "encoder.pt2")
    assert torch.allclose(det.embed(a[:5]), _TinyEncoder()(a[:5]))


@jit_ok
def test_external_encoder_missing_says_how_to_provide_one(tmp_path, monkeypatch):
    monkeypatch.delenv(EXTERNAL_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=EXTERNAL_ENV):
        make_detector("external")
    with pytest.raises(FileNotFoundError, match="does not exist.*torch.jit.script"):
        ExternalDetector(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_text("not a model")
    with pytest.raises(ValueError, match="not a TorchScript"):
        ExternalDetector(tmp_path / "junk.pt")


# --- one interface ----------------------------------------------------------------------------


@jit_ok
def test_make_detector_builds_every_name(tmp_path, monkeypatch):
    path = tmp_path / "encoder.pt"
    torch.jit.script(_TinyEncoder()).save(str(path))
    monkeypatch.setenv(EXTERNAL_ENV, str(path))
    tiny = TrustedSpec(cohort_patients=40, patients=9, slices=2, steps=1, batch_size=4, ae_steps=1, dim=8)
    for name in ALL_DETECTORS:
        det = make_detector(name, dim=16, steps=1, seed=0, device="cpu", trusted=tiny)
        assert isinstance(det, Detector) and det.name == name
    with pytest.raises(ValueError, match="nn_ratio"):
        make_detector("sscd")


def test_default_nearest_is_embedding_pearson(slices):
    a, b = slices
    v, i = PixelDetector().nearest(a[:3], torch.cat([b, a[:3]]))
    assert i[:, 0].tolist() == [64, 65, 66]
    assert torch.allclose(v, torch.ones(3, 1), atol=1e-5)


# --- patient level ----------------------------------------------------------------------------


def test_patient_level_with_hand_built_numbers():
    train_patient = np.array([7, 7, 8, 8, 9, 9])  # three training patients, two slices each
    holdout_sim = np.array([0.50, 0.70, 0.80, 0.60])  # the best a new patient gets: 0.80
    sim_gen = np.array([0.95, 0.90, 0.85, 0.80, 0.40])
    nn_gen = np.array([0, 1, 2, 3, 4])  # patients 7, 7, 8, 8, 9
    found = patient_level(sim_gen, nn_gen, train_patient, holdout_sim)
    assert found.threshold == pytest.approx(0.80)
    assert found.n_matched == 3  # 0.80 itself is not above the maximum
    assert found.rate == pytest.approx(3 / 5)
    assert found.patients_matched == (7, 8)
    assert found.patient_rate == pytest.approx(2 / 3)
    assert found.as_dict()["n_patients_matched"] == 2


def test_patient_level_percentile_over_holdout_patients():
    holdout_sim = np.array([0.9, 0.1, 0.5, 0.5, 0.3, 0.2])
    holdout_patient = np.array([1, 1, 2, 2, 3, 3])  # patient maxima 0.9, 0.5, 0.3
    sim_gen, nn_gen = np.array([0.6, 0.45]), np.array([0, 1])
    found = patient_level(sim_gen, nn_gen, np.array([4, 5]), holdout_sim, holdout_patient,
                          percentile=50)
    assert found.threshold == pytest.approx(0.5)  # the median patient, not the median slice
    assert found.n_matched == 1 and found.patients_matched == (4,)

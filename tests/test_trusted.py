"""The trusted detector: its positive views make each listed change (checked on images whose
answer is known), its cache key follows what it depends on, and its encoder learns from the
reference share and patients beyond every pool only, never from a cell's training, holdout or
test patients."""

import numpy as np
import pytest
import torch

from memstudy.config import DETECTOR_POOL_FIRST_ID, ConfigError, RunConfig
from memstudy.data.cohort import make_cohort
from memstudy.data.sets import load_sets, patient_split
from memstudy.data.splits import split_patients
from memstudy.detect import trusted as trusted_mod
from memstudy.detect.factory import make_detector
from memstudy.detect.trusted import (TrustedDetector, TrustedSpec, reference_images,
                                     reference_patients, spec_for_config, trusted_detector)
from memstudy.detect.views import (PositiveView, ViewSpec, add_noise, affine, elastic,
                                   gaussian_blur, intensity)
from memstudy.runio import cache_file

NO, YES = torch.zeros(1, dtype=torch.bool), torch.ones(1, dtype=torch.bool)


def ramp(size: int = 16) -> torch.Tensor:
    """An image whose every pixel is different: value = (row * size + column) / size**2."""
    return torch.arange(size * size, dtype=torch.float32).view(1, 1, size, size) / size**2


# --- each change, on an image with a known answer --------------------------------------------


def test_shift_moves_a_dot_by_the_asked_pixels():
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 5, 9] = 1
    y = affine(x, torch.tensor([[2.0, -1.0]]), torch.zeros(1), NO, NO)  # 2 down, 1 left
    assert (y[0, 0] > 0.99).nonzero().tolist() == [[7, 8]]
    assert y.sum().item() == pytest.approx(1.0)


def test_rotation_by_90_degrees_and_flips_are_exact_permutations():
    x = ramp()
    assert torch.allclose(affine(x, torch.zeros(1, 2), torch.tensor([90.0]), NO, NO),
                          torch.rot90(x, -1, (-2, -1)), atol=1e-5)
    assert torch.allclose(affine(x, torch.zeros(1, 2), torch.zeros(1), YES, NO),
                          torch.flip(x, (-1,)), atol=1e-5)
    assert torch.allclose(affine(x, torch.zeros(1, 2), torch.zeros(1), NO, YES),
                          torch.flip(x, (-2,)), atol=1e-5)
    small = affine(x, torch.zeros(1, 2), torch.tensor([5.0]), NO, NO)
    assert 0 < (small - x).abs().mean() < 0.05  # a small rotation changes a little


def test_intensity_gain_offset_and_gamma_on_a_constant_image():
    x = torch.full((2, 1, 8, 8), 0.25)
    y = intensity(x, gain=torch.tensor([1.0, 2.0]), offset=torch.tensor([0.0, 0.1]),
                  gamma=torch.tensor([2.0, 1.0]))
    assert torch.allclose(y[0], torch.full((1, 8, 8), 0.0625))
    assert torch.allclose(y[1], torch.full((1, 8, 8), 0.6))


def test_blur_keeps_a_constant_and_spreads_a_dot_by_sigma():
    const = torch.full((1, 1, 21, 21), 0.3)
    assert torch.allclose(gaussian_blur(const, torch.tensor([1.2])), const, atol=1e-6)
    dot = torch.zeros(2, 1, 21, 21)
    dot[:, 0, 10, 10] = 1
    y = gaussian_blur(dot, torch.tensor([1.0, 0.0]))
    rows = torch.arange(21.0) - 10
    var = (y[0, 0].sum(1) * rows**2).sum()  # variance of the blurred dot along rows
    assert y[0].sum().item() == pytest.approx(1.0, abs=1e-5)
    assert var.item() == pytest.approx(1.0, abs=0.02)
    assert torch.allclose(y[1], dot[1], atol=1e-6)  # sigma 0 leaves the image unchanged


def test_noise_has_the_asked_standard_deviation():
    x = torch.full((2, 1, 64, 64), 0.5)
    y = add_noise(x, torch.tensor([0.05, 0.0]), torch.Generator().manual_seed(0))
    assert (y[0] - x[0]).std().item() == pytest.approx(0.05, rel=0.05)
    assert torch.equal(y[1], x[1])


def test_elastic_warp_is_smooth_and_bounded_by_its_magnitude():
    size = 32
    cols = torch.arange(size, dtype=torch.float32).repeat(size, 1).view(1, 1, size, size)
    gen = torch.Generator().manual_seed(0)
    y = elastic(cols, torch.tensor([2.0]), gen)
    moved = (y - cols)[0, 0, 4:-4, 4:-4]  # away from the zero-filled border
    assert moved.abs().max() <= 2.0 + 1e-4  # a column ramp reads the column displacement
    assert moved.abs().max() > 0.5  # and it did move
    assert moved.diff(dim=1).abs().max() < 1.0  # smooth: neighbours move alike
    assert torch.allclose(elastic(cols, torch.tensor([0.0]), gen), cols, atol=1e-5)


def test_the_view_starts_from_the_decoded_image_when_asked():
    x, decoded = torch.rand(4, 1, 16, 16), torch.rand(4, 1, 16, 16)
    only_decode = ViewSpec(p_shift=0, p_rotate=0, p_flip_lr=0, p_flip_ud=0, p_intensity=0,
                           p_noise=0, p_blur=0, p_elastic=0, p_decode=1.0)
    y = PositiveView(only_decode, torch.Generator().manual_seed(0))(x, decoded)
    assert torch.allclose(y, decoded, atol=1e-5)
    assert torch.allclose(PositiveView(only_decode)(x), x, atol=1e-5)  # none given: unchanged


def test_the_default_view_makes_every_listed_change_and_mixes_them():
    x = torch.from_numpy(make_cohort(2, 32, 4, seed=0).images).repeat(32, 1, 1, 1)  # 256
    view = PositiveView(ViewSpec(), torch.Generator().manual_seed(1))
    y = view(x, x * 0.9)
    p = view.last
    applied = {"decoded": p["decoded"], "shift": p["shift"].abs().sum(1) > 0,
               "rotate": p["angle"] != 0, "flip": p["flip_lr"] | p["flip_ud"],
               "intensity": (p["gamma"] != 1) | (p["gain"] != 1), "noise": p["noise_std"] > 0,
               "blur": p["blur_sigma"] > 0, "elastic": p["elastic_px"] > 0}
    for change, used in applied.items():
        assert 0.05 < used.float().mean() < 0.95, f"{change} is never or always applied"
    assert p["shift"].abs().max() > 3  # shifts of a few pixels, not only sub-pixel ones
    n_changes = torch.stack(list(applied.values())).sum(0)
    assert (n_changes >= 3).float().mean() > 0.5  # most views combine several changes
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    assert not torch.allclose(y, x)


def test_view_lengths_grow_with_the_image():
    """Lengths are given at 32 px: the same spec shifts, warps and blurs a 64-px image twice as
    far, so a 64-px encoder sees the same share of the anatomy move as a 32-px one."""
    spec = ViewSpec(p_shift=1.0, p_blur=1.0, p_elastic=1.0, shift_px=4.0, blur_sigma=1.0,
                    elastic_px=2.0)
    drawn = {}
    for size in (32, 64):
        view = PositiveView(spec, torch.Generator().manual_seed(3))
        view(torch.rand(512, 1, size, size))
        drawn[size] = view.last
    for key in ("shift", "blur_sigma", "elastic_px"):  # same random stream, twice the length
        assert torch.allclose(drawn[64][key], 2 * drawn[32][key]), key
    assert drawn[32]["shift"].abs().max() <= 4.0 < drawn[64]["shift"].abs().max() <= 8.0
    assert drawn[32]["elastic_px"].max() <= 2.0 < drawn[64]["elastic_px"].max() <= 4.0


# --- the cache key ------------------------------------------------------------------------------


def test_the_cache_key_changes_with_data_set_size_seed_and_budget():
    base = TrustedSpec()
    path = cache_file("trusted_encoder", base.key())
    assert cache_file("trusted_encoder", TrustedSpec().key()) == path  # same spec, same file
    for change in ({"dataset": "medmnist:x"}, {"image_size": 64}, {"data_seed": 1},
                   {"steps": 401}, {"backbone": "resnet10"}, {"cohort_patients": 601}, {"patients": 999},
                   {"views": ViewSpec(shift_px=3.0)}):
        other = TrustedSpec(**change)
        assert cache_file("trusted_encoder", other.key()) != path, change


def test_a_config_shares_one_encoder_across_replicate_seeds():
    cfg = RunConfig(detectors=("trusted",))
    assert spec_for_config(cfg) == spec_for_config(cfg.replace(seed=3, dataset_size=16))
    assert spec_for_config(cfg) != spec_for_config(cfg.replace(data_seed=1))
    assert spec_for_config(cfg) != spec_for_config(cfg.replace(image_size=64))


# --- who the encoder learns from ------------------------------------------------------------


@pytest.mark.parametrize("data_seed", [0, 1])
def test_reference_patients_are_never_a_cells_train_holdout_or_test_patients(data_seed):
    cfg = RunConfig(data_seed=data_seed, detectors=("trusted",))
    spec = spec_for_config(cfg)
    ref = reference_patients(spec)
    split = patient_split(cfg)
    share = split["reference"]
    assert len(ref) == spec.patients == len(np.unique(ref)) and len(share) > 50
    assert np.array_equal(ref[:len(share)], share)  # the share first, then patients beyond
    assert (ref[len(share):] >= DETECTOR_POOL_FIRST_ID).all()  # ...every pool's ids
    for part in ("train", "holdout", "test"):
        assert not np.isin(ref, split[part]).any(), part
    for seed in range(3):  # the cells of any replicate and size draw elsewhere
        for size in (8, 32):
            sets = load_sets(cfg.replace(seed=seed, dataset_size=size))
            assert not np.isin(sets.train.patient_id, ref).any()
            assert not np.isin(sets.holdout.patient_id, ref).any()


def test_a_pool_that_reaches_the_detectors_patients_is_refused():
    with pytest.raises(ConfigError, match="trusted detector learns from"):
        RunConfig(cohort_patients=DETECTOR_POOL_FIRST_ID + 1)
    with pytest.raises(ConfigError, match="trusted detector learns from"):
        TrustedSpec(cohort_patients=DETECTOR_POOL_FIRST_ID + 1)
    TrustedSpec(cohort_patients=DETECTOR_POOL_FIRST_ID)  # the largest pool that stays apart


def test_the_encoder_is_trained_on_reference_slices_only(monkeypatch):
    spec = TrustedSpec(cohort_patients=40, patients=9, slices=2, steps=1, batch_size=4,
                       ae_steps=0, dim=8)
    seen = {}

    def spy(spec_, reference, device="cpu", progress=False):
        seen["images"] = reference
        return trusted_mod.build_backbone(spec_.backbone, spec_.dim, spec_.image_size), []

    monkeypatch.setattr(trusted_mod, "train_trusted_encoder", spy)
    trusted_detector(spec)
    split = split_patients(np.arange(40), seed=0)
    expected = make_cohort(40, 32, 2, seed=0)
    mine = np.isin(expected.patient_id, split["reference"])
    beyond = make_cohort(9 - mine.sum() // 2, 32, 2, seed=0, first_patient=DETECTOR_POOL_FIRST_ID)
    assert torch.equal(seen["images"],
                       torch.from_numpy(np.concatenate([expected.images[mine], beyond.images])))
    cells = expected.images[~mine]  # every other patient of the pool, any share
    assert not (seen["images"].numpy()[:, None] == cells[None]).all(axis=(2, 3, 4)).any()


def test_trusted_detector_trains_once_then_loads_from_the_cache(monkeypatch):
    spec = TrustedSpec(cohort_patients=40, patients=9, slices=2, steps=1, batch_size=4,
                       ae_steps=1, dim=8)
    det = trusted_detector(spec)
    x = reference_images(spec)[:3]
    emb = det.embed(x)
    assert isinstance(det, TrustedDetector) and emb.shape == (3, 8)

    def fail(*args, **kwargs):
        raise AssertionError("trained again although the encoder is cached")

    monkeypatch.setattr(trusted_mod, "train_trusted_encoder", fail)
    again = make_detector("trusted", trusted=spec).fit(None)
    assert torch.allclose(again.embed(x), emb, atol=1e-6)
    with pytest.raises(ValueError, match="trained at 32 px"):
        again.embed(torch.rand(2, 1, 64, 64))


def test_bad_choices_fail_early_and_say_what_to_do():
    with pytest.raises(ValueError, match="needs trusted=TrustedSpec"):
        make_detector("trusted")
    with pytest.raises(ValueError, match="backbone"):
        TrustedSpec(backbone="vit")
    with pytest.raises(ValueError, match="use reference_images"):
        reference_patients(TrustedSpec(dataset="medmnist:organamnist"))


def test_a_cell_scores_the_shared_encoder_and_a_second_cell_loads_it(tmp_path, monkeypatch):
    from memstudy.pipeline.cell import run_cell

    cfg = RunConfig(detectors=("trusted", "pixel"), trusted_steps=2, train_steps=4, ae_steps=2,
                    encoder_steps=2, num_gen=8, ddim_steps=2, device="cpu", membership=False)
    rows = run_cell(cfg, tmp_path / "a", progress=False)["rows"]
    assert {r["detector"] for r in rows} == {"trusted", "pixel"}

    def fail(*args, **kwargs):
        raise AssertionError("a second cell of the same pool trained the encoder again")

    monkeypatch.setattr(trusted_mod, "train_trusted_encoder", fail)
    run_cell(cfg.replace(seed=1), tmp_path / "b", progress=False)  # another replicate: shared


# --- a real data set: its own reference share -----------------------------------------------


def _png_folder(root, n=80, per_patient=2):
    from data_fixtures import write_png_folder

    return write_png_folder(root, n=n, per_patient=per_patient)


def test_on_real_data_the_encoder_learns_from_the_reference_share_only(tmp_path, monkeypatch):
    from memstudy.data.sets import share_slices

    root = _png_folder(tmp_path / "data")  # 40 patients of 2 images, ids from patients.csv
    cfg = RunConfig(dataset="folder", dataset_size=4, holdout_size=4, num_gen=2,
                    slices_per_patient=2, detectors=("trusted", "pixel"), trusted_steps=1)
    spec = spec_for_config(cfg, root=root)
    assert spec.dataset == "folder" and len(spec.pool) == 16
    seen = {}

    def spy(spec_, reference, device="cpu", progress=False):
        seen["images"] = reference
        return trusted_mod.build_backbone(spec_.backbone, spec_.dim, spec_.image_size), []

    monkeypatch.setattr(trusted_mod, "train_trusted_encoder", spy)
    trusted_detector(spec, root=root)
    # what it learned from is exactly the reference share, every image of it
    share = share_slices(cfg.replace(slices_per_patient=spec.slices, dataset_size=spec.slices),
                         "reference", 10_000, by_seed=False, up_to=True, root=root)
    assert torch.equal(seen["images"], torch.from_numpy(share.images))
    split = load_sets(cfg, root=root).split
    assert set(share.patient_id) == set(split["reference"].tolist())
    for part in ("train", "holdout", "test"):  # no cell's patient, whatever it draws
        assert not set(share.patient_id) & set(split[part].tolist()), part
    for seed in range(3):
        sets = load_sets(cfg.replace(seed=seed, dataset_size=8), root=root)
        for drawn in (sets.train, sets.holdout):
            assert not set(drawn.patient_id) & set(share.patient_id)


def test_a_real_pool_key_follows_its_files_not_its_folders_path(tmp_path):
    import shutil

    root = _png_folder(tmp_path / "a")
    cfg = RunConfig(dataset="folder", dataset_size=4, holdout_size=4, num_gen=2,
                    slices_per_patient=2, detectors=("trusted",))
    spec = spec_for_config(cfg, root=root)
    key = cache_file("trusted_encoder", spec.key())
    moved = shutil.copytree(root, tmp_path / "elsewhere")
    assert cache_file("trusted_encoder", spec_for_config(cfg, root=moved).key()) == key
    assert spec_for_config(cfg.replace(data_seed=1), root=root).pool != spec.pool  # another split
    assert cache_file("trusted_encoder", TrustedSpec().key()) != key  # not the cohort's
    # a reference-share file changes (same name, other size): another encoder, and the old
    # spec refuses to train on the changed share rather than cache it under the old key
    from memstudy.data.sets import share_slices

    train_patient = int(load_sets(cfg, root=moved).train.patient_id[0])
    reference_patient = int(share_slices(cfg, "reference", 1, by_seed=False, root=moved).patient_id[0])
    for patient, counts in ((train_patient, False), (reference_patient, True)):
        image = moved / f"scan_{2 * patient:03d}.png"  # patient k (P0kk) owns scans 2k and 2k+1
        image.write_bytes(image.read_bytes() + b"\0" * 16)
        assert (spec_for_config(cfg, root=moved).pool != spec.pool) is counts, patient
    with pytest.raises(ConfigError, match="not the one this TrustedSpec was made for"):
        reference_images(spec, root=moved)


def test_fields_newer_than_the_key_count_only_when_set():
    key = TrustedSpec().key()
    assert "pool" not in key and "random_contrast" not in key  # cached encoders keep their files
    assert TrustedSpec(pool="abc").key()["pool"] == "abc"
    assert TrustedSpec(random_contrast=0.5).key()["random_contrast"] == 0.5


def test_a_random_contrast_share_renders_that_share_of_reference_patients_in_their_own():
    small = dict(cohort_patients=40, patients=8, slices=2)
    t2 = reference_images(TrustedSpec(**small)).reshape(8, 2, -1)
    mixed = reference_images(TrustedSpec(random_contrast=0.5, **small)).reshape(8, 2, -1)
    same = [torch.equal(a, b) for a, b in zip(t2, mixed)]
    assert same == [True, False] * 4  # every other patient, spread over the list
    every = reference_images(TrustedSpec(random_contrast=1.0, **small)).reshape(8, 2, -1)
    assert not any(torch.equal(a, b) for a, b in zip(t2, every))
    assert torch.equal(every[1::2], mixed[1::2])  # a patient's own contrast is its own, fixed
    with pytest.raises(ValueError, match="random_contrast"):
        TrustedSpec(random_contrast=1.5)

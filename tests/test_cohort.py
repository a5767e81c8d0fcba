"""Tests of the generated cohort (memstudy.data.cohort)."""

import json
import time

import numpy as np
import pytest

from memstudy.data.cohort import Cohort, make_cohort, make_volume, slice_positions
from memstudy.data.nifti import write_nifti

from memstudy.data.splits import read_split, split_patients, write_split

from memstudy.viz.cohort import plot_cohort


def _pearson(a, b):
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


# ---------------------------------------------------------------- determinism


def test_same_arguments_give_identical_cohorts():
    a = make_cohort(3, image_size=32, seed=7)
    b = make_cohort(3, image_size=32, seed=7)
    for field in ("images", "patient_id", "slice_index", "has_lesion"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_other_seed_gives_other_patients():
    a = make_cohort(2, image_size=32, seed=0)
    b = make_cohort(2, image_size=32, seed=1)
    assert not np.allclose(a.images, b.images)


def test_a_patient_does_not_depend_on_the_cohort_it_is_generated_in():
    # Patients 5..14 generated on their own equal patients 5..14 of a larger cohort.
    part = make_cohort(10, first_patient=5)
    whole = make_cohort(20)
    rows = (whole.patient_id >= 5) & (whole.patient_id < 15)
    np.testing.assert_array_equal(part.patient_id, np.arange(5, 15).repeat(4))
    np.testing.assert_array_equal(part.images, whole.images[rows])
    np.testing.assert_array_equal(part.has_lesion, whole.has_lesion[rows])
    np.testing.assert_array_equal(part.slice_index, whole.slice_index[rows])


def test_a_random_contrast_changes_the_tissue_means_and_nothing_else():
    import dataclasses
    import pickle

    from memstudy.data.phantom import draw_patient

    tables = []
    for patient in range(20):
        t2, other = (draw_patient(patient, 0, 0.3, c) for c in ("t2", "random"))
        for part in ("head", "cortex", "deep", "lesion"):  # the same anatomy, exactly
            assert pickle.dumps(getattr(t2, part)) == pickle.dumps(getattr(other, part)), part
        assert (pickle.dumps(dataclasses.replace(t2.scanner, tissue=None))
                == pickle.dumps(dataclasses.replace(other.scanner, tissue=None)))
        assert other.scanner.tissue.keys() == t2.scanner.tissue.keys()
        tables.append(other.scanner.tissue)
    csf_brighter = [t["csf"] > t["white"] for t in tables]
    assert 0 < sum(csf_brighter) < len(tables)  # not one fixed order of the tissues
    a, b = (make_cohort(2, 32, 2, seed=0, contrast=c) for c in ("t2", "random"))
    assert not np.allclose(a.images, b.images)
    np.testing.assert_array_equal(a.has_lesion, b.has_lesion)
    with pytest.raises(ValueError, match="contrast must be one of"):
        make_cohort(1, 32, contrast="pd")


# ----------------------------------------------------------- shapes and ranges


@pytest.mark.parametrize("size", [32, 64, 128])
def test_shapes_dtypes_and_ranges(size):
    cohort = make_cohort(3, image_size=size, slices_per_patient=5, seed=2)
    assert len(cohort) == 15
    assert cohort.images.shape == (15, 1, size, size)
    assert cohort.images.dtype == np.float32
    assert cohort.images.min() >= 0.0 and cohort.images.max() <= 1.0
    assert cohort.patient_id.dtype == np.int64 and cohort.slice_index.dtype == np.int64
    assert cohort.has_lesion.dtype == bool
    np.testing.assert_array_equal(cohort.patient_id, [0] * 5 + [1] * 5 + [2] * 5)
    np.testing.assert_array_equal(cohort.slice_index, list(range(5)) * 3)
    # Not blank: a head in the middle, air in the corners.
    centre = cohort.images[:, 0, size // 2 - 2 : size // 2 + 2, size // 2 - 2 : size // 2 + 2]
    assert centre.mean() > 0.2
    assert cohort.images[:, 0, :2, :2].mean() < 0.15


def test_slices_run_inferior_to_superior():
    z = slice_positions(4)
    assert np.all(np.diff(z) > 0)
    assert slice_positions(1).shape == (1,)


def test_subset_by_mask_and_by_index():
    cohort = make_cohort(3, image_size=32)
    by_mask = cohort.subset(cohort.patient_id == 1)
    assert isinstance(by_mask, Cohort) and len(by_mask) == 4
    assert set(by_mask.patient_id) == {1}
    by_index = cohort.subset([0, 5])
    np.testing.assert_array_equal(by_index.images, cohort.images[[0, 5]])
    assert len(cohort.subset([])) == 0


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError):
        make_cohort(2, lesion_fraction=1.5)
    with pytest.raises(ValueError):
        make_cohort(2, slices_per_patient=0)
    with pytest.raises(ValueError):
        make_cohort(2, seed=-1)


# ------------------------------------------------------------- splits


def test_split_is_disjoint_covers_all_and_round_trips(tmp_path):
    ids = np.repeat(np.arange(100, 150), 4)  # one id per slice
    split = split_patients(ids, fractions=(0.6, 0.2, 0.1, 0.1), seed=3)
    assert set(split) == {"train", "holdout", "test", "reference"}
    parts = [set(split[name].tolist()) for name in split]
    assert sum(len(p) for p in parts) == len(set.union(*parts))  # pairwise disjoint
    assert set.union(*parts) == set(range(100, 150))
    assert [len(p) for p in parts] == [30, 10, 5, 5]
    for name in split:
        assert split[name].dtype == np.int64
        assert np.all(np.diff(split[name]) > 0)  # sorted, unique

    path = tmp_path / "split.json"
    write_split(split, path)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    assert set(json.loads(path.read_text())) == {"train", "holdout", "test", "reference"}
    back = read_split(path)
    for name in split:
        np.testing.assert_array_equal(back[name], split[name])


def test_split_depends_on_seed_only():
    ids = np.arange(40)
    a, b = split_patients(ids, seed=1), split_patients(ids[::-1], seed=1)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(split_patients(ids, seed=2)["train"], a["train"])


@pytest.mark.parametrize(
    "ids, fractions",
    [
        (np.arange(10), (0.5, 0.2, 0.1, 0.1)),  # sums to 0.9
        (np.arange(10), (0.5, 0.5)),  # not one share per split
        (np.arange(10), (1.0, 0.0, 0.0, 0.0)),  # empty holdout, test and reference
        (np.arange(3), (0.5, 0.2, 0.15, 0.15)),  # too few patients for four splits
    ],
)
def test_split_rejects_bad_fractions(ids, fractions):
    with pytest.raises(ValueError):
        split_patients(ids, fractions=fractions)


# ------------------------------------------------------------- anatomy


def test_neighbouring_slices_are_more_alike_than_other_patients():
    # The study measures patient-level memorization from 2D slices of 3D
    # volumes: slices of one patient must resemble each other more than the
    # same slice of another patient does.
    n = 12
    cohort = make_cohort(n, image_size=64, seed=0)
    images = cohort.images.reshape(n, 4, 64, 64)
    within = [_pearson(images[p, s], images[p, s + 1]) for p in range(n) for s in range(3)]
    between = [_pearson(images[p, s], images[p + 1, s]) for p in range(n - 1) for s in range(4)]
    print(f"\nmean correlation: neighbouring slices {np.mean(within):.3f}, ", end="")
    print(f"same slice of the next patient {np.mean(between):.3f}")
    assert np.mean(within) > np.mean(between) + 0.03


def test_lesion_fraction_is_respected_and_lesions_span_neighbouring_slices():
    n = 200
    cohort = make_cohort(n, image_size=32, seed=0, lesion_fraction=0.3)
    per_patient = cohort.has_lesion.reshape(n, 4)
    fraction = per_patient.any(axis=1).mean()
    print(f"\npatients with a lesion: {fraction:.3f}")
    assert 0.2 <= fraction <= 0.4
    lesion_rows = per_patient[per_patient.any(axis=1)]
    for row in lesion_rows:  # the slices showing a lesion are consecutive
        shown = np.flatnonzero(row)
        assert np.all(np.diff(shown) == 1)
    assert lesion_rows.sum(axis=1).mean() > 1.5  # usually more than one slice
    assert not make_cohort(20, image_size=32, lesion_fraction=0.0).has_lesion.any()
    everyone = make_cohort(20, image_size=32, lesion_fraction=1.0)
    assert everyone.has_lesion.reshape(20, 4).any(axis=1).all()


def test_has_lesion_marks_exactly_the_slices_that_show_one():
    # lesion_fraction only switches lesions on or off, never the anatomy, so
    # a slice may differ between the two cohorts only where it shows a lesion.
    with_lesions = make_cohort(8, image_size=32, lesion_fraction=1.0)
    without = make_cohort(8, image_size=32, lesion_fraction=0.0)
    changed = np.abs(with_lesions.images - without.images).max(axis=(1, 2, 3)) > 0
    np.testing.assert_array_equal(changed, with_lesions.has_lesion)


def test_volume_has_the_anatomy_of_the_slices():
    size = 64
    volume = make_volume(3, image_size=size, depth=size)
    assert volume.shape == (size, size, size) and volume.dtype == np.float32
    assert volume.min() >= 0.0 and volume.max() <= 1.0
    np.testing.assert_array_equal(volume, make_volume(3, image_size=size, depth=size))
    assert make_volume(3, image_size=32, depth=20).shape == (20, 32, 32)

    cohort = make_cohort(5, image_size=size)
    plane_z = -1.0 + (2.0 * np.arange(size) + 1.0) / size
    for s, z in enumerate(slice_positions(4)):
        plane = volume[np.argmin(np.abs(plane_z - z))]
        same = cohort.images[(cohort.patient_id == 3) & (cohort.slice_index == s), 0][0]
        other = cohort.images[(cohort.patient_id == 4) & (cohort.slice_index == s), 0][0]
        assert _pearson(plane, same) > 0.85
        assert _pearson(plane, same) > _pearson(plane, other)


# ------------------------------------------------------------- files


@pytest.mark.parametrize("name", ["vol.nii", "vol.nii.gz"])
def test_write_nifti_round_trips(tmp_path, name):
    nib = pytest.importorskip("nibabel")
    volume = make_volume(1, image_size=32, depth=24)
    path = tmp_path / name
    write_nifti(volume, path)
    assert list(tmp_path.iterdir()) == [path]  # written atomically, no leftovers
    image = nib.load(path)
    np.testing.assert_array_equal(np.asarray(image.dataobj), volume)
    assert image.get_data_dtype() == np.float32
    np.testing.assert_allclose(image.header.get_zooms(), (1.0, 1.0, 1.0))
    assert nib.aff2axcodes(image.affine) == ("S", "P", "L")


def test_write_nifti_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError):
        write_nifti(np.zeros((4, 4, 4)), tmp_path / "vol.npy")
    with pytest.raises(ValueError):
        write_nifti(np.zeros((4, 4)), tmp_path / "vol.nii")


# ------------------------------------------------------------- figure, speed


def test_plot_cohort_makes_one_row_per_patient(tmp_path):
    cohort = make_cohort(4, image_size=32, lesion_fraction=0.5)
    fig = plot_cohort(cohort, n_patients=3)
    assert len(fig.axes) == 3 * 4
    labels = [fig.axes[row * 4].get_ylabel() for row in range(3)]
    assert [label.split("\n")[0] for label in labels] == ["patient 0", "patient 1", "patient 2"]
    fig.savefig(tmp_path / "cohort.png")


def test_generates_2000_slices_at_64():
    start = time.perf_counter()
    cohort = make_cohort(500, image_size=64)
    seconds = time.perf_counter() - start
    print(f"\n2000 slices at 64x64: {seconds:.2f} s")
    assert cohort.images.shape == (2000, 1, 64, 64)

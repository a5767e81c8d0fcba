"""A procedurally generated cohort of brain-MRI-like patients.

The memorization study needs "patients" whose images look like axial head
MRI, that differ from patient to patient, and whose neighbouring slices are
alike (2D slices of one 3D head). No data can be downloaded, so the cohort is
*generated*: every patient is a small set of random anatomical parameters; the
anatomy, contrast and scanner of one patient are drawn by :mod:`.phantom`. This
module assembles patients into a cohort of slices (:func:`make_cohort`) or
volumes (:func:`make_volume`), with their ids, slice positions and lesion labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .phantom import Z_RANGE, draw_patient, lesion_on_slice, pixel_centres, render, single_threaded_blas

__all__ = [
    "Cohort",
    "make_cohort",
    "make_volume",
    "slice_positions",
]


# --------------------------------------------------------------------------
# The cohort container
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Cohort:
    """Axial 2D slices of generated patients, one row per slice.

    Attributes
    ----------
    images : np.ndarray
        ``(N, 1, H, W)`` float32 in ``[0, 1]``.
    patient_id : np.ndarray
        ``(N,)`` int64, the patient each slice belongs to.
    slice_index : np.ndarray
        ``(N,)`` int64, position of the slice within its patient,
        ``0 .. slices_per_patient - 1`` from inferior to superior.
    has_lesion : np.ndarray
        ``(N,)`` bool, the slice cuts through the patient's lesion.
    """

    images: np.ndarray
    patient_id: np.ndarray
    slice_index: np.ndarray
    has_lesion: np.ndarray

    def subset(self, mask_or_idx) -> "Cohort":
        """Return the cohort restricted to some rows.

        Parameters
        ----------
        mask_or_idx : array_like
            A boolean mask of length ``len(self)`` or integer row indices.

        Returns
        -------
        Cohort
            A new cohort holding copies of the selected rows, in order.
        """
        rows = np.asarray(mask_or_idx)
        if rows.size == 0:
            rows = rows.astype(np.int64)  # np.asarray([]) is float
        if rows.dtype == bool and rows.shape != (len(self),):
            raise ValueError(f"boolean mask has shape {rows.shape}, expected ({len(self)},)")
        return Cohort(
            images=self.images[rows],
            patient_id=self.patient_id[rows],
            slice_index=self.slice_index[rows],
            has_lesion=self.has_lesion[rows],
        )

    def __len__(self) -> int:
        return int(self.patient_id.shape[0])


def slice_positions(slices_per_patient: int, spacing: float = 0.0) -> np.ndarray:
    """Heights (normalised z) of the slices of each patient, inferior first.

    Parameters
    ----------
    slices_per_patient : int
        Number of slices.
    spacing : float
        0 (default): the slices are evenly spread over :data:`Z_RANGE`, however many there
        are. > 0: neighbouring slices are ``spacing`` apart (normalised z; the range is 0.7
        high), centred in the range, as consecutive slices of a scan are; Akbar et al.'s
        slices-per-patient question needs slices that stay close as their number grows.

    Returns
    -------
    np.ndarray
        ``(slices_per_patient,)`` float64.
    """
    if slices_per_patient < 1:
        raise ValueError(f"slices_per_patient must be >= 1, got {slices_per_patient}")
    if spacing < 0 or spacing * (slices_per_patient - 1) > Z_RANGE[1] - Z_RANGE[0]:
        raise ValueError(
            f"spacing {spacing} x {slices_per_patient - 1} gaps does not fit in Z_RANGE {Z_RANGE}: "
            f"use a spacing in [0, {(Z_RANGE[1] - Z_RANGE[0]) / max(slices_per_patient - 1, 1):.3f}]")
    if slices_per_patient == 1:
        return np.array([np.mean(Z_RANGE)])
    if spacing > 0:
        return np.mean(Z_RANGE) + spacing * (np.arange(slices_per_patient) - (slices_per_patient - 1) / 2)
    return np.linspace(Z_RANGE[0], Z_RANGE[1], slices_per_patient)


def make_cohort(
    n_patients: int,
    image_size: int = 64,
    slices_per_patient: int = 4,
    seed: int = 0,
    lesion_fraction: float = 0.3,
    first_patient: int = 0,
    slice_spacing: float = 0.0,
    contrast: str = "t2",
) -> Cohort:
    """Generate axial slices of patients ``first_patient .. first_patient + n_patients - 1``.

    Parameters
    ----------
    n_patients : int
        How many patients.
    image_size : int
        Height and width of the slices in pixels.
    slices_per_patient : int
        Axial slices per patient, evenly spaced from the basal ganglia to
        above the ventricles (see :func:`slice_positions`).
    seed : int
        Cohort seed. Patient ``p`` depends only on ``(seed, p)`` (and the
        image geometry), so ``make_cohort(10, first_patient=5)`` equals
        patients 5..14 of ``make_cohort(20)``.
    lesion_fraction : float
        Probability that a patient has a lesion. A lesion is 0.3 to 0.6
        high (normalised z), so it shows on one to three neighbouring slices
        of the default four.
    first_patient : int
        Id of the first patient.
    slice_spacing : float
        Distance between neighbouring slices (normalised z); 0 spreads them over the whole
        range (see :func:`slice_positions`).
    contrast : str
        ``"t2"`` (the study's look), another sequence's table (``"t1"``, ``"flair"``), or
        ``"random"``: each patient's tissues get means of their own. The anatomy is the same
        in every contrast (see :data:`memstudy.data.phantom.CONTRASTS`).

    Returns
    -------
    Cohort
        ``n_patients * slices_per_patient`` slices, grouped by patient,
        inferior to superior within a patient.
    """
    if n_patients < 0 or image_size < 8:
        raise ValueError(
            f"need n_patients >= 0 and image_size >= 8, got {n_patients}, {image_size}"
        )
    if not 0.0 <= lesion_fraction <= 1.0:
        raise ValueError(f"lesion_fraction must be in [0, 1], got {lesion_fraction}")
    z = slice_positions(slices_per_patient, slice_spacing)
    images = np.empty((n_patients, slices_per_patient, 1, image_size, image_size), np.float32)
    lesion = np.zeros((n_patients, slices_per_patient), dtype=bool)
    with single_threaded_blas():
        for i in range(n_patients):
            patient = draw_patient(first_patient + i, seed, lesion_fraction, contrast)
            # Pixel noise comes from its own stream so that it never shifts the anatomy.
            rng = np.random.default_rng([seed, first_patient + i, 1])
            images[i, :, 0] = render(patient, z, image_size, rng)
            lesion[i] = lesion_on_slice(patient.lesion, z)
    ids = np.arange(first_patient, first_patient + n_patients, dtype=np.int64)
    return Cohort(
        images=images.reshape(-1, 1, image_size, image_size),
        patient_id=np.repeat(ids, slices_per_patient),
        slice_index=np.tile(np.arange(slices_per_patient, dtype=np.int64), n_patients),
        has_lesion=lesion.reshape(-1),
    )


def make_volume(
    patient: int,
    image_size: int = 64,
    depth: int | None = None,
    seed: int = 0,
    lesion_fraction: float = 0.3,
) -> np.ndarray:
    """Generate the full 3D volume of one patient.

    The same implicit anatomy as :func:`make_cohort` (same ``seed`` and
    ``lesion_fraction`` give the same patient), evaluated on ``depth``
    axial planes evenly covering ``z`` in ``[-1, 1]``, so that voxels are
    isotropic when ``depth == image_size``. Pixel noise differs from the
    cohort's slices; the anatomy does not.

    Parameters
    ----------
    patient : int
        Patient id.
    image_size : int
        In-plane size in pixels.
    depth : int, optional
        Number of axial planes; defaults to ``image_size``.
    seed, lesion_fraction
        As for :func:`make_cohort`.

    Returns
    -------
    np.ndarray
        ``(depth, image_size, image_size)`` float32 in ``[0, 1]``, plane 0
        the most inferior.
    """
    depth = image_size if depth is None else int(depth)
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    p = draw_patient(patient, seed, lesion_fraction)
    rng = np.random.default_rng([seed, patient, 2])
    with single_threaded_blas():
        return render(p, pixel_centres(depth), image_size, rng)

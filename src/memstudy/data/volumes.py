"""Whole volumes of the generated patients: the data of 3D cells (``spatial_dims=3``).

A 3D cell trains on one ``image_size``-cubed volume per patient instead of that patient's axial
slices. The patients are exactly those the same 2D cell draws (:func:`memstudy.data.sets.cell_patients`),
so "2D against 3D" compares two models of the *same* people. The volumes reuse the slice
container :class:`~memstudy.data.cohort.Cohort`: one row per patient, images ``(N, 1, D, H, W)``,
``slice_index`` -1 (the whole volume).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import RunConfig
from .cohort import Cohort, make_volume
from .phantom import draw_patient
from .nifti import write_nifti
from .sets import Sets, cell_patients, patient_split

WHOLE_VOLUME = -1  # slice_index of a row that is a whole volume
LESION_FRACTION = 0.3  # make_cohort's default: the same patients have the same lesions


def patient_volumes(ids: np.ndarray, cfg: RunConfig) -> Cohort:
    """The ``image_size``-cubed volumes of the given generated patients, in the order of ``ids``.

    Parameters
    ----------
    ids : patient ids of the pool of ``cfg`` (``cfg.data_seed`` fixes their anatomy).
    cfg : the run; ``image_size`` is the edge of the (isotropic) volume.

    Returns
    -------
    Cohort
        ``images`` (N, 1, S, S, S) float32 in [0, 1], axis 2 inferior -> superior.
    """
    ids = np.asarray(ids, dtype=np.int64)
    images = np.stack([make_volume(int(p), cfg.image_size, seed=cfg.data_seed,
                                   lesion_fraction=LESION_FRACTION) for p in ids])[:, None]
    lesion = np.array([draw_patient(int(p), cfg.data_seed, LESION_FRACTION).lesion.present
                       for p in ids], dtype=bool)
    return Cohort(images=images.astype(np.float32), patient_id=ids,
                  slice_index=np.full(len(ids), WHOLE_VOLUME, dtype=np.int64), has_lesion=lesion)


def volume_sets(cfg: RunConfig) -> Sets:
    """Training and holdout volumes of a 3D cell: one volume for each patient the 2D cell draws.

    ``dataset_size // slices_per_patient`` training volumes and
    ``ceil(holdout_size / slices_per_patient)`` holdout volumes, as many patients as in 2D.
    """
    split, train_ids, holdout_ids = cell_patients(cfg)
    return Sets(train=patient_volumes(train_ids, cfg), holdout=patient_volumes(holdout_ids, cfg),
                split=split)


def unseen_volumes(cfg: RunConfig, n: int, salt: int, skip: int = 0) -> Cohort:
    """Volumes of ``n`` test-share patients (no model or ruler sees them): the null of 3D rates.

    Drawn in the order :func:`memstudy.models.controls.unseen_slices` uses for slices (same
    ``salt``), so a 3D cell's null patients are the first ones a 2D cell's null is taken from.
    ``skip`` leaves out that many patients at the start (the negative control skips the null's).
    """
    test_ids = patient_split(cfg)["test"]
    if skip + n > len(test_ids):
        raise ValueError(f"the test share holds {len(test_ids)} patients, fewer than the "
                         f"{skip + n} never-seen volumes needed: raise cohort_patients or lower num_gen.")
    order = np.random.default_rng([cfg.data_seed, cfg.seed, salt]).permutation(test_ids)
    return patient_volumes(order[skip:skip + n], cfg)


def mid_slices(volumes: np.ndarray) -> list[np.ndarray]:
    """The three orthogonal mid-slices (axial, coronal, sagittal) of ``(..., D, H, W)`` volumes."""
    d, h, w = volumes.shape[-3:]
    return [volumes[..., d // 2, :, :], volumes[..., :, h // 2, :], volumes[..., :, :, w // 2]]


def axial_mid_slices(volumes):
    """``(N, 1, D, H, W)`` -> ``(N, 1, H, W)``: the axial mid-slice of each volume (numpy or torch).

    Quality and diversity in 3D are measured on these, with the 2D feature ruler of the same
    image size, so the numbers stay comparable with 2D cells.
    """
    return volumes[:, :, volumes.shape[2] // 2]


def write_volumes_nifti(volumes: np.ndarray, folder: Path, n: int, prefix: str = "gen") -> list[Path]:
    """Write the first ``n`` of ``(N, 1, D, H, W)`` volumes as ``<folder>/<prefix>_XXX.nii.gz``.

    For viewers (ITK-SNAP, 3D Slicer, nibabel). Synthetic volumes of the *generated* cohort are
    harmless to write; a model trained on real patients may have copied them, so callers write
    those only when a user asked for it (as for every patient image).
    """
    paths = []
    for i in range(min(n, len(volumes))):
        path = Path(folder) / f"{prefix}_{i:03d}.nii.gz"
        write_nifti(np.asarray(volumes[i, 0], dtype=np.float32), path)
        paths.append(path)
    return paths

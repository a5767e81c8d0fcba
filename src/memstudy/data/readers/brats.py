"""BraTS 2020 and 2021: one folder per subject, one NIfTI file per MR sequence.

``dataset: brats2021`` reads FLAIR (the sequence Akbar et al. trained on); ``brats2021:t1ce``
picks another sequence. The tumour segmentation, when present, only marks which slices show a
lesion (``has_lesion``); it is never trained on.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import DataError, Patient, Pool, Slices, data_root, find_dirs
from .volumes import read_nifti, volume_slices

MODALITIES = ("flair", "t1", "t1ce", "t2")
SUBJECT = {"brats2021": re.compile(r"BraTS2021_\d{5}"), "brats2020": re.compile(r"BraTS20_Training_\d{3}")}


def matches(root: Path, name: str) -> bool:
    return bool(_subjects(root, name))


def index(dataset: str, root=None) -> Pool | None:
    """Every subject folder under ``root``; a subject lacking a sequence is an error."""
    name, _, modality = dataset.partition(":")
    modality = modality or "flair"
    root = data_root(dataset, root)
    subjects = _subjects(root, name)
    if not subjects:
        return None
    patients = []
    for folder in subjects:
        files = {m: _file(folder, m) for m in (*MODALITIES, "seg")}
        for m in MODALITIES:
            if files[m] is None:
                raise DataError(f"{folder}: subject {folder.name} lacks its {m} image (expected "
                                f"{folder.name}_{m}.nii.gz): restore the file, or move the subject "
                                f"folder out of {root}.")
        patients.append(Patient(folder.name, (files[modality], files["seg"])))
    return Pool(dataset, root, tuple(patients), _load, has_patient_ids=True,
                patient_ids="BraTS subject folders, one per patient")


def _subjects(root: Path, name: str) -> list[Path]:
    pattern = SUBJECT[name]
    return sorted(find_dirs(root, lambda p: pattern.fullmatch(p.name) is not None))


def _file(folder: Path, modality: str) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        path = folder / f"{folder.name}_{modality}{suffix}"
        if path.exists():
            return path
    return None


def _load(patient: Patient, cfg) -> Slices:
    image, seg = patient.items
    volume = read_nifti(image)
    mask = read_nifti(seg) if seg is not None else None
    if mask is not None and mask.shape != volume.shape:
        raise DataError(f"{seg} has shape {mask.shape} but {image} has {volume.shape}: the "
                        "segmentation belongs to another scan; fix or remove it.")
    return volume_slices(volume, image, cfg, mask)

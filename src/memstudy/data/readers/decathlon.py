"""Medical Segmentation Decathlon, Task01_BrainTumour: 4-channel NIfTI files in ``imagesTr/``.

Channels are FLAIR, T1w, T1gd, T2w (``dataset.json``); ``decathlon_brain`` reads FLAIR and
``decathlon_brain:t2`` another channel. Each ``BRATS_XXX`` file is one patient.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import DataError, Patient, Pool, Slices, data_root, find_dirs, visible
from .volumes import read_nifti, volume_slices

CHANNELS = ("flair", "t1", "t1gd", "t2")
_FILE = re.compile(r"BRATS_\d+\.nii\.gz")


def matches(root: Path, name: str = "decathlon_brain") -> bool:
    return _images_dir(root) is not None


def _images_dir(root: Path) -> Path | None:
    found = find_dirs(root, lambda p: p.name == "imagesTr" and any(
        _FILE.fullmatch(f.name) for f in p.iterdir()))
    return found[0] if found else None


def index(dataset: str, root=None) -> Pool | None:
    """The ``BRATS_XXX.nii.gz`` files of ``imagesTr`` (macOS ``._`` twins skipped)."""
    channel = dataset.partition(":")[2] or "flair"
    root = data_root(dataset, root)
    images = _images_dir(root)
    if images is None:
        return None
    labels = images.parent / "labelsTr"
    files = [p for p in visible(images.iterdir(), images) if _FILE.fullmatch(p.name)]
    patients = tuple(Patient(p.name.split(".")[0], (p, labels / p.name if (labels / p.name).exists()
                                                    else None, CHANNELS.index(channel)))
                     for p in files)
    return Pool(dataset, root, patients, _load, has_patient_ids=True,
                patient_ids="Decathlon file names (BRATS_XXX), one file per patient")


def _load(patient: Patient, cfg) -> Slices:
    image, label, channel = patient.items
    volume = read_nifti(image, channels=len(CHANNELS))[..., channel]
    mask = read_nifti(label) if label is not None else None
    if mask is not None and mask.shape != volume.shape:
        raise DataError(f"{label} has shape {mask.shape} but {image} has {volume.shape[:3]}: the "
                        "label belongs to another scan; fix or remove it.")
    return volume_slices(volume, image, cfg, mask)

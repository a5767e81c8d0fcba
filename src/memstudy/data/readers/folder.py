"""Any folder of NIfTI volumes or of PNG/JPEG images, with an optional ``patients.csv``.

``patients.csv`` (columns ``file``, ``patient_id``; ``file`` relative to the folder) says which
files belong to one patient. Without it each file is its own patient, which the run folder and
the book then state: if one patient has several files, they may land on both sides of the split.
"""

from __future__ import annotations

import csv
from pathlib import Path

from .base import DataError, Patient, Pool, Slices, data_root, visible
from .images import IMAGE_SUFFIXES, image_slices
from .volumes import read_nifti, volume_slices

PATIENTS_CSV = "patients.csv"


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def _files(root: Path) -> tuple[list[Path], list[Path]]:
    files = [p for p in visible(root.rglob("*"), root) if p.is_file()]
    return ([p for p in files if _is_nifti(p)],
            [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES])


def matches(root: Path, name: str = "folder") -> bool:
    volumes, images = _files(root)
    return bool(volumes or images)


def index(dataset: str, root=None) -> Pool | None:
    root = data_root(dataset, root)
    volumes, images = _files(root)
    if volumes and images:
        raise DataError(f"{root} mixes {len(volumes)} NIfTI files (e.g. {volumes[0]}) and "
                        f"{len(images)} 2D images (e.g. {images[0]}): keep one kind per data folder.")
    files = volumes or images
    if not files:
        return None
    table = root / PATIENTS_CSV
    owner = _read_table(table, root, files) if table.exists() else {
        f: f"img:{f.relative_to(root).as_posix()}" for f in files}
    grouped: dict[str, list[Path]] = {}
    for f in files:
        grouped.setdefault(owner[f], []).append(f)
    patients = tuple(Patient(k, tuple(v), None if volumes else len(v))
                     for k, v in sorted(grouped.items()))
    how = (f"the patient_id column of {PATIENTS_CSV}" if table.exists() else
           f"none: no {PATIENTS_CSV}, so each {'volume' if volumes else 'image'} is its own patient")
    return Pool(dataset, root, patients, _load_volume if volumes else _load_images,
                has_patient_ids=table.exists(), patient_ids=how)


def _read_table(table: Path, root: Path, files: list[Path]) -> dict[Path, str]:
    """``file -> patient id`` from ``patients.csv``; every file must be listed, and exist."""
    with open(table, newline="", encoding="utf-8") as f:
        rows = csv.DictReader(f)
        if not {"file", "patient_id"} <= set(rows.fieldnames or []):
            raise DataError(f"{table} must have the columns file,patient_id (it has "
                            f"{rows.fieldnames}): fix its header line.")
        owner = {(root / r["file"]).resolve(): str(r["patient_id"]).strip() for r in rows}
    known = {f.resolve(): f for f in files}
    absent = sorted(str(p) for p in owner if p not in known)
    if absent:
        raise DataError(f"{table} names {len(absent)} file(s) that are not image files in {root}, "
                        f"e.g. {absent[:3]}: fix the paths (relative to the folder) or drop the rows.")
    unlisted = sorted(str(f) for f in files if f.resolve() not in owner)
    if unlisted:
        raise DataError(f"{len(unlisted)} file(s) are not listed in {table}, e.g. {unlisted[:3]}: "
                        "add a row (file,patient_id) for each, or move them out of the folder.")
    return {known[p]: k for p, k in owner.items()}


def _load_images(patient: Patient, cfg) -> Slices:
    return image_slices(list(patient.items[:cfg.slices_per_patient]), cfg.image_size)


def _load_volume(patient: Patient, cfg) -> Slices:
    # A patient with several volumes contributes slices of its first one: neighbouring
    # slices of one scan are what the slice axis of the study means.
    path = patient.items[0]
    return volume_slices(read_nifti(path), path, cfg)

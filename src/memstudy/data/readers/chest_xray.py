"""The paediatric chest X-ray pneumonia set (Kermany et al.), as Akbar et al. used it.

Layout: ``chest_xray/{train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg``. The shipped train/test/val
folders are pooled and split again by patient, because memstudy needs its own four shares.
Pneumonia files are named ``person<N>_{bacteria,virus}_<k>.jpeg``: ``person<N>`` is the
patient. Normal files (``IM-XXXX-YYYY.jpeg``) carry no patient id we can trust, so each is its
own patient. A person number found in two folders is taken as one patient: merging two
patients is safe for a memorization study, splitting one across train and holdout is not.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import Patient, Pool, Slices, data_root, find_dirs, visible
from .images import IMAGE_SUFFIXES, image_slices

CLASSES = ("NORMAL", "PNEUMONIA")
SHIPPED_SPLITS = ("train", "test", "val")
_PERSON = re.compile(r"(person\d+)_", re.IGNORECASE)


def matches(root: Path, name: str = "chest_xray") -> bool:
    return bool(_bases(root))


def _bases(root: Path) -> list[Path]:
    """Folders holding ``{train,test,val}/{NORMAL,PNEUMONIA}`` (the Kaggle copy nests two)."""
    return find_dirs(root, lambda p: any((p / s / c).is_dir() for s in SHIPPED_SPLITS
                                         for c in CLASSES), depth=3)


def index(dataset: str, root=None) -> Pool | None:
    root = data_root(dataset, root)
    bases = _bases(root)
    if not bases:
        return None
    base = bases[0]  # the shallowest: the Kaggle archive's inner duplicate is ignored
    images: dict[str, list[tuple[Path, bool]]] = {}
    for split in SHIPPED_SPLITS:
        for label in CLASSES:
            folder = base / split / label
            files = visible(folder.glob("*"), base) if folder.is_dir() else []
            for path in files:
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                person = _PERSON.match(path.name)
                key = person.group(1).lower() if person else f"img:{path.relative_to(base)}"
                images.setdefault(key, []).append((path, label == "PNEUMONIA"))
    patients = tuple(Patient(k, tuple(v), len(v)) for k, v in sorted(images.items()))
    return Pool(dataset, root, patients, _load, has_patient_ids=False,
                patient_ids="partial: pneumonia images by person<N> in the file name; each normal "
                            "image is its own patient (its file name has no patient id)")


def _load(patient: Patient, cfg) -> Slices:
    items = patient.items[:cfg.slices_per_patient]
    return image_slices([p for p, _ in items], cfg.image_size, [sick for _, sick in items])

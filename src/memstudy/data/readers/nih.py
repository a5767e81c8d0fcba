"""NIH ChestX-ray14: ``images_XXX/images/*.png`` with ``Data_Entry_2017.csv``.

The CSV's ``Patient ID`` column gives the patient of every image, so follow-up films of one
patient stay on one side of the split. A partial download (some ``images_XXX`` archives only)
works: images the CSV lists but the disk lacks are skipped, and the run folder says how many.
"""

from __future__ import annotations

import csv
from pathlib import Path

from .base import DataError, Patient, Pool, Slices, find_dirs, data_root
from .images import image_slices

CSV_NAMES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
COLUMNS = ("Image Index", "Patient ID", "Finding Labels")


def matches(root: Path, name: str = "nih_cxr14") -> bool:
    return _csv(root) is not None


def _csv(root: Path) -> Path | None:
    found = find_dirs(root, lambda p: any((p / n).exists() for n in CSV_NAMES), depth=1)
    if not found:
        return None
    return next(found[0] / n for n in CSV_NAMES if (found[0] / n).exists())


def index(dataset: str, root=None) -> Pool | None:
    root = data_root(dataset, root)
    table = _csv(root)
    if table is None:
        return None
    on_disk = {p.name: p for p in [*table.parent.glob("images*/images/*.png"),
                                   *table.parent.glob("images/*.png")]}
    with open(table, newline="") as f:
        rows = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (rows.fieldnames or [])]
        if missing:
            raise DataError(f"{table} lacks the column(s) {missing} (it has {rows.fieldnames}): "
                            "use the CSV that ships with ChestX-ray14.")
        images: dict[str, list[tuple[Path, bool]]] = {}
        listed = 0
        for row in rows:
            listed += 1
            path = on_disk.get(row["Image Index"])
            if path is not None:
                images.setdefault(str(row["Patient ID"]).strip(), []).append(
                    (path, row["Finding Labels"] != "No Finding"))
    if not images:
        raise DataError(f"{table} lists {listed} images but none of them is under "
                        f"{table.parent}/images_*/images/: unpack the image archives next to the CSV.")
    patients = tuple(Patient(k, tuple(v), len(v)) for k, v in sorted(images.items()))
    notes = []
    used = sum(len(v) for v in images.values())
    if used < listed:
        notes.append(f"{listed - used} of {listed} images listed in {table.name} are not on disk "
                     "(partial download): they are not used.")
    if len(on_disk) > used:
        notes.append(f"{len(on_disk) - used} PNG files are not listed in {table.name}: not used.")
    return Pool(dataset, root, patients, _load, has_patient_ids=True,
                patient_ids=f"the 'Patient ID' column of {table.name}", notes=notes)


def _load(patient: Patient, cfg) -> Slices:
    items = patient.items[:cfg.slices_per_patient]
    return image_slices([p for p, _ in items], cfg.image_size, [finding for _, finding in items])

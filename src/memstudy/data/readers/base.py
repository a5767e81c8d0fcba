"""What every reader returns, where the data live, and how a bad tree is described.

A reader turns one on-disk layout into a :class:`Pool`: the data set's patients, each with the
files that hold it, found cheaply (names only, no pixels). Pixels are read later, and only for
the patients a run draws (:func:`memstudy.data.sets.load_sets`), so a 1,200-subject BraTS tree
costs a few seconds per cell, not minutes.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...config import ConfigError
from ...runio import DATA_ENV


class DataError(ConfigError):
    """Input data that cannot be used; the message names the file and says what to do."""


@dataclass(frozen=True)
class Slices:
    """The 2D images one patient contributes, as the generated cohort gives them."""

    images: np.ndarray  # (k, 1, H, W) float32 in [0, 1]
    slice_index: np.ndarray  # (k,) int64 position of each image within the patient
    has_lesion: np.ndarray  # (k,) bool: tumour in the slice / an abnormal finding
    notes: tuple[str, ...] = ()  # conversions made on the way (colour -> grey, ...)
    sources: tuple[str, ...] = ()  # the file each image came from (for messages)
    kinds: tuple[str, ...] = ()  # per image, for 2D files: "8-bit grey", "16-bit grey", ...


@dataclass(frozen=True)
class Patient:
    """One patient of a data set: its own id and what the reader needs to load it."""

    key: str  # the data set's id, e.g. "BraTS2021_00001"; "img:<file>" when there is none
    items: tuple[Any, ...]  # files (or (file, split, row) for arrays) holding its images
    n_images: int | None = None  # 2D images available; None for volumes (slices are chosen)


@dataclass(frozen=True)
class Pool:
    """All patients of one data set on disk, found without reading any pixels."""

    dataset: str  # the RunConfig value, e.g. "brats2021:flair"
    root: Path
    patients: tuple[Patient, ...]  # sorted by key: a patient's position is its integer id
    load: Callable[[Patient, Any], Slices]  # (patient, RunConfig) -> its Slices
    patient_ids: str  # where patient ids come from, or why each image is its own patient
    has_patient_ids: bool
    fixed_split: dict[str, list[str]] | None = None  # a split the data set ships (by key)
    notes: list[str] = field(default_factory=list)

    def keys(self) -> list[str]:
        return [p.key for p in self.patients]


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """``root`` if given, else ``$MEMSTUDY_DATA``, else ``./data`` (nothing is checked)."""
    if root is None or str(root) == "":
        root = os.environ.get(DATA_ENV, "data")
    return Path(root).expanduser()


def data_root(dataset: str, root: str | os.PathLike | None = None) -> Path:
    """The folder to read ``dataset`` from: ``root`` if given, else ``$MEMSTUDY_DATA``.

    Raises
    ------
    DataError
        If the folder does not exist or is empty.
    """
    path = resolve_root(root)
    if not path.is_dir():
        raise DataError(f"data folder {path} does not exist (dataset={dataset!r}): set {DATA_ENV} "
                        "(or the notebook's data_root) to the folder that holds the data set.")
    if not any(p for p in path.iterdir() if not p.name.startswith(".")):
        raise DataError(f"data folder {path} is empty (dataset={dataset!r}): copy or unpack the "
                        f"data set there, or point {DATA_ENV} / data_root at the folder that holds it.")
    return path


def find_dirs(root: Path, match, depth: int = 2) -> list[Path]:
    """Folders at most ``depth`` levels below ``root`` (root included) for which ``match(p)``."""
    found, level = [], [root]
    for _ in range(depth + 1):
        found += [p for p in level if match(p)]
        level = [c for p in level for c in sorted(p.iterdir())
                 if c.is_dir() and not c.name.startswith((".", "__MACOSX"))]
    return found


def describe_tree(root: Path, limit: int = 20000) -> str:
    """A short account of what a folder holds: counts by file type and the first entries."""
    counts: Counter[str] = Counter()
    for i, path in enumerate(root.rglob("*")):
        if i >= limit:
            break
        if path.is_file() and not path.name.startswith("."):
            name = path.name.lower()
            counts[".nii.gz" if name.endswith(".nii.gz") else (path.suffix.lower() or "(none)")] += 1
    top = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())[:6]
    kinds = ", ".join(f"{n} {s}" for s, n in counts.most_common(5)) or "no files"
    return f"{kinds}; top level: {', '.join(top) or 'nothing'}"


def visible(paths, root: Path) -> list[Path]:
    """Paths without hidden or macOS resource-fork files (``._x.nii.gz``, ``__MACOSX``).

    Archives made on a Mac (the Decathlon tar among them) carry ``._`` twins of every file
    that are not images; reading them would fail with a confusing message.
    """
    return sorted(p for p in paths
                  if not any(part.startswith((".", "__MACOSX")) for part in p.relative_to(root).parts))

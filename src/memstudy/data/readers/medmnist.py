"""MedMNIST files: ``<flag>.npz`` (2D sizes 28-224, and the 3D ``*3d`` sets) as a data set.

MedMNIST publishes no patient ids, so each image (each volume, for 3D) is its own patient.
Its own train / val / test split is kept (train -> train share, val -> holdout, test halves
-> test and reference): MedMNIST made those splits from its sources, often by patient, which
is the best patient separation these files allow.
"""

from __future__ import annotations

from pathlib import Path
from zipfile import BadZipFile

import numpy as np

from ...runio import DATA_ENV
from ..checks import check_each_image, check_float_range
from .base import DataError, Patient, Pool, Slices, resolve_root
from .volumes import square_resize, volume_slices

SHIPPED = {"train": "train_images", "holdout": "val_images", "test": "test_images"}


def matches(root: Path, name: str = "medmnist") -> bool:
    return any(root.glob("*.npz"))


def medmnist_path(dataset: str, root=None) -> Path:
    """``<root or $MEMSTUDY_DATA>/<flag>.npz`` for ``dataset="medmnist:<flag>"``."""
    return resolve_root(root) / f"{dataset.split(':', 1)[1]}.npz"


def index(dataset: str, root=None) -> Pool:
    path = medmnist_path(dataset, root)
    if not path.exists():
        raise DataError(f"{dataset}: {path} does not exist. Put the MedMNIST file there (keys "
                        f"train_images, val_images, test_images, uint8) or set {DATA_ENV} to its folder.")
    arrays = _Arrays(path)
    patients, split = [], {}
    for share, key in SHIPPED.items():
        keys = [f"{share}:{row:07d}" for row in range(arrays.length(key))]
        patients += [Patient(k, (key, row), 1) for row, k in enumerate(keys)]
        split[share] = keys
    half = len(split["test"]) // 2  # a shared ruler learns from the reference half only
    split["test"], split["reference"] = split["test"][:half], split["test"][half:]
    volumes = "3d" in path.stem.lower()

    def load(patient: Patient, cfg) -> Slices:
        key, row = patient.items
        x = arrays.get(key)[row]
        where = f"{path} {key}[{row}]"
        if volumes:  # (D, H, W): the first axis is the slice axis
            s = volume_slices(np.moveaxis(x, 0, -1).astype(np.float32), where, cfg)
            return Slices(s.images, s.slice_index, s.has_lesion, sources=(where,) * len(s.images))
        x = x @ np.array([0.299, 0.587, 0.114], np.float32) if x.ndim == 3 else x  # colour -> grey
        return Slices(square_resize(x[None, None].astype(np.float32), cfg.image_size), np.zeros(1, np.int64),
                      np.zeros(1, bool), sources=(where,))

    return Pool(dataset, path.parent, tuple(patients), load, has_patient_ids=False,
                patient_ids="none: MedMNIST has no patient ids, each image is its own patient "
                            "(MedMNIST's own train/val/test split is kept)",
                fixed_split=split)


class _Arrays:
    """The file's arrays, read once each and checked as a whole when first read."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with np.load(path) as npz:
                self.keys = set(npz.files)
        except (BadZipFile, OSError, ValueError, EOFError) as err:
            raise DataError(f"{path} is not a readable .npz file ({type(err).__name__}: {err}): "
                            "re-download it.") from None
        missing = set(SHIPPED.values()) - self.keys
        if missing:
            raise DataError(f"{path} lacks {sorted(missing)}: expected MedMNIST's keys "
                            "train_images, val_images, test_images.")
        self._cache: dict[str, np.ndarray] = {}

    def length(self, key: str) -> int:
        return len(self.get(key))

    def get(self, key: str) -> np.ndarray:
        if key not in self._cache:
            with np.load(self.path) as npz:
                x = npz[key]
            where = f"{self.path} {key}"
            if x.dtype == np.uint8:
                x = x.astype(np.float32) / 255  # MedMNIST's own dtype
            elif np.issubdtype(x.dtype, np.floating):
                check_each_image(x, where)  # NaN / inf first, naming the row
                check_float_range(x, where)
                x = x.astype(np.float32)
            else:
                raise DataError(f"{where} has dtype {x.dtype}; MedMNIST images are uint8 (0-255): "
                                "save them as uint8, or as float in [0, 1].")
            self._cache[key] = x
        return self._cache[key]

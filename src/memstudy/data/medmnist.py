"""MedMNIST files (``<flag>.npz`` with ``train_images`` / ``val_images``) as a run's sets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ConfigError, RunConfig
from ..runio import DATA_ENV
from .cohort import Cohort
from .sets import Sets


def medmnist_path(cfg: RunConfig) -> Path:
    """``$MEMSTUDY_DATA/<flag>.npz`` for ``dataset="medmnist:<flag>"``."""
    return Path(os.environ.get(DATA_ENV, "data")) / f"{cfg.dataset.split(':', 1)[1]}.npz"


def medmnist_sets(cfg: RunConfig) -> Sets:
    """A MedMNIST file: ``train_images`` are the training pool, ``val_images`` the holdout.

    MedMNIST publishes no patient ids, so every image counts as its own patient: the
    patient-level rates then equal the slice-level ones, and slices of one patient may sit on
    both sides of the split — a limit of the data, stated in the book's cohort chapter.
    """
    path = medmnist_path(cfg)
    if not path.exists():
        raise ConfigError(f"{cfg.dataset}: {path} does not exist. Put the MedMNIST file there "
                          f"(keys train_images, val_images, uint8) or set {DATA_ENV} to its folder.")
    with np.load(path) as npz:
        missing = {"train_images", "val_images"} - set(npz.files)
        if missing:
            raise ConfigError(f"{path} lacks {sorted(missing)}: expected MedMNIST's keys "
                              "train_images, val_images, test_images.")
        rng = np.random.default_rng(cfg.data_seed)
        train = _medmnist_images(npz["train_images"], cfg, rng, cfg.dataset_size, path)
        holdout = _medmnist_images(npz["val_images"], cfg, rng, cfg.holdout_size, path)
    ids = {"train": np.arange(len(train)), "holdout": np.arange(len(holdout)) + 10**9}
    return Sets(train=_one_slice_patients(train, ids["train"]),
                holdout=_one_slice_patients(holdout, ids["holdout"]),
                split={**ids, "test": np.array([], np.int64), "reference": np.array([], np.int64)})


def _one_slice_patients(images: np.ndarray, patient_id: np.ndarray) -> Cohort:
    """Images without patient ids, each its own patient with one slice and no lesion label."""
    n = len(images)
    return Cohort(images, patient_id, np.zeros(n, np.int64), np.zeros(n, bool))


def _medmnist_images(images: np.ndarray, cfg: RunConfig, rng, n: int, path: Path) -> np.ndarray:
    """``n`` images drawn without replacement, grey, in [0, 1], resized to ``cfg.image_size``."""
    if len(images) < n:
        raise ConfigError(f"{path} holds {len(images)} images in a split that needs {n}: "
                          "lower dataset_size / holdout_size.")
    x = images[np.sort(rng.choice(len(images), n, replace=False))].astype(np.float32) / 255
    if x.ndim == 4:  # (N, H, W, 3) colour sets: luminance, so every model sees one channel
        x = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = torch.from_numpy(x)[:, None]
    x = F.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bilinear", antialias=True,
                      align_corners=False)
    return x.clamp(0, 1).numpy()

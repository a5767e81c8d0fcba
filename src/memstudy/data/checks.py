"""Checks on input data, run before any training: each failure names the file and the fix.

A NaN in one image used to surface only after training, inside scikit-learn, with no word
about the file. These checks run while a run's sets are read, before the run folder is
claimed, so bad data leaves nothing behind that looks like a started run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import SPLITS
from .readers.base import DataError


def check_values(array: np.ndarray, where, what: str = "image") -> None:
    """Refuse NaN, infinite or constant pixel values.

    Parameters
    ----------
    array : np.ndarray
        One image or volume, or a stack of images (checked as a whole for NaN/inf).
    where : str or Path
        The file (and row) the array came from, for the message.
    what : str
        "image", "volume", ...: what the array is, for the message.
    """
    finite = np.isfinite(array)
    if not finite.all():
        n_nan = int(np.isnan(array).sum())
        raise DataError(f"{where}: the {what} holds {n_nan} NaN and {array.size - finite.sum() - n_nan} "
                        "infinite values: fix or re-export the file (memstudy does not guess "
                        "missing pixels), or remove it from the data set.")
    if array.size and array.max() == array.min():
        raise DataError(f"{where}: the {what} is constant (every value is {array.flat[0]:g}), so it "
                        "shows nothing: remove it from the data set.")


def check_float_range(array: np.ndarray, where, low: float = 0.0, high: float = 1.0) -> None:
    """Refuse floating-point images outside ``[low, high]`` (they would be clipped silently)."""
    lo, hi = float(array.min()), float(array.max())
    if lo < low or hi > high:
        raise DataError(f"{where}: float images must lie in [{low:g}, {high:g}], found values from "
                        f"{lo:g} to {hi:g}: save them as uint8 (0-255) or rescale them to "
                        f"[{low:g}, {high:g}].")


def check_each_image(images: np.ndarray, where) -> None:
    """:func:`check_values` on every image of an (N, ...) stack, naming the first bad row."""
    flat = images.reshape(len(images), -1)
    bad = ~np.isfinite(flat).all(axis=1)
    if flat.shape[1]:
        bad |= np.nanmax(np.where(np.isfinite(flat), flat, np.nan), axis=1, initial=-np.inf) == \
            np.nanmin(np.where(np.isfinite(flat), flat, np.nan), axis=1, initial=np.inf)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        check_values(images[row], f"{where} row {row}")


def check_split_file(raw, known: list[str], path: Path) -> dict[str, list[str]]:
    """A user's split file (``{"train": [patient ids], ...}``), validated against the data.

    Raises
    ------
    DataError
        If the file names a split that does not exist, a patient the data set does not hold,
        or one patient in two splits.
    """
    if not isinstance(raw, dict) or not {"train", "holdout"} <= set(raw):
        raise DataError(f"{path}: a split file must be a JSON object with lists of patient ids "
                        f"under 'train' and 'holdout' (optionally 'test', 'reference').")
    unknown_splits = sorted(set(raw) - set(SPLITS))
    if unknown_splits:
        raise DataError(f"{path} names split(s) {unknown_splits}; valid names are "
                        f"{', '.join(SPLITS)}: rename or remove them.")
    split = {name: [str(k) for k in raw.get(name, [])] for name in SPLITS}
    known_set = set(known)
    missing = sorted({k for ids in split.values() for k in ids} - known_set)
    if missing:
        raise DataError(f"{path} names {len(missing)} patient(s) that the data set does not hold, "
                        f"e.g. {missing[:5]} (its patients look like {known[:3]}): fix the ids or "
                        "remove them from the split file.")
    seen: dict[str, str] = {}
    for name in SPLITS:
        for key in split[name]:
            if key in seen and seen[key] != name:
                raise DataError(f"{path}: patient {key!r} is in both '{seen[key]}' and '{name}'; a "
                                "patient must sit in one split only (or 'was this patient in "
                                "training?' has no answer): keep it in one.")
            seen[key] = name
    return split


def check_enough(available: int, needed: int, what: str, where, fix: str) -> None:
    """Refuse a share that holds fewer images than the run asks for."""
    if available < needed:
        raise DataError(f"{where}: the {what} holds {available} images but the run needs {needed}: "
                        f"{fix}")

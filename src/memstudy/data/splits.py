"""Patient-level splits: every slice of a patient stays on one side.

Splitting by patient, never by slice, is what makes "was this patient in training?" a
meaningful question. The pool of patients is split once into train / holdout / test shares;
runs draw their training and holdout patients from the first two, and the test share is kept
for rulers no model may see (the quality encoder, the planted-copy benchmark).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..config import SPLIT_FRACTIONS, SPLITS
from ..runio import write_bytes_atomic


def split_patients(patient_ids, fractions=SPLIT_FRACTIONS, seed: int = 0) -> dict[str, np.ndarray]:
    """Split patients (not slices) into the shares named by :data:`memstudy.config.SPLITS`.

    Splitting by patient keeps every slice of a patient on one side, which
    is what makes "was this patient in training?" a meaningful question.

    Parameters
    ----------
    patient_ids : array_like
        Patient ids; repeats (one per slice) are fine.
    fractions : tuple of floats, one per name in ``SPLITS``
        Shares of the pool; non-negative, summing to 1, none empty after rounding.
    seed : int
        Seed of the shuffle.

    Returns
    -------
    dict
        ``{name: ids}`` for every name in ``SPLITS``: sorted int64 arrays of
        unique ids, disjoint and together covering all ids.

    Raises
    ------
    ValueError
        If the fractions are not one number per split summing to 1, or a split
        would be empty.
    """
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.shape != (len(SPLITS),) or np.any(fractions < 0):
        raise ValueError(f"fractions must be {len(SPLITS)} non-negative numbers "
                         f"({', '.join(SPLITS)}), got {fractions}")
    if not np.isclose(fractions.sum(), 1.0, atol=1e-6):
        raise ValueError(
            f"fractions must sum to 1, got {fractions.tolist()} (sum {fractions.sum():g})"
        )
    ids = np.unique(np.asarray(patient_ids, dtype=np.int64))
    # Largest-remainder rounding: the counts add up to exactly len(ids).
    exact = fractions * len(ids)
    counts = np.floor(exact).astype(int)
    leftover = np.argsort(-(exact - counts), kind="stable")[: len(ids) - counts.sum()]
    counts[leftover] += 1
    if np.any(counts == 0):
        raise ValueError(
            f"a split would be empty: {len(ids)} patients with fractions {fractions.tolist()} "
            f"give counts {dict(zip(SPLITS, counts.tolist()))}"
        )
    shuffled = np.random.default_rng(seed).permutation(ids)
    parts = np.split(shuffled, np.cumsum(counts)[:-1])
    return {name: np.sort(part) for name, part in zip(SPLITS, parts)}


def write_split(split: dict, path) -> None:
    """Write a split as JSON ``{"train": [...], "holdout": [...], ...}``, atomically."""
    missing = set(SPLITS) - set(split)
    if missing:
        raise ValueError(f"split lacks {sorted(missing)}")
    path = Path(path)
    text = json.dumps({name: [int(i) for i in split[name]] for name in SPLITS}, indent=1)
    write_bytes_atomic(path, (text + "\n").encode())


def read_split(path) -> dict[str, np.ndarray]:
    """Read a split written by :func:`write_split`.

    Returns
    -------
    dict
        ``{name: ids}`` for every name in ``SPLITS``, sorted int64 arrays.
    """
    raw = json.loads(Path(path).read_text())
    missing = set(SPLITS) - set(raw)
    if missing:
        raise ValueError(f"{path}: split lacks {sorted(missing)}")
    return {name: np.sort(np.asarray(raw[name], dtype=np.int64)) for name in SPLITS}

"""The sets one run works on: training patients, held-out patients, and their slices.

Splits are made on *patient* ids, never on slices, so no patient has a slice on both sides.
Training sets are nested: the first ``k`` training patients of a larger run are the training
set of a smaller one, so the dataset-size axis adds patients and changes nothing else.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import SPLITS, RunConfig
from .cohort import Cohort, make_cohort
from .splits import split_patients

SPLIT_FILE = "memstudy_split.json"  # optional, in a data folder: {"train": [patient ids], ...}


@dataclass(frozen=True)
class Sets:
    """Training and held-out slices of one run, with the full patient split they came from."""

    train: Cohort
    holdout: Cohort
    split: dict[str, np.ndarray]
    info: dict = field(default_factory=dict)  # real data: where it came from (-> data.json)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.train.images), torch.from_numpy(self.holdout.images)


def patient_split(cfg: RunConfig) -> dict[str, np.ndarray]:
    """The train / holdout / test split of the generated patient pool of ``cfg``."""
    return split_patients(np.arange(cfg.cohort_patients), seed=cfg.data_seed)


def patient_slices(ids: np.ndarray, cfg: RunConfig) -> Cohort:
    """The slices of the given generated patients, in the order of ``ids``."""
    parts = [make_cohort(1, cfg.image_size, cfg.slices_per_patient, seed=cfg.data_seed,
                         first_patient=int(p), slice_spacing=cfg.slice_spacing) for p in ids]
    return Cohort(*(np.concatenate([getattr(c, f) for c in parts])
                    for f in ("images", "patient_id", "slice_index", "has_lesion")))


def load_sets(cfg: RunConfig, root: str | os.PathLike | None = None) -> Sets:
    """The training and holdout slices of ``cfg``, from the generated cohort or local files.

    Real data are read from ``root`` (default ``$MEMSTUDY_DATA``) and checked on the way;
    every problem raises :class:`memstudy.data.readers.DataError` naming the file, so call
    this before any long work.
    """
    if cfg.dataset == "cohort" and cfg.spatial_dims == 3:
        from .volumes import volume_sets  # whole volumes of the same patients

        return volume_sets(cfg)
    if cfg.dataset == "cohort":
        return _cohort_sets(cfg)
    return _real_sets(cfg, root)


def cell_patients(cfg: RunConfig) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The pool split and the training and holdout patient ids ``cfg`` draws from it.

    One function for slices and volumes, so a 2D and a 3D cell with the same settings train on
    the same patients.
    """
    split = patient_split(cfg)
    # The replicate (``seed``) picks which patients of the pool's shares this cell gets, so
    # replicates differ in their patients; within one seed the training sets stay nested.
    order = np.random.default_rng([cfg.data_seed, cfg.seed]).permutation
    n_train = cfg.dataset_size // cfg.slices_per_patient
    n_holdout = -(-cfg.holdout_size // cfg.slices_per_patient)  # ceil: enough whole patients
    return split, order(split["train"])[:n_train], order(split["holdout"])[:n_holdout]


def _cohort_sets(cfg: RunConfig) -> Sets:
    """Split the generated patient pool and build the training and holdout slices of ``cfg``."""
    split, train_ids, holdout_ids = cell_patients(cfg)
    holdout = patient_slices(holdout_ids, cfg)
    return Sets(train=patient_slices(train_ids, cfg), holdout=holdout.subset(np.arange(cfg.holdout_size)),
                split=split)


# ------------------------------------------------------------------------------------------
# Real data sets (memstudy.data.readers): split by patient, then draw like the cohort


def _real_sets(cfg: RunConfig, root) -> Sets:
    """Index a local data set, split its patients, read and check the drawn ones only."""
    from .checks import check_enough
    from .readers import read_pool
    from .readers.images import check_one_depth

    pool = read_pool(cfg.dataset, root)
    keys = pool.keys()
    by_key, split_from = _split_by_key(pool, cfg)
    position = {k: i for i, k in enumerate(keys)}  # a patient's integer id in split.json
    split = {name: np.array(sorted(position[k] for k in by_key[name]), np.int64) for name in SPLITS}
    order = np.random.default_rng([cfg.data_seed, cfg.seed]).permutation
    drawn = {}
    for name, n, fix in (("train", cfg.dataset_size, "lower dataset_size, or add patients"),
                         ("holdout", cfg.holdout_size, "lower holdout_size, or add patients")):
        ids = order(split[name])
        available = sum(min(pool.patients[i].n_images or cfg.slices_per_patient,
                            cfg.slices_per_patient) for i in ids)
        check_enough(available, n, f"{name} share ({len(ids)} patients, at most "
                     f"slices_per_patient={cfg.slices_per_patient} images each, split from "
                     f"{split_from})", pool.root, fix + f" (or give a {SPLIT_FILE}).")
        drawn[name] = _draw(pool, ids, n, cfg)
    sources = [s for c, parts in drawn.values() for p in parts for s in p.sources]
    kinds = [k for c, parts in drawn.values() for p in parts for k in p.kinds]
    check_one_depth(sources, kinds, pool.root)
    notes = pool.notes + [n for c, parts in drawn.values() for p in parts for n in p.notes]
    info = {"dataset": cfg.dataset, "root": str(pool.root), "n_patients": len(keys),
            "has_patient_ids": pool.has_patient_ids, "patient_ids": pool.patient_ids,
            "split_from": split_from, "notes": notes[:100],
            "patient_keys": keys if pool.has_patient_ids else None,
            **{f"{name}_files": sorted({s for p in drawn[name][1] for s in p.sources})
               for name in drawn}}
    return Sets(train=drawn["train"][0], holdout=drawn["holdout"][0], split=split, info=info)


def _split_by_key(pool, cfg: RunConfig) -> tuple[dict[str, list[str]], str]:
    """The four shares by patient key: a user's split file, the data set's own, or ours."""
    from .checks import check_split_file
    from .readers import DataError

    path = pool.root / SPLIT_FILE
    if path.exists():
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{path} is not valid JSON ({err}): fix it or delete it.") from None
        return check_split_file(raw, pool.keys(), path), f"the split file {path.name}"
    if pool.fixed_split is not None:
        return pool.fixed_split, "the data set's own split"
    try:
        parts = split_patients(np.arange(len(pool.patients)), seed=cfg.data_seed)
    except ValueError as err:
        raise DataError(f"{pool.root} holds {len(pool.patients)} patients, too few to split into "
                        f"{', '.join(SPLITS)} ({err}): add patients.") from None
    keys = pool.keys()
    return ({name: [keys[i] for i in ids] for name, ids in parts.items()},
            f"memstudy's patient-level split (data_seed={cfg.data_seed})")


def _draw(pool, ids: np.ndarray, n: int, cfg: RunConfig) -> tuple[Cohort, list]:
    """Read patients in the drawn order until ``n`` images; each patient gives whole slices."""
    from .checks import check_values

    parts, rows, total = [], [], 0
    for pid in ids:
        if total >= n:
            break
        found = pool.load(pool.patients[pid], cfg.image_size, cfg.slices_per_patient)
        for image, where in zip(found.images, found.sources or ("?",) * len(found.images)):
            check_values(image, where)  # a constant image after resizing shows nothing
        parts.append(found)
        rows.append(np.full(len(found.images), pid, np.int64))
        total += len(found.images)
    images = np.concatenate([p.images for p in parts])[:n]
    return Cohort(images.astype(np.float32), np.concatenate(rows)[:n],
                  np.concatenate([p.slice_index for p in parts])[:n],
                  np.concatenate([p.has_lesion for p in parts])[:n]), parts

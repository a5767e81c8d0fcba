"""The sets one run works on: training patients, held-out patients, and their slices.

Splits are made on *patient* ids, never on slices, so no patient has a slice on both sides.
Training sets are nested: the first ``k`` training patients of a larger run are the training
set of a smaller one, so the dataset-size axis adds patients and changes nothing else.
"""

from __future__ import annotations

import hashlib
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
    from .readers.images import check_one_depth

    pool, split, split_from = _real_pool(cfg, root)
    keys = pool.keys()
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
    # Never-seen images (every rate's null, and the negative control's samples) come from the
    # test share later in the cell: check now that there are enough, before the folder exists.
    unseen = cfg.num_gen * (2 if cfg.model == "control_negative" else 1)
    test_images = sum(min(pool.patients[i].n_images or cfg.slices_per_patient,
                          cfg.slices_per_patient) for i in split["test"])
    check_enough(test_images, unseen, f"test share ({len(split['test'])} patients, never-seen "
                 "images for the null of every rate)", pool.root,
                 f"lower num_gen, or add patients (or give a {SPLIT_FILE}).")
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


def check_data(cfg: RunConfig, root=None) -> str:
    """Index and split ``cfg``'s real data set without reading pixels; a one-line summary.

    The cheap checks (folder, layout, missing files, split file) that a grid runs once before
    its cells, so bad data gives one message instead of one failed cell each.
    """
    if cfg.dataset == "cohort":
        return "the generated cohort"
    pool, split, split_from = _real_pool(cfg, root)
    return (f"{cfg.dataset}: {len(pool.patients)} patients in {pool.root} (patient ids: "
            f"{pool.patient_ids}); split from {split_from}")


def share_slices(cfg: RunConfig, share: str, n: int, salt: int = 0, skip: int = 0,
                 by_seed: bool = True, up_to: bool = False, root=None) -> Cohort:
    """``n`` images of whole patients from a share of a real data set's pool.

    What the rulers and controls need from patients no cell trains on: the ``test`` share
    (every rate's null, the negative control) and the ``reference`` share (shared autoencoder,
    quality ruler). The generated cohort has its own draws (``models.controls``).

    Parameters
    ----------
    share : str
        "test" or "reference" (any name in ``SPLITS``).
    n : int
        Images wanted; patients give up to ``slices_per_patient`` each.
    salt : int
        Seeds the order of the share's patients, with ``data_seed`` (and ``seed``, if
        ``by_seed``: a shared ruler, cached across cells, must not depend on a cell's seed).
    skip : int
        Leave out the patients that the first ``skip * slices_per_patient`` images of the same
        order take, so two callers (the null, the negative control) never share a patient.
    up_to : bool
        Take fewer than ``n`` if the share holds fewer (a ruler learns from what there is);
        otherwise a short share is a :class:`DataError`.
    """
    from .checks import check_enough

    pool, split, split_from = _real_pool(cfg, root)
    spp = cfg.slices_per_patient
    order = np.random.default_rng([cfg.data_seed, *([cfg.seed] if by_seed else []), salt]
                                  ).permutation(split[share])
    sizes = np.cumsum([min(pool.patients[i].n_images or spp, spp) for i in order])
    first = int(np.searchsorted(sizes, skip * spp)) + 1 if skip else 0
    available = int(sizes[-1] - (sizes[first - 1] if first else 0)) if first < len(order) else 0
    n = min(n, available) if up_to else n
    check_enough(available, max(n, 1), f"{share} share ({len(order) - first} patients left, split from "
                 f"{split_from})", pool.root, "lower num_gen, or add patients (or give a "
                 f"{SPLIT_FILE} with a larger '{share}' share).")
    return _draw(pool, order[first:], n, cfg)[0]


def share_fingerprint(cfg: RunConfig, share: str, root=None) -> str:
    """Who a share of a real data set's pool is, as a short hash: its patients' keys and files.

    A ruler cached for a share (the trusted encoder) must not be reused when the share changes
    (other files in the folder, another split file), yet should survive copying the folder
    elsewhere: so the hash covers each patient's key and its files' names relative to the
    data folder and sizes, and the folder's other top-level files (a MedMNIST ``.npz``, an
    index CSV, a split file) by name and size, not the folder's path. No pixels are read.
    """
    pool, split, _ = _real_pool(cfg, root)
    digest = hashlib.sha256(cfg.dataset.encode())
    images = {os.fspath(part) for p in pool.patients for part in _parts(p)
              if isinstance(part, os.PathLike)}
    for path in sorted(pool.root.iterdir()):  # the files that are no patient's image
        if path.is_file() and not path.name.startswith(".") and os.fspath(path) not in images:
            digest.update(f"|{_describe_part(path, pool.root)}".encode())
    for i in split[share]:
        patient = pool.patients[i]
        digest.update(f"\n{patient.key}".encode())
        for part in _parts(patient):
            digest.update(f"|{_describe_part(part, pool.root)}".encode())
    return digest.hexdigest()[:16]


def _parts(patient) -> list:
    """A patient's items flattened: files, or (file, split, row) tuples taken apart."""
    return [part for item in patient.items
            for part in (item if isinstance(item, tuple) else (item,))]


def _describe_part(part, root) -> str:
    """A file as its name under ``root`` and its size; anything else (a row number) as text."""
    if isinstance(part, os.PathLike) and os.path.isfile(part):
        path = os.fspath(part)
        try:
            name = os.path.relpath(path, root)
        except ValueError:  # another drive (Windows): the name alone
            name = os.path.basename(path)
        return f"{name}:{os.path.getsize(path)}"
    return repr(part)


def _real_pool(cfg: RunConfig, root):
    """The indexed pool, its split into ``SPLITS`` as integer patient ids, and its origin."""
    from .readers import read_pool

    pool = read_pool(cfg.dataset, root)
    by_key, split_from = _split_by_key(pool, cfg)
    position = {k: i for i, k in enumerate(pool.keys())}  # a patient's integer id in split.json
    split = {name: np.array(sorted(position[k] for k in by_key[name]), np.int64) for name in SPLITS}
    return pool, split, split_from


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
        found = pool.load(pool.patients[pid], cfg)
        for image, where in zip(found.images, found.sources or ("?",) * len(found.images)):
            check_values(image, where)  # a constant image after resizing shows nothing
        parts.append(found)
        rows.append(np.full(len(found.images), pid, np.int64))
        total += len(found.images)
    images = np.concatenate([p.images for p in parts])[:n]
    return Cohort(images.astype(np.float32), np.concatenate(rows)[:n],
                  np.concatenate([p.slice_index for p in parts])[:n],
                  np.concatenate([p.has_lesion for p in parts])[:n]), parts

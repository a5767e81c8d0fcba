"""The sets one run works on: training patients, held-out patients, and their slices.

Splits are made on *patient* ids, never on slices, so no patient has a slice on both sides.
Training sets are nested: the first ``k`` training patients of a larger run are the training
set of a smaller one, so the dataset-size axis adds patients and changes nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import RunConfig
from .cohort import Cohort, make_cohort
from .splits import split_patients


@dataclass(frozen=True)
class Sets:
    """Training and held-out slices of one run, with the full patient split they came from."""

    train: Cohort
    holdout: Cohort
    split: dict[str, np.ndarray]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.train.images), torch.from_numpy(self.holdout.images)


def patient_split(cfg: RunConfig) -> dict[str, np.ndarray]:
    """The train / holdout / test split of the generated patient pool of ``cfg``."""
    return split_patients(np.arange(cfg.cohort_patients), seed=cfg.data_seed)


def patient_slices(ids: np.ndarray, cfg: RunConfig) -> Cohort:
    """The slices of the given generated patients, in the order of ``ids``."""
    parts = [make_cohort(1, cfg.image_size, cfg.slices_per_patient, seed=cfg.data_seed,
                         first_patient=int(p)) for p in ids]
    return Cohort(*(np.concatenate([getattr(c, f) for c in parts])
                    for f in ("images", "patient_id", "slice_index", "has_lesion")))


def load_sets(cfg: RunConfig) -> Sets:
    """The training and holdout slices of ``cfg``, from the generated cohort or a local file."""
    if cfg.dataset.startswith("medmnist:"):
        from .medmnist import medmnist_sets  # real data: read only when asked for

        return medmnist_sets(cfg)
    return _cohort_sets(cfg)


def _cohort_sets(cfg: RunConfig) -> Sets:
    """Split the generated patient pool and build the training and holdout slices of ``cfg``."""
    split = patient_split(cfg)
    # The replicate (``seed``) picks which patients of the pool's shares this cell gets, so
    # replicates differ in their patients; within one seed the training sets stay nested.
    order = np.random.default_rng([cfg.data_seed, cfg.seed]).permutation
    n_train = cfg.dataset_size // cfg.slices_per_patient
    n_holdout = -(-cfg.holdout_size // cfg.slices_per_patient)  # ceil: enough whole patients
    train_ids = order(split["train"])[:n_train]
    holdout_ids = order(split["holdout"])[:n_holdout]
    holdout = patient_slices(holdout_ids, cfg)
    return Sets(train=patient_slices(train_ids, cfg), holdout=holdout.subset(np.arange(cfg.holdout_size)),
                split=split)

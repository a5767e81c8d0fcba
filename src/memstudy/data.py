"""The sets one run works on: training patients, held-out patients, and their slices.

Splits are made on *patient* ids, never on slices, so no patient has a slice on both sides.
Training sets are nested: the first ``k`` training patients of a larger run are the training
set of a smaller one, so the dataset-size axis adds patients and changes nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .cohort import Cohort, make_cohort, split_patients
from .config import RunConfig

SPLIT_FRACTIONS = (0.6, 0.2, 0.2)  # train / holdout / test share of the patient pool


@dataclass(frozen=True)
class Sets:
    """Training and held-out slices of one run, with the full patient split they came from."""

    train: Cohort
    holdout: Cohort
    split: dict[str, np.ndarray]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.train.images), torch.from_numpy(self.holdout.images)


def _patients(ids: np.ndarray, cfg: RunConfig) -> Cohort:
    parts = [make_cohort(1, cfg.image_size, cfg.slices_per_patient, seed=cfg.data_seed,
                         first_patient=int(p)) for p in ids]
    return Cohort(*(np.concatenate([getattr(c, f) for c in parts])
                    for f in ("images", "patient_id", "slice_index", "has_lesion")))


def load_sets(cfg: RunConfig) -> Sets:
    """Split the generated patient pool and build the training and holdout slices of ``cfg``."""
    split = split_patients(np.arange(cfg.cohort_patients), SPLIT_FRACTIONS, seed=cfg.data_seed)
    order = np.random.default_rng(cfg.data_seed).permutation
    n_train = cfg.dataset_size // cfg.slices_per_patient
    n_holdout = -(-cfg.holdout_size // cfg.slices_per_patient)  # ceil: enough whole patients
    train_ids = order(split["train"])[:n_train]
    holdout_ids = order(split["holdout"])[:n_holdout]
    holdout = _patients(holdout_ids, cfg)
    return Sets(train=_patients(train_ids, cfg), holdout=holdout.subset(np.arange(cfg.holdout_size)),
                split=split)

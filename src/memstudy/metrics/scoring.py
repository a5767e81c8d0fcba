"""One detector turned into Dar et al.'s metrics: prepare each set once, search, then rate."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..detect.base import Detector
from .memorization import Memorization, memorization


@dataclass(frozen=True)
class Detection:
    """Everything one detector found at one checkpoint (arrays are numpy, indices into sets)."""

    detector: str
    result: Memorization
    sim_gen_train: np.ndarray  # (N_gen,) nearest-training similarity of each synthetic sample
    nn_gen_train: np.ndarray  # (N_gen,) index of that training sample
    sim_gen_holdout: np.ndarray  # (N_gen,) nearest-holdout similarity of each synthetic sample
    nn_gen_holdout: np.ndarray
    sim_train_gen: np.ndarray  # (N_train,) nearest-synthetic similarity of each training sample
    sim_train_holdout: np.ndarray  # (N_train,) calibrates tau
    sim_holdout_train: np.ndarray  # (N_holdout,) the "genuinely new image" reference curve

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.__dict__.items() if isinstance(v, np.ndarray)}


def score(detector: Detector, train: torch.Tensor, holdout: torch.Tensor, gen: torch.Tensor,
          percentile: float = 95.0) -> Detection:
    """Prepare the three sets once, search nearest neighbours, and compute Dar et al.'s metrics.

    tau is the detector's ``fixed_tau`` when it has one, else the ``percentile``-th percentile
    of train -> holdout similarity.
    """
    rep_train, rep_holdout, rep_gen = (detector.prepare(x) for x in (train, holdout, gen))

    def nn1(q, r):
        v, i = detector.search(q, r, 1)
        return v[:, 0].cpu().numpy(), i[:, 0].cpu().numpy()

    sim_gen_train, nn_gen_train = nn1(rep_gen, rep_train)
    sim_gen_holdout, nn_gen_holdout = nn1(rep_gen, rep_holdout)
    sim_train_gen, _ = nn1(rep_train, rep_gen)
    sim_train_holdout, _ = nn1(rep_train, rep_holdout)
    sim_holdout_train, _ = nn1(rep_holdout, rep_train)
    result = memorization(sim_train_holdout, sim_gen_train, sim_train_gen, sim_holdout_train,
                          percentile=percentile, tau=detector.fixed_tau)
    return Detection(detector.name, result, sim_gen_train, nn_gen_train, sim_gen_holdout,
                     nn_gen_holdout, sim_train_gen, sim_train_holdout, sim_holdout_train)

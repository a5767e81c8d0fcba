"""Memorization metrics of Dar et al.: tau from held-out data, then N_mem and N_copies.

Vocabulary used throughout memstudy:

- ``sim_train_holdout[i]``: similarity of training sample i to its nearest *held-out* sample;
- ``sim_gen_train[j]``: similarity of synthetic sample j to its nearest *training* sample;
- ``sim_train_gen[i]``: similarity of training sample i to its nearest *synthetic* sample;
- ``tau``: the ``percentile``-th percentile of ``sim_train_holdout``. Held-out patients were
  never seen by the model, so a match above tau is rarer than (100 - percentile) % among
  genuinely new images: that rate is the false-positive floor every rate must be read against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def tau_from_holdout(sim_train_holdout: np.ndarray, percentile: float = 95.0) -> float:
    """Threshold tau: the given percentile of each training sample's max similarity to holdout."""
    sim_train_holdout = np.asarray(sim_train_holdout, dtype=np.float64)
    if sim_train_holdout.size == 0:
        raise ValueError("tau needs at least one training sample matched against holdout data")
    return float(np.percentile(sim_train_holdout, percentile))


@dataclass(frozen=True)
class Memorization:
    """Rates at one threshold, with the floors they must be compared to."""

    tau: float
    n_train: int
    n_gen: int
    n_mem: int  # training samples whose nearest synthetic sample is above tau
    n_copies: int  # synthetic samples whose nearest training sample is above tau
    fp_floor: float  # fraction of training samples above tau against holdout (~ 1 - percentile)
    holdout_copy_rate: float  # fraction of holdout samples above tau against training: the
    #                           copy rate a model that drew genuinely new patients would get

    @property
    def mem_rate(self) -> float:
        return self.n_mem / self.n_train

    @property
    def copy_rate(self) -> float:
        return self.n_copies / self.n_gen

    def as_dict(self) -> dict[str, float | int]:
        return {"tau": self.tau, "n_train": self.n_train, "n_gen": self.n_gen,
                "n_mem": self.n_mem, "n_copies": self.n_copies, "mem_rate": self.mem_rate,
                "copy_rate": self.copy_rate, "fp_floor": self.fp_floor,
                "holdout_copy_rate": self.holdout_copy_rate}


def memorization(sim_train_holdout: np.ndarray, sim_gen_train: np.ndarray,
                 sim_train_gen: np.ndarray, sim_holdout_train: np.ndarray,
                 percentile: float = 95.0, tau: float | None = None) -> Memorization:
    """Count memorized training samples and copied synthetic samples (strictly above tau).

    ``tau`` may be given (a fixed-threshold detector); otherwise it is calibrated on holdout.
    """
    if tau is None:
        tau = tau_from_holdout(sim_train_holdout, percentile)
    sim_train_holdout, sim_gen_train, sim_train_gen, sim_holdout_train = (
        np.asarray(a, dtype=np.float64)
        for a in (sim_train_holdout, sim_gen_train, sim_train_gen, sim_holdout_train))
    return Memorization(
        tau=float(tau),
        n_train=len(sim_train_gen),
        n_gen=len(sim_gen_train),
        n_mem=int((sim_train_gen > tau).sum()),
        n_copies=int((sim_gen_train > tau).sum()),
        fp_floor=float((sim_train_holdout > tau).mean()),
        holdout_copy_rate=float((sim_holdout_train > tau).mean()),
    )

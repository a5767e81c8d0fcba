"""Two generators that need no training: the controls every grid runs through its detectors.

A detector, its threshold and its report form a ruler. Before a ruler's readings of real models
mean anything, it must pass two checks on generators whose answer is known:

- **positive control** (``model: control_positive``): "samples" are the training slices
  themselves, passed through the cell's autoencoder round trip so that they carry the same
  reconstruction blur as a latent model's output. Every sample is a copy by construction, so
  the ruler must flag almost all of them (the book asks for >= 95 %).
- **negative control** (``model: control_negative``): "samples" are slices of patients from the
  pool's ``test`` share, which no model trains on, through the same round trip. No sample is a
  copy, so every rate must sit at its null.

Both are measured once, at ``ae_steps`` (like the autoencoder family). The never-seen slices
that give every rate its null (:func:`null_set`) come from the same share, but from other
patients than the negative control's, so the negative control is not compared with itself.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import RunConfig
from ..data.cohort import Cohort
from ..data.sets import patient_slices, patient_split, share_slices

UNSEEN_SALT = 7  # seeds the order of test-share patients: the null takes the first, the
#                 negative control the next ones, so the two never share a patient


def unseen_slices(cfg: RunConfig, n: int, salt: int, skip: int = 0) -> Cohort:
    """``n`` slices of test-share patients (whole patients, drawn by ``cfg.seed`` and ``salt``).

    ``skip`` leaves out that many patients at the start of the draw, so two callers can take
    disjoint patients from one ordering.
    """
    if cfg.dataset != "cohort":  # a real data set: its own test share (memstudy.data.sets)
        return share_slices(cfg, "test", n, salt, skip)
    test_ids = patient_split(cfg)["test"]
    n_patients = -(-n // cfg.slices_per_patient)
    if skip + n_patients > len(test_ids):
        raise ValueError(
            f"the test share holds {len(test_ids)} patients, fewer than the {skip + n_patients} "
            f"needed for {n} never-seen slices: raise cohort_patients or lower num_gen.")
    order = np.random.default_rng([cfg.data_seed, cfg.seed, salt]).permutation(test_ids)
    slices = patient_slices(order[skip:skip + n_patients], cfg)
    return slices.subset(np.arange(n))


def null_set(cfg: RunConfig) -> Cohort:
    """The never-seen slices every rate of a cell is compared with: ``num_gen`` of them."""
    return unseen_slices(cfg, cfg.num_gen, UNSEEN_SALT)


class _RoundTrip:
    """Emit given images through an autoencoder round trip; measured once, at ``ae_steps``."""

    def __init__(self, cfg: RunConfig, ae, images: torch.Tensor, device: str):
        self.cfg, self.space, self.device = cfg, ae, device
        self.images = images

    def run(self, on_checkpoint, progress: bool = True) -> None:
        on_checkpoint(self.cfg.ae_steps, self)

    @torch.no_grad()
    def sample(self, n: int, seed: int) -> torch.Tensor:
        # Cycle through a seeded permutation so that every image is emitted before any repeats.
        order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(seed))
        idx = order.repeat(-(-n // len(order)))[:n]
        x = self.images[idx].to(self.device)
        return self.space.decode(self.space.encode(x)).float().clamp(0, 1).cpu()


class PositiveControl(_RoundTrip):
    """Training slices through the autoencoder: every sample is a copy."""

    def __init__(self, cfg: RunConfig, ae, train: torch.Tensor, device: str):
        super().__init__(cfg, ae, train, device)


class NegativeControl(_RoundTrip):
    """Slices of never-seen (test-share) patients through the autoencoder: no sample is a copy."""

    def __init__(self, cfg: RunConfig, ae, device: str):
        if cfg.spatial_dims == 3:  # one volume per patient, after the null set's patients
            from ..data.volumes import unseen_volumes

            unseen = unseen_volumes(cfg, cfg.num_gen, UNSEEN_SALT, skip=cfg.num_gen)
        else:
            skip = -(-cfg.num_gen // cfg.slices_per_patient)  # the null set's patients
            unseen = unseen_slices(cfg, cfg.num_gen, UNSEEN_SALT, skip=skip)
        super().__init__(cfg, ae, torch.from_numpy(unseen.images), device)


def make_control(cfg: RunConfig, ae, train: torch.Tensor, device: str):
    """The control generator of ``cfg.model`` (``control_positive`` or ``control_negative``)."""
    if cfg.model == "control_positive":
        return PositiveControl(cfg, ae, train, device)
    return NegativeControl(cfg, ae, device)

"""Copy detectors behind one interface, and the scoring that turns them into metrics.

A detector maps images to vectors (``embed``); similarity is Pearson's r between vectors, and
nearest neighbours come from :func:`memstudy.neighbors.nearest_neighbors`. Two detectors:

- ``pixel``: the raw pixels (Akbar et al.: correlation of each synthetic image with every
  training image);
- ``contrastive``: a small CNN trained with NT-Xent on the *training set only*, whose positive
  view is a rotation within +-5 degrees and/or a flip (Dar et al.). It tolerates the small
  shifts and flips that pixel correlation punishes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .augment import CONTRASTIVE_VIEW, BatchAugment
from .memorization import Memorization, memorization
from .neighbors import nearest_neighbors
from .runio import save_atomic


class Detector:
    """Base class: ``fit`` on the training set (if needed), then ``embed`` any images."""

    name = "base"

    def fit(self, train: torch.Tensor) -> "Detector":
        return self

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class PixelDetector(Detector):
    """Pearson correlation in pixel space (Akbar et al.)."""

    name = "pixel"

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return images.reshape(len(images), -1).float()


class SmallEncoder(nn.Module):
    """A four-stage CNN with a linear head: the contrastive encoder's backbone.

    Dar et al. use a ResNet-50 in 2D; on 32-128 px slices and CPU budgets a small CNN learns the
    same instance-discrimination task in seconds (the choice is recorded in every run's config).
    """

    def __init__(self, dim: int = 128, width: int = 32):
        super().__init__()
        layers, c_in = [], 1
        for i, c_out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=1 if i == 0 else 2, padding=1),
                       nn.GroupNorm(8, c_out), nn.SiLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c_in, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """NT-Xent (SimCLR) loss: each view must pick its partner among the other 2B - 1 views."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    n = z1.shape[0]
    logits.fill_diagonal_(-float("inf"))  # a view is not its own positive
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, target)


class ContrastiveDetector(Detector):
    """Self-supervised encoder trained on the training set only (Dar et al.)."""

    name = "contrastive"
    temperature = 0.07  # Dar et al.
    lr = 1e-3  # Dar et al. use 1e-4 over 200 epochs; a short CPU budget needs a larger step

    def __init__(self, dim: int = 128, steps: int = 300, batch_size: int = 64, seed: int = 0,
                 device: str = "cpu", cache: Path | None = None):
        self.dim, self.steps, self.batch_size, self.seed = dim, steps, batch_size, seed
        self.device, self.cache = device, cache
        self.losses: list[float] = []

    def fit(self, train: torch.Tensor) -> "ContrastiveDetector":
        torch.manual_seed(self.seed)
        self.encoder = SmallEncoder(self.dim).to(self.device)
        if self.cache is not None and self.cache.exists():
            self.encoder.load_state_dict(torch.load(self.cache, map_location=self.device))
            return self
        gen = torch.Generator().manual_seed(self.seed)
        view = BatchAugment(CONTRASTIVE_VIEW, gen)
        opt = torch.optim.Adam(self.encoder.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.steps)
        batch = min(self.batch_size, len(train))  # no duplicates: a duplicate is a false negative
        train = train.to(self.device)
        self.encoder.train()
        for _ in range(self.steps):
            x = train[torch.randperm(len(train), generator=gen)[:batch].to(self.device)]
            loss = nt_xent(self.encoder(view(x)), self.encoder(view(x)), self.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            self.losses.append(loss.item())
        self.encoder.eval()
        if self.cache is not None:
            save_atomic(lambda p: torch.save(self.encoder.state_dict(), p), self.cache)
        return self

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        self.encoder.eval()
        out = [self.encoder(images[i:i + 256].to(self.device)) for i in range(0, len(images), 256)]
        return torch.cat(out).float()


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
    """Embed the three sets once, search nearest neighbours, and compute Dar et al.'s metrics."""
    emb_train, emb_holdout, emb_gen = (detector.embed(x) for x in (train, holdout, gen))

    def nn1(q, r):
        v, i = nearest_neighbors(q, r, k=1)
        return v[:, 0].cpu().numpy(), i[:, 0].cpu().numpy()

    sim_gen_train, nn_gen_train = nn1(emb_gen, emb_train)
    sim_gen_holdout, nn_gen_holdout = nn1(emb_gen, emb_holdout)
    sim_train_gen, _ = nn1(emb_train, emb_gen)
    sim_train_holdout, _ = nn1(emb_train, emb_holdout)
    sim_holdout_train, _ = nn1(emb_holdout, emb_train)
    result = memorization(sim_train_holdout, sim_gen_train, sim_train_gen, sim_holdout_train,
                          percentile=percentile)
    return Detection(detector.name, result, sim_gen_train, nn_gen_train, sim_gen_holdout,
                     nn_gen_holdout, sim_train_gen, sim_train_holdout, sim_holdout_train)


def make_detector(name: str, *, dim: int, steps: int, seed: int, device: str,
                  cache_dir: Path | None = None) -> Detector:
    """Build a detector by name (the names are ``config.DETECTORS``)."""
    if name == "pixel":
        return PixelDetector()
    if name == "contrastive":
        cache = None if cache_dir is None else Path(cache_dir) / "contrastive_encoder.pt"
        return ContrastiveDetector(dim=dim, steps=steps, seed=seed, device=device, cache=cache)
    raise ValueError(f"unknown detector {name!r}")


"""Dar et al.'s self-supervised contrastive encoder as a copy detector."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..models.augment import CONTRASTIVE_VIEW, BatchAugment
from ..runio import save_atomic
from .base import Detector


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
    backbone = SmallEncoder  # the network class, built as backbone(dim); contrastive3d swaps it
    temperature = 0.07  # Dar et al.
    lr = 1e-3  # Dar et al. use 1e-4 over 200 epochs; a short CPU budget needs a larger step

    def __init__(self, dim: int = 128, steps: int = 300, batch_size: int = 64, seed: int = 0,
                 device: str = "cpu", cache: Path | None = None):
        self.dim, self.steps, self.batch_size, self.seed = dim, steps, batch_size, seed
        self.device, self.cache = device, cache
        self.losses: list[float] = []

    def fit(self, train: torch.Tensor | None) -> "ContrastiveDetector":
        """Train on ``train``, or load the cached weights; ``train`` may be None only then."""
        torch.manual_seed(self.seed)
        self.encoder = self.backbone(self.dim).to(self.device)
        if self.cache is not None and self.cache.exists():
            self.encoder.load_state_dict(torch.load(self.cache, map_location=self.device))
            return self
        if train is None:
            raise ValueError(f"no cached encoder at {self.cache}: pass the training images")
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

"""Dar et al.'s 3D copy detector: a small 3D conv encoder trained with NT-Xent on training volumes.

The 3D arm of Dar et al.'s code replaces the 2D ResNet-50 with a small 3D convolutional encoder
whose embedding has 32 dimensions; the rest is the 2D recipe: NT-Xent at temperature 0.07, a
positive view made by a small rotation and/or a flip (each with probability 0.5; in 3D the
rotation turns about all three axes, see :class:`memstudy.models.augment.BatchAugment`),
training on the training set only, Pearson's r between embeddings, and tau at the 95th
percentile of training -> holdout similarity (:func:`memstudy.metrics.scoring.score`).
Only the network differs from :class:`~memstudy.detect.contrastive.ContrastiveDetector`, so the
training loop, caching and nearest-neighbour search are inherited.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .contrastive import ContrastiveDetector

EMBED_DIM_3D = 32  # Dar et al.'s 3D embedding size


class SmallEncoder3D(nn.Module):
    """Four 3D conv stages (stride 2 after the first) + global average pooling + a linear head.

    Widths start at ``width`` and double per stage; at 32-cubed volumes and width 8 it has about
    0.1 M parameters, small enough to train in seconds to minutes on a CPU.
    """

    def __init__(self, dim: int = EMBED_DIM_3D, width: int = 8):
        super().__init__()
        layers, c_in = [], 1
        for i, c_out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            layers += [nn.Conv3d(c_in, c_out, 3, stride=1 if i == 0 else 2, padding=1),
                       nn.GroupNorm(min(8, c_out), c_out), nn.SiLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool3d(1), nn.Flatten())
        self.head = nn.Linear(c_in, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"contrastive3d compares volumes (N, 1, D, H, W); got shape "
                             f"{tuple(x.shape)}: use the 'contrastive' detector for 2D slices.")
        return self.head(self.features(x))


class Contrastive3DDetector(ContrastiveDetector):
    """Self-supervised 3D encoder trained on the training volumes only (Dar et al., 3D)."""

    name = "contrastive3d"
    backbone = SmallEncoder3D

    def __init__(self, dim: int = EMBED_DIM_3D, steps: int = 300, batch_size: int = 32,
                 seed: int = 0, device: str = "cpu", cache: Path | None = None):
        super().__init__(dim=dim, steps=steps, batch_size=batch_size, seed=seed, device=device,
                         cache=cache)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        # Volumes are ~32x larger than slices: embed 32 at a time to bound memory.
        self.encoder.eval()
        out = [self.encoder(images[i:i + 32].to(self.device)) for i in range(0, len(images), 32)]
        return torch.cat(out).float()

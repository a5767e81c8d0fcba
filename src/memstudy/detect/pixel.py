"""Pearson correlation in pixel space (Akbar et al.)."""

from __future__ import annotations

import torch

from .base import Detector


class PixelDetector(Detector):
    """Pearson correlation in pixel space (Akbar et al.)."""

    name = "pixel"

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return images.reshape(len(images), -1).float()

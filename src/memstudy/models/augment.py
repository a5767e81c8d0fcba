"""Training-time augmentation, batch-wise and seeded.

Each level draws one random affine matrix (and intensity change) per image and lets MONAI's
:class:`~monai.networks.layers.AffineTransform` resample the whole batch in one call, so the
same code is fast on a CPU and on a GPU. Randomness comes from an explicit
``torch.Generator``: a seed fixes the augmentation stream, and a resumed run continues it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from monai.networks.layers import AffineTransform


@dataclass(frozen=True)
class AugmentSpec:
    """Ranges of one augmentation level (angles in degrees, shifts as a fraction of the image)."""

    flip_p: float = 0.0  # probability of a left-right flip (brains are roughly symmetric)
    rotate_deg: float = 0.0  # rotation drawn uniformly in +-rotate_deg
    rotate_p: float = 1.0  # probability that an image is rotated at all
    shift: float = 0.0  # translation drawn uniformly in +-shift (fraction of the field of view)
    scale: float = 0.0  # isotropic zoom drawn uniformly in 1 +- scale
    gamma: float = 0.0  # intensity gamma drawn log-uniformly in exp(+-gamma)
    contrast: float = 0.0  # intensity scale drawn uniformly in 1 +- contrast
    brightness: float = 0.0  # intensity offset drawn uniformly in +-brightness
    noise_std: float = 0.0  # Gaussian noise with std drawn uniformly in [0, noise_std]


LEVELS: dict[str, AugmentSpec] = {
    "none": AugmentSpec(),
    "flip_rotate": AugmentSpec(flip_p=0.5, rotate_deg=10.0, shift=0.05),
    "strong": AugmentSpec(flip_p=0.5, rotate_deg=15.0, shift=0.08, scale=0.1,
                          gamma=0.3, contrast=0.2, brightness=0.1, noise_std=0.03),
}
# Dar et al.'s positive view for the contrastive encoder: rotation within +-5 degrees and/or a
# flip, each with probability 0.5. It defines what the detector treats as "the same image".
CONTRASTIVE_VIEW = AugmentSpec(flip_p=0.5, rotate_deg=5.0, rotate_p=0.5)


class BatchAugment:
    """Apply an :class:`AugmentSpec` to a batch ``(B, 1, H, W)`` of images in [0, 1], or to a
    batch ``(B, 1, D, H, W)`` of volumes: there each volume is rotated about all three axes
    (each angle within +-rotate_deg), shifted along all three and flipped left-right."""

    def __init__(self, spec: AugmentSpec | str, generator: torch.Generator):
        self.spec = LEVELS[spec] if isinstance(spec, str) else spec
        self.generator = generator
        self._warp = AffineTransform(normalized=True, padding_mode="zeros", align_corners=False)

    @property
    def is_identity(self) -> bool:
        return self.spec == AugmentSpec()

    def _uniform(self, n: int, half_width: float) -> torch.Tensor:
        return (torch.rand(n, generator=self.generator) * 2 - 1) * half_width

    def _bernoulli(self, n: int, p: float) -> torch.Tensor:
        return (torch.rand(n, generator=self.generator) < p).float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_identity:
            return x
        theta = self._theta_3d(x.shape[0]) if x.dim() == 5 else self._theta_2d(x.shape[0])
        out = self._warp(x, theta.to(x.device, x.dtype))
        s = self.spec
        if s.gamma or s.contrast or s.brightness or s.noise_std:
            out = self._intensity(out)
        return out.clamp(0, 1)

    def _theta_2d(self, n: int) -> torch.Tensor:
        """(n, 2, 3) affine matrices: rotation, zoom, left-right flip and shift of each image."""
        s = self.spec
        # Random numbers are always drawn on the CPU generator, in a fixed order, so a CPU and a
        # GPU run with the same seed see the same augmentations.
        angle = self._uniform(n, math.radians(s.rotate_deg)) * self._bernoulli(n, s.rotate_p)
        zoom = 1 + self._uniform(n, s.scale)
        flip = 1 - 2 * self._bernoulli(n, s.flip_p)
        shift = torch.stack([self._uniform(n, 2 * s.shift), self._uniform(n, 2 * s.shift)], 1)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        # MONAI's normalized theta orders coordinates like the tensor axes (H, W): the flip
        # negates column 1, the W axis, so it mirrors the patient's left and right (an earlier
        # version negated column 0 and turned heads upside down).
        return torch.stack([torch.stack([cos, -sin * flip, shift[:, 0]], 1),
                            torch.stack([sin, cos * flip, shift[:, 1]], 1)], 1)

    def _theta_3d(self, n: int) -> torch.Tensor:
        """(n, 3, 4) affine matrices: rotations about three axes, zoom, left-right flip, shift."""
        s = self.spec
        rotate = self._bernoulli(n, s.rotate_p)
        angles = [self._uniform(n, math.radians(s.rotate_deg)) * rotate for _ in range(3)]
        zoom = 1 + self._uniform(n, s.scale)
        flip = 1 - 2 * self._bernoulli(n, s.flip_p)
        shift = torch.stack([self._uniform(n, 2 * s.shift) for _ in range(3)], 1)
        # MONAI's normalized theta orders coordinates like the tensor axes (D, H, W): negating
        # column 2 mirrors the W axis, the patient's left-right (brains are roughly symmetric).
        linear = _rotation_3d(*angles) / zoom[:, None, None]
        linear[:, :, 2] *= flip[:, None]
        return torch.cat([linear, shift[:, :, None]], 2)

    def _intensity(self, x: torch.Tensor) -> torch.Tensor:
        s, n = self.spec, x.shape[0]
        shape = (n,) + (1,) * (x.dim() - 1)
        gamma = torch.exp(self._uniform(n, s.gamma)).view(shape).to(x)
        contrast = (1 + self._uniform(n, s.contrast)).view(shape).to(x)
        bright = self._uniform(n, s.brightness).view(shape).to(x)
        std = (torch.rand(n, generator=self.generator) * s.noise_std).view(shape).to(x)
        noise = torch.randn(x.shape, generator=self.generator).to(x)
        return x.clamp_min(0) ** gamma * contrast + bright + std * noise


def _rotation_3d(ax: torch.Tensor, ay: torch.Tensor, az: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) rotations Rz(az) @ Ry(ay) @ Rx(ax) from (N,) angles in radians."""
    one, zero = torch.ones_like(ax), torch.zeros_like(ax)

    def mat(rows):
        return torch.stack([torch.stack(r, 1) for r in rows], 1)

    rx = mat([[one, zero, zero], [zero, ax.cos(), -ax.sin()], [zero, ax.sin(), ax.cos()]])
    ry = mat([[ay.cos(), zero, ay.sin()], [zero, one, zero], [-ay.sin(), zero, ay.cos()]])
    rz = mat([[az.cos(), -az.sin(), zero], [az.sin(), az.cos(), zero], [zero, zero, one]])
    return rz @ ry @ rx

"""The changes a planted copy may undergo, each seeded by an explicit generator.

They are written apart from the trusted detector's positive views (:mod:`memstudy.detect.views`)
on purpose: the benchmark should measure whether a detector generalises to changes, not whether
it recognises its own training code. Where both use one library routine (MONAI's affine
resampling), the ranges and the way the changes are combined differ.

- ``exact``: none;
- ``noise``: Gaussian noise, std 2-5 % of the range;
- ``shift``: 1 or 2 whole pixels up, down, left or right (zero fill);
- ``rotate``: 1-5 degrees either way about the centre;
- ``intensity``: gamma 0.8-1.25, gain 0.85-1.15, offset +-0.05;
- ``elastic``: a mild MONAI ``Rand2DElastic`` warp (about 1 pixel on average at 32 px);
- ``flip``: a left-right mirror image (what a flip augmentation in training produces);
- ``blur``: MONAI ``GaussianSmooth`` with sigma 0.6-1.2 pixels (a smoother generator);
- ``decoded``: the round trip through an autoencoder trained on the benchmark's *training*
  slices, as a latent diffusion model's stage 1 is (decoded copies are smoother);
- ``combined``: several small changes at once: a rotation of 1-3 degrees, a 1-2 pixel shift,
  gamma 0.85-1.18 and noise of 1-3 %.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

CHANGES = ("exact", "noise", "shift", "rotate", "intensity", "elastic", "flip", "blur",
           "decoded", "combined")
PATIENT = "same_patient"  # an unseen slice of a training patient: a patient-level copy
NOVEL = "novel"  # a slice of a never-seen (test-share) patient: genuinely new
KINDS = CHANGES + (PATIENT, NOVEL)  # every kind of query the benchmark scores


def _plain(x) -> torch.Tensor:
    """A MONAI transform's output as a plain float tensor in [0, 1] (no MetaTensor metadata)."""
    from monai.utils import convert_to_tensor

    return convert_to_tensor(x, track_meta=False).float().clamp(0, 1)


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _sign(gen: torch.Generator, n: int) -> torch.Tensor:
    return torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)


def add_noise(x: torch.Tensor, gen: torch.Generator, lo: float = 0.02,
              hi: float = 0.05) -> torch.Tensor:
    """Gaussian noise with a standard deviation of ``lo``-``hi`` of the intensity range."""
    std = _uniform(gen, len(x), lo, hi).view(-1, 1, 1, 1)
    return (x + std * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by 1 or 2 whole pixels up, down, left or right, filling with 0."""
    out = torch.empty_like(x)
    h, w = x.shape[-2:]
    amount = torch.randint(1, 3, (len(x),), generator=gen) * _sign(gen, len(x)).long()
    vertical = torch.rand(len(x), generator=gen) < 0.5
    for i in range(len(x)):
        dy, dx = (int(amount[i]), 0) if vertical[i] else (0, int(amount[i]))
        padded = F.pad(x[i], (2, 2, 2, 2))  # a zero border, so that nothing wraps around
        out[i] = padded[:, 2 - dy:2 - dy + h, 2 - dx:2 - dx + w]
    return out


def rotate(x: torch.Tensor, gen: torch.Generator, lo: float = 1.0,
           hi: float = 5.0) -> torch.Tensor:
    """Rotate each image about its centre by ``lo``-``hi`` degrees either way (bilinear)."""
    from monai.networks.layers import AffineTransform

    angle = torch.deg2rad(_uniform(gen, len(x), lo, hi) * _sign(gen, len(x)))
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros(len(x))
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    warp = AffineTransform(normalized=True, padding_mode="zeros", align_corners=False)
    return warp(x, theta).clamp(0, 1)


def change_intensity(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Another scanner's contrast: gamma in [0.8, 1.25], gain 0.85-1.15, offset +-0.05."""
    n, shape = len(x), (-1, 1, 1, 1)
    gamma = torch.exp(_uniform(gen, n, math.log(0.8), math.log(1.25))).view(shape)
    gain = _uniform(gen, n, 0.85, 1.15).view(shape)
    offset = _uniform(gen, n, -0.05, 0.05).view(shape)
    return (gain * x.clamp_min(0) ** gamma + offset).clamp(0, 1)


def elastic(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A mild elastic warp (MONAI ``Rand2DElastic``): about 1 pixel on average at 32 px.

    Control points every 3/16 of the image, displacements drawn in 0.5-1 pixel per 32 pixels of
    image size (measured at 32 px: mean 0.8, at most ~3 pixels).
    """
    from monai.transforms import Rand2DElastic

    size = x.shape[-1]
    warp = Rand2DElastic(spacing=max(4, round(size * 3 / 16)),
                         magnitude_range=(0.5 * size / 32, 1.0 * size / 32), prob=1.0,
                         padding_mode="zeros")
    warp.set_random_state(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    return _plain(torch.stack([warp(img) for img in x]))


def flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The left-right mirror image (``gen`` unused: a flip has no parameter)."""
    return torch.flip(x, dims=(-1,))


def blur(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Gaussian smoothing (MONAI ``GaussianSmooth``) with sigma 0.6-1.2 pixels per image."""
    from monai.transforms import GaussianSmooth

    sigma = _uniform(gen, len(x), 0.6, 1.2)
    return _plain(torch.stack([GaussianSmooth(float(s))(img) for s, img in zip(sigma, x)]))


def combined(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Several small changes at once: rotate 1-3 degrees, shift 1-2 px, gamma, noise 1-3 %."""
    x = shift(rotate(x, gen, 1.0, 3.0), gen)
    gamma = torch.exp(_uniform(gen, len(x), math.log(0.85), math.log(1.18))).view(-1, 1, 1, 1)
    return add_noise(x.clamp_min(0) ** gamma, gen, 0.01, 0.03)


def decoder_transform(decode: Callable[[torch.Tensor], torch.Tensor]):
    """The ``decoded`` change for a given autoencoder round trip ``decode``."""
    def decoded(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return decode(x).float().clamp(0, 1)
    return decoded


TRANSFORMS = {"exact": lambda x, gen: x.clone(), "noise": add_noise, "shift": shift,
              "rotate": rotate, "intensity": change_intensity, "elastic": elastic, "flip": flip,
              "blur": blur, "combined": combined}  # "decoded" needs an autoencoder: see above

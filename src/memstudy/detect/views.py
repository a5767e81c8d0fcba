"""Positive views of the trusted copy detector: what a copy may change and still be a copy.

A contrastive encoder learns to ignore exactly the changes its positive views make, and nothing
else (Dar et al.'s view, a rotation within +-5 degrees or a flip, taught it to ignore little).
A generator changes more than that: its copies are shifted by a few pixels, rotated, flipped by
the training augmentation, rescaled in intensity, noisier or smoother, slightly warped, and, in
a latent model, *decoded*: passed through an autoencoder, which smooths them. So the view here
draws every one of those changes, each with its own probability, so that a view usually carries
several small changes at once (the combinations generators make).

Each change is also a public function with explicit parameters, so that the tests can check it
on images whose answer is known (a shifted dot, a flipped ramp, a constant image under gamma).

The anchor of each pair is kept clean (Dar et al.): only the positive is changed, so the encoder
maps every changed copy towards the *original*, which is what a training image looks like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from monai.networks.blocks import Warp
from monai.networks.layers import AffineTransform


REFERENCE_SIZE = 32  # the image size at which ViewSpec's lengths are given


@dataclass(frozen=True)
class ViewSpec:
    """Ranges of the positive view; each change is applied to an image with probability ``p_*``.

    Lengths are in pixels *of a 32-pixel image* and grow with the image the view is applied to
    (a 4-pixel shift at 32 px is an 8-pixel shift at 64 px): a generator's errors are a share
    of the anatomy, not a number of pixels. With fixed pixel ranges the 64-px encoder never saw
    the 3-6 pixel warps that a mild elastic change makes at that size, and let 71 % of such
    copies through (benchmark of 2026-11-25). Angles are in degrees.
    """

    shift_px: float = 4.0  # translation drawn uniformly in +-shift_px along each axis
    p_shift: float = 0.8
    rotate_deg: float = 12.0  # rotation drawn uniformly in +-rotate_deg
    p_rotate: float = 0.6
    p_flip_lr: float = 0.5  # left-right flip (the grid's own augmentation flips so)
    p_flip_ud: float = 0.15  # up-down flip: rare in generators, cheap to learn
    gain: float = 0.25  # contrast: intensity scale drawn in 1 +- gain
    offset: float = 0.08  # brightness: offset drawn in +-offset
    gamma: float = 0.4  # gamma drawn log-uniformly in exp(+-gamma) (0.67 .. 1.49)
    p_intensity: float = 0.7
    noise_std: float = 0.07  # Gaussian noise with std drawn uniformly in [0.005, noise_std]
    p_noise: float = 0.5
    blur_sigma: float = 1.3  # Gaussian blur with sigma drawn uniformly in [0.4, blur_sigma] px
    p_blur: float = 0.35
    elastic_px: float = 3.0  # elastic warp whose largest displacement is up to elastic_px
    elastic_grid: int = 7  # control points per side of the warp (more: a more local warp)
    p_elastic: float = 0.7
    p_decode: float = 0.3  # start from an autoencoder round trip of the image (when given).
    # Tried on CPU at 32 px (3 seeds, 2026-12-05) and dropped: decoded views with a quarter of
    # the shift, rotation and warp caught 60 % of decoded copies (38 % now) but 66 % of elastic
    # ones (90 % now), at 8.9 % novel FPR (8.1 %); p_decode 0.5 with 4,000 steps: 49 / 88 / 9.4.


# --------------------------------------------------------------------------------------------
# The changes, batched, with explicit per-image parameters
# --------------------------------------------------------------------------------------------


def affine(x: torch.Tensor, shift_px: torch.Tensor, angle_deg: torch.Tensor,
           flip_lr: torch.Tensor, flip_ud: torch.Tensor) -> torch.Tensor:
    """Flip, rotate about the centre, then translate each image (bilinear, zero fill).

    Parameters
    ----------
    x : (B, 1, H, W) images.
    shift_px : (B, 2) translation (down, right) in pixels; positive moves content down / right.
    angle_deg : (B,) rotation in degrees.
    flip_lr, flip_ud : (B,) booleans.
    """
    h, w = x.shape[-2:]
    a = torch.deg2rad(angle_deg.float())
    f_row, f_col = 1 - 2 * flip_ud.float(), 1 - 2 * flip_lr.float()
    cos, sin = torch.cos(a), torch.sin(a)
    # MONAI's AffineTransform (normalized=True) takes (row, column) coordinates in units of half
    # the image, and maps each *output* pixel to the input pixel it samples: moving content by
    # +d pixels samples from -2d / size. Input = rotation @ flip @ output + translation.
    t_row, t_col = -2 * shift_px[:, 0].float() / h, -2 * shift_px[:, 1].float() / w
    theta = torch.stack([torch.stack([cos * f_row, -sin * f_col, t_row], 1),
                         torch.stack([sin * f_row, cos * f_col, t_col], 1)], 1)
    warp = AffineTransform(normalized=True, padding_mode="zeros", align_corners=False)
    return warp(x.float(), theta.to(x.device))


def intensity(x: torch.Tensor, gain: torch.Tensor, offset: torch.Tensor,
              gamma: torch.Tensor) -> torch.Tensor:
    """Another scanner's contrast: ``gain * x ** gamma + offset`` per image (not clamped)."""
    shape = (-1, 1, 1, 1)
    return gain.view(shape) * x.clamp_min(0) ** gamma.view(shape) + offset.view(shape)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image with its own Gaussian ``sigma`` (pixels); sigma 0 leaves it unchanged.

    MONAI's ``GaussianFilter`` takes one sigma per call; here every image has its own, so the
    batch becomes the channels of one grouped, separable convolution (reflect padding, so
    that a constant image stays constant).
    """
    b, _, h, w = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    s = sigma.float().to(x.device).clamp_min(1e-3).view(-1, 1)
    kernel = torch.exp(-0.5 * (t / s) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)  # (B, K); sigma ~0 gives a unit impulse
    y = F.pad(x.float().reshape(1, b, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel.view(b, 1, 1, -1), groups=b)
    y = F.conv2d(y, kernel.view(b, 1, -1, 1), groups=b)
    return y.reshape(b, 1, h, w)


def add_noise(x: torch.Tensor, std: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Add Gaussian noise with standard deviation ``std`` (one per image)."""
    eps = torch.randn(x.shape, generator=gen).to(x.device)
    return x + std.view(-1, 1, 1, 1).to(x.device) * eps


def elastic(x: torch.Tensor, max_px: torch.Tensor, gen: torch.Generator,
            grid: int = 5) -> torch.Tensor:
    """A smooth random warp whose largest displacement is ``max_px`` pixels (one per image).

    Random displacements on a coarse ``grid x grid`` lattice are upsampled (bicubic) to a dense
    field and scaled so that each image's largest displacement is its ``max_px``; MONAI's
    ``Warp`` then resamples the image (zero fill). The field is smooth, so anatomy bends
    rather than tears.
    """
    b, _, h, w = x.shape
    coarse = torch.randn((b, 2, grid, grid), generator=gen)
    ddf = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
    peak = ddf.flatten(1).abs().amax(1).clamp_min(1e-6).view(-1, 1, 1, 1)
    ddf = ddf / peak * max_px.float().view(-1, 1, 1, 1)
    return Warp(mode="bilinear", padding_mode="zeros")(x.float(), ddf.to(x.device))


# --------------------------------------------------------------------------------------------
# The view
# --------------------------------------------------------------------------------------------


class PositiveView:
    """Draw a changed copy of each image of a batch (the positive of a contrastive pair).

    Parameters
    ----------
    spec : the ranges and probabilities of the changes.
    generator : the seeded source of every random draw (on the CPU, so a GPU run draws the
        same views as a CPU run).

    Calling ``view(x, x_decoded)`` returns the changed batch; ``x_decoded`` (optional) holds the
    autoencoder round trip of each image, which a view starts from with probability
    ``spec.p_decode``. ``last`` holds the parameters drawn for the last batch (zero or False
    where a change was not applied), so a test or a figure can see what each view did.
    """

    def __init__(self, spec: ViewSpec | None = None, generator: torch.Generator | None = None):
        self.spec = spec or ViewSpec()
        self.gen = generator if generator is not None else torch.Generator().manual_seed(0)
        self.last: dict[str, torch.Tensor] = {}

    def _u(self, n: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=self.gen)

    def _p(self, n: int, p: float) -> torch.Tensor:
        return torch.rand(n, generator=self.gen) < p

    def __call__(self, x: torch.Tensor, x_decoded: torch.Tensor | None = None) -> torch.Tensor:
        s, n = self.spec, len(x)
        scale = x.shape[-1] / REFERENCE_SIZE  # lengths are given at 32 px
        # Every draw is made, in a fixed order, whether or not a change is used: the stream of
        # random numbers then does not depend on which changes happened to be picked.
        decoded = self._p(n, s.p_decode) & (x_decoded is not None)
        shift = (scale * self._u(2 * n, -s.shift_px, s.shift_px).view(n, 2)
                 * self._p(n, s.p_shift)[:, None])
        angle = self._u(n, -s.rotate_deg, s.rotate_deg) * self._p(n, s.p_rotate)
        flip_lr, flip_ud = self._p(n, s.p_flip_lr), self._p(n, s.p_flip_ud)
        use_int = self._p(n, s.p_intensity)
        gain = torch.where(use_int, self._u(n, 1 - s.gain, 1 + s.gain), torch.ones(n))
        offset = torch.where(use_int, self._u(n, -s.offset, s.offset), torch.zeros(n))
        gamma = torch.where(use_int, torch.exp(self._u(n, -s.gamma, s.gamma)), torch.ones(n))
        noise = self._u(n, 0.005, s.noise_std) * self._p(n, s.p_noise)
        blur = scale * self._u(n, 0.4, s.blur_sigma) * self._p(n, s.p_blur)
        warp = scale * self._u(n, 0.3, s.elastic_px) * self._p(n, s.p_elastic)
        self.last = dict(decoded=decoded, shift=shift, angle=angle, flip_lr=flip_lr,
                         flip_ud=flip_ud, gain=gain, offset=offset, gamma=gamma,
                         noise_std=noise, blur_sigma=blur, elastic_px=warp)

        out = x.float()
        if decoded.any():
            out = torch.where(decoded.view(-1, 1, 1, 1).to(x.device), x_decoded.float(), out)
        if (warp > 0).any():
            out = elastic(out, warp, self.gen, s.elastic_grid)
        out = affine(out, shift, angle, flip_lr, flip_ud)
        out = intensity(out.clamp(0, 1), gain.to(x.device), offset.to(x.device),
                        gamma.to(x.device))
        if (blur > 0).any():
            out = gaussian_blur(out, blur)
        out = add_noise(out, noise, self.gen)
        return out.clamp(0, 1)


def round_trip(decoder: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
               batch_size: int = 256) -> torch.Tensor:
    """``decoder(x)`` in batches, clamped to [0, 1]: the autoencoder round trip of each image."""
    out = [decoder(x[i:i + batch_size]).float().clamp(0, 1) for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else x.float().clone()

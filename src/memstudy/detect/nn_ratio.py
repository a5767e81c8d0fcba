"""Gu et al.'s nearest-neighbour distance ratio, with its fixed published rule."""

from __future__ import annotations

import math

import torch

from .base import Detector
from .neighbors import nearest_neighbors


def nn_distance_ratio(query: torch.Tensor, ref: torch.Tensor,
                      chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gu et al.'s statistic: distance to the nearest reference over distance to the second.

    Distances are Euclidean in pixel space divided by ``sqrt(C * H * W)`` (a per-pixel root
    mean square difference, comparable across image sizes); the division cancels in the ratio.

    Returns
    -------
    ratio : (Nq,) ``d1 / d2`` in [0, 1]; 0 for an exact copy of a reference that has no twin.
    d1 : (Nq,) normalised distance to the nearest reference.
    index : (Nq,) index of the nearest reference.
    """
    q, r = query.reshape(len(query), -1).float(), ref.reshape(len(ref), -1).float()
    _, idx = nearest_neighbors(q, r, k=2, metric="l2", chunk=chunk)
    # The chunked search expands |q - r|^2 = |q|^2 + |r|^2 - 2 q.r, which leaves a rounding error
    # of ~1e-3 on a distance of 0; recompute the two distances that matter exactly, so that an
    # exact copy has d1 = 0 and a ratio of exactly 0.
    d = (q[:, None, :] - r[idx]).norm(dim=2) / math.sqrt(q.shape[1])
    d, order = d.sort(dim=1)
    idx = idx.gather(1, order)
    # 0 / 0 (a query equal to two identical references) is a copy: define the ratio as 0 there.
    ratio = torch.where(d[:, 1] > 0, d[:, 0] / d[:, 1].clamp_min(1e-12), torch.zeros_like(d[:, 0]))
    return ratio, d[:, 0], idx[:, 0]


class NNRatioDetector(Detector):
    """Nearest-neighbour distance ratio in pixel space (Gu et al., "On memorization in
    diffusion models").

    Gu et al. call a sample memorized when ``d(x, NN1) / d(x, NN2) < 1/3``: its nearest training
    image is much closer than the next one, so it is *that* image and not a blend of the
    distribution. To fit the study's convention "higher = more copy-like, copy when above tau",
    the similarity is ``1 - d1 / d2`` in [0, 1] and the rule is the fixed ``tau = 2/3``
    (``1 - d1/d2 > 2/3`` exactly when ``d1/d2 < 1/3``). An exact copy scores 1; a query as far
    from its nearest reference as from the second scores 0. Because tau is fixed, the
    false-positive floor is *measured* (``fp_floor`` and ``holdout_copy_rate``), not 5 % by
    construction.

    The statistic needs two references, and it judges a *neighbourhood*: two near-identical
    training images (neighbouring slices of one patient) make each other's copies look novel.
    """

    name = "nn_ratio"
    fixed_tau = 2 / 3
    similarity = "1 − d1/d2 (pixel ℓ2)"

    @torch.no_grad()
    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return images.reshape(len(images), -1).float()

    @torch.no_grad()
    def search(self, query: torch.Tensor, ref: torch.Tensor,
               k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        if k != 1:  # the ratio describes a query's neighbourhood, not one query-reference pair
            raise ValueError(f"the nn_ratio detector scores each query once (k=1), got k={k}")
        ratio, _, idx = nn_distance_ratio(query, ref)
        return (1 - ratio)[:, None], idx[:, None]

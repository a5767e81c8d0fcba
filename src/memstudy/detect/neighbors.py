"""Nearest neighbours by chunked matrix product + top-k: the one place similarities are searched.

Every detector reduces to "for each query, its k most similar reference items". Doing that as
one pure function means it is tested once and runs on a CPU or a GPU: the reference set is
kept whole and the queries are processed in chunks, so memory stays at chunk x N_ref.
"""

from __future__ import annotations

import torch


def pearson_rows(x: torch.Tensor) -> torch.Tensor:
    """Flatten, centre and unit-normalise each row, so that a dot product is Pearson's r."""
    x = x.reshape(x.shape[0], -1).float()
    x = x - x.mean(dim=1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def nearest_neighbors(query: torch.Tensor, ref: torch.Tensor, k: int = 1, metric: str = "pearson",
                      chunk: int = 1024, exclude_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest rows of ``ref`` for each row of ``query``.

    Parameters
    ----------
    query, ref : tensors of shape (Nq, ...) and (Nr, ...); trailing dims are flattened.
    k : number of neighbours.
    metric : ``"pearson"`` (similarity, higher is nearer) or ``"l2"`` (Euclidean distance,
        lower is nearer).
    chunk : queries per matrix product; bounds memory to ``chunk * Nr`` floats.
    exclude_self : when ``query`` is ``ref``, skip the trivial match of a row with itself.

    Returns
    -------
    values, indices : (Nq, k) tensors, nearest first (similarities for pearson, distances for l2).
    """
    if metric not in ("pearson", "l2"):
        raise ValueError(f"metric must be 'pearson' or 'l2', got {metric!r}")
    if k > ref.shape[0] - int(exclude_self):
        raise ValueError(f"k={k} neighbours asked from a reference set of {ref.shape[0]} rows")
    if metric == "pearson":
        q_all, r = pearson_rows(query), pearson_rows(ref)
    else:
        q_all, r = query.reshape(len(query), -1).float(), ref.reshape(len(ref), -1).float()
        r_sq = (r * r).sum(1)
    values, indices = [], []
    for start in range(0, q_all.shape[0], chunk):
        q = q_all[start:start + chunk]
        if metric == "pearson":
            score = q @ r.T
        else:  # negative distance, so that top-k picks the nearest in both cases
            d2 = (q * q).sum(1, keepdim=True) + r_sq[None] - 2 * q @ r.T
            score = -d2.clamp_min(0).sqrt()
        if exclude_self:
            rows = torch.arange(q.shape[0], device=q.device)
            score[rows, rows + start] = -float("inf")
        v, i = score.topk(k, dim=1)
        values.append(v if metric == "pearson" else -v)
        indices.append(i)
    return torch.cat(values), torch.cat(indices)

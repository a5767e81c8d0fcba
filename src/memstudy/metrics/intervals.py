"""95 % intervals for the rates of one cell: exact binomial, and bootstrap over patients then slices.

Two kinds of uncertainty sit under a rate measured in one cell:

- **samples**: synthetic samples are drawn independently from the model, so the copy rate
  N_copies / N_gen is a binomial proportion given the model; its exact (Clopper-Pearson)
  interval comes from ``scipy.stats.binomtest``;
- **patients**: training and held-out slices come in patients, and neighbouring slices of one
  patient are alike, so slices are *not* independent. A rate over slices (the memorized rate,
  the null rates) is resampled in two stages: patients with replacement, then slices within
  each drawn patient with replacement (a cluster, or hierarchical, bootstrap). Treating the
  slices as independent would make the interval too narrow by about the number of slices per
  patient.

An *excess* (a rate minus its null) is the difference of two independent bootstraps. The
replicate-level uncertainty ("what if I had trained on other patients") is the grid's business:
:mod:`memstudy.analysis.stats` resamples replicates.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest

CONFIDENCE = 0.95
N_BOOT = 2000  # bootstrap draws: percentile endpoints stable to about a point at 95 %


def binomial_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of the proportion ``k / n``.

    Examples
    --------
    >>> lo, hi = binomial_interval(0, 64)   # no copy among 64 samples
    >>> round(lo, 3), round(hi, 3)
    (0.0, 0.056)
    """
    if n <= 0:
        return float("nan"), float("nan")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence, method="exact")
    return float(ci.low), float(ci.high)


def cluster_counts(groups: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """How often each item is drawn in each of ``n_boot`` two-stage bootstrap resamples.

    Stage 1 draws as many groups (patients) as there are, with replacement; stage 2 draws, in
    each drawn group, as many items (slices) as it has, with replacement.

    Parameters
    ----------
    groups : (N,) group label of each item (a patient id).
    n_boot : number of resamples.
    seed : seeds the resampling.

    Returns
    -------
    np.ndarray
        ``(n_boot, N)`` int counts; a weighted mean with these weights is one bootstrap mean.
    """
    groups = np.asarray(groups)
    labels, inverse = np.unique(groups, return_inverse=True)
    n, n_groups = len(groups), len(labels)
    if n == 0:
        return np.zeros((n_boot, 0), dtype=np.int64)
    sizes = np.bincount(inverse, minlength=n_groups)
    # members[g, j] = index of the j-th item of group g (padded; padding is never drawn)
    members = np.zeros((n_groups, sizes.max()), dtype=np.int64)
    for g in range(n_groups):
        members[g, :sizes[g]] = np.flatnonzero(inverse == g)
    rng = np.random.default_rng(seed)
    picked = rng.integers(0, n_groups, size=(n_boot, n_groups))  # stage 1: patients
    pos = (rng.random((n_boot, n_groups, sizes.max())) * sizes[picked][..., None]).astype(np.int64)
    valid = np.arange(sizes.max()) < sizes[picked][..., None]  # a patient keeps its own size
    items = members[picked[..., None], pos]  # stage 2: slices of each drawn patient
    rows = np.broadcast_to(np.arange(n_boot)[:, None, None], items.shape)
    counts = np.zeros((n_boot, n), dtype=np.int64)
    np.add.at(counts, (rows[valid], items[valid]), 1)
    return counts


def cluster_means(values: np.ndarray, groups: np.ndarray, n_boot: int = N_BOOT,
                  seed: int = 0) -> np.ndarray:
    """Bootstrap distribution (``(n_boot,)``) of the mean of ``values`` over patients then slices."""
    values = np.asarray(values, dtype=np.float64)
    counts = cluster_counts(groups, n_boot, seed)
    return (counts @ values) / np.maximum(counts.sum(1), 1)


def percentile_interval(draws: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The central ``confidence`` interval of bootstrap draws (percentile method)."""
    draws = np.asarray(draws, dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(draws, [alpha, 1 - alpha])
    return float(lo), float(hi)


def rate_with_interval(hits: np.ndarray, groups: np.ndarray | None = None, n_boot: int = N_BOOT,
                       seed: int = 0) -> dict[str, float]:
    """A rate (mean of 0/1 ``hits``) with its 95 % interval and its bootstrap draws.

    Without ``groups`` the items are independent samples: exact binomial interval. With
    ``groups`` (patient ids) it is the two-stage bootstrap.

    Returns
    -------
    dict
        ``rate``, ``lo``, ``hi`` and ``draws`` (the bootstrap means, used for excesses; for the
        binomial case, draws of the rate's sampling distribution).
    """
    hits = np.asarray(hits, dtype=np.float64)
    rng = np.random.default_rng(seed)
    if hits.size == 0:
        return {"rate": float("nan"), "lo": float("nan"), "hi": float("nan"),
                "draws": np.full(n_boot, np.nan)}
    rate = float(hits.mean())
    if groups is None:
        lo, hi = binomial_interval(int(hits.sum()), hits.size)
        draws = rng.binomial(hits.size, rate, n_boot) / hits.size
    else:
        draws = cluster_means(hits, groups, n_boot, seed)
        lo, hi = percentile_interval(draws)
    return {"rate": rate, "lo": lo, "hi": hi, "draws": draws}


def excess_interval(measured: dict, null: dict) -> dict[str, float]:
    """Excess of a rate over its null, with a 95 % interval from the two bootstraps' difference.

    Both arguments are :func:`rate_with_interval` results computed on independent data (the
    synthetic set and the never-seen patients), so their draws may be subtracted pairwise.
    """
    diff = np.asarray(measured["draws"]) - np.asarray(null["draws"])
    lo, hi = percentile_interval(diff)
    return {"excess": measured["rate"] - null["rate"], "lo": lo, "hi": hi}


def auc_with_interval(member_scores: np.ndarray, nonmember_scores: np.ndarray,
                      member_groups: np.ndarray, nonmember_groups: np.ndarray,
                      n_boot: int = N_BOOT, seed: int = 0) -> dict[str, float]:
    """ROC-AUC that a *higher* score means member, with its two-stage bootstrap interval.

    The AUC is the probability that a random member outscores a random non-member (ties count
    one half), so a bootstrap AUC is a weighted mean of the pairwise comparison matrix with
    the two sets' bootstrap counts as weights: no ROC curve is recomputed.
    """
    m = np.asarray(member_scores, dtype=np.float64)
    h = np.asarray(nonmember_scores, dtype=np.float64)
    wins = (m[:, None] > h[None, :]) + 0.5 * (m[:, None] == h[None, :])
    auc = float(wins.mean())
    cm = cluster_counts(member_groups, n_boot, seed).astype(np.float64)
    ch = cluster_counts(nonmember_groups, n_boot, seed + 1).astype(np.float64)
    draws = np.einsum("bi,ij,bj->b", cm, wins, ch) / (cm.sum(1) * ch.sum(1))
    lo, hi = percentile_interval(draws)
    return {"auc": auc, "lo": lo, "hi": hi, "draws": draws}


def low_fpr_point(n_nonmembers: int, min_false_positives: int = 2,
                  candidates: tuple[float, ...] = (0.001, 0.01, 0.1)) -> float:
    """The lowest conventional FPR (LiRA: 0.1 %, 1 %, ...) that ``n_nonmembers`` can measure.

    An FPR of f needs about ``f * n_nonmembers`` false positives to exist at all; with fewer
    than ``min_false_positives`` of them "TPR at f" is TPR at zero false positives, in steps
    of 1/N_members. So the operating point is named by what the sample size allows: with 64
    non-members it is 10 %, with 256 it is 1 %, with 2,048 it is 0.1 %.
    """
    for f in sorted(candidates):
        if f * n_nonmembers >= min_false_positives:
            return f
    return max(candidates)


def tpr_at(member_scores: np.ndarray, nonmember_scores: np.ndarray, fpr: float) -> float:
    """Share of members scoring above the non-members' (1 - fpr) quantile (higher = member)."""
    m = np.asarray(member_scores, dtype=np.float64)
    h = np.asarray(nonmember_scores, dtype=np.float64)
    # at most floor(fpr * N) non-members lie strictly above the threshold
    k = int(np.floor(fpr * h.size))
    threshold = np.sort(h)[::-1][k] if k < h.size else -np.inf
    return float((m > threshold).mean())

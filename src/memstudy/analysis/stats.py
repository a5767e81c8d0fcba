"""Verdicts that noise cannot fake: a trend test across levels, Holm's correction, three outcomes.

A published direction ("more data -> less memorization") is judged on one number per cell —
a rate's excess over its null at the last checkpoint — with the replicates (new patients and
new model randomness) as the unit of variation:

1. **trend test** (:func:`glm_trend_test`): a Gaussian GLM (``statsmodels`` OLS) of the values
   on the level's position (0, 1, 2, ...) in the claim's order, with the replicate as a fixed
   effect (the cells of one replicate share their patients, so the design is paired); the
   slope's t-test, two-sided. A permutation test (:func:`trend_test`, ``scipy.stats.
   permutation_test``) is reported beside it; it makes fewer assumptions but its p-value has a
   floor with few cells (2 levels x 3 replicates: 0.1; 3 x 3: 2/1,680), below which Holm's
   thresholds over dozens of tests sit.
2. **Holm's correction** (``statsmodels.stats.multitest.multipletests``) over every claim and
   every view (detector x rate) tested together.
3. **outcome**: ``holds`` when the corrected test rejects, the slope goes the claim's way *and*
   the 95 % interval of the change (first level -> last level, bootstrap over replicates then
   samples) excludes zero; ``opposite`` likewise the other way; otherwise ``inconclusive``.

:func:`simulate_false_holds` measures the procedure on simulated null grids (binomial samples,
shared replicate effects) and :func:`power` on a given effect; tests/test_stats.py holds the
first at or below 5 %.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import permutation_test
from statsmodels.stats.multitest import multipletests

ALPHA = 0.05
OUTCOMES = ("holds", "opposite", "inconclusive")
N_RESAMPLES = 9999  # random permutations when the exact enumeration would be larger


def _slope(*samples, axis=-1):
    """Least-squares slope of the values on their level index (vectorised over leading axes)."""
    y = np.concatenate(samples, axis=axis)
    x = np.concatenate([np.full(s.shape[axis], i, dtype=float) for i, s in enumerate(samples)])
    x = x - x.mean()
    y = y - y.mean(axis=axis, keepdims=True)
    return (y * x).sum(axis=axis) / (x * x).sum()


def trend_test(values_by_level: list, n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict:
    """Permutation test of a monotone trend across ordered levels.

    Parameters
    ----------
    values_by_level : list of arrays, one per level in the claim's order; each holds one value
        per replicate. Leading axes (e.g. many simulated grids) are tested at once: the last
        axis is the replicate axis.
    n_resamples : random permutations when exact enumeration would need more.
    seed : seeds the random permutations.

    Returns
    -------
    dict
        ``slope`` (per level step), ``p_up`` and ``p_down`` (one-sided p-values for a rising
        and a falling trend) and ``p`` (two-sided, ``min(1, 2 min(p_up, p_down))``); arrays when
        leading axes were given.
    """
    samples = [np.asarray(v, dtype=np.float64) for v in values_by_level]
    if len(samples) < 2 or any(s.shape[-1] == 0 for s in samples):
        raise ValueError("a trend test needs at least two levels with at least one value each")
    res = permutation_test(samples, _slope, permutation_type="independent", vectorized=True,
                           n_resamples=n_resamples, alternative="greater", axis=-1,
                           random_state=np.random.default_rng(seed))
    null, obs = res.null_distribution, res.statistic
    # scipy's convention: exact -> share of all partitions; random -> (hits + 1) / (n + 1).
    # Mirror it for the other tail, with the same tolerance for ties of floating sums.
    exact = null.shape[0] < n_resamples or _n_partitions(samples) <= n_resamples
    gamma = np.abs(1e-14 * obs)
    hits = (null <= obs + gamma).sum(axis=0)
    p_down = hits / null.shape[0] if exact else (hits + 1) / (null.shape[0] + 1)
    p_up = res.pvalue
    p = np.minimum(1.0, 2 * np.minimum(p_up, p_down))
    return {"slope": obs, "p_up": p_up, "p_down": p_down, "p": p}


def glm_trend_test(values_by_level: list, replicates_by_level: list | None = None) -> dict:
    """Trend test by a Gaussian GLM (``statsmodels`` OLS): value ~ level index + replicate.

    The replicate enters as a fixed effect, so what the replicates share (their patients, the
    same draw of the pool) cancels out of the slope: the design is paired, as the cells of one
    replicate are. The slope's t-test has the residual degrees of freedom, so it has no floor
    on its p-value, unlike a permutation test on a handful of cells; its calibration is checked
    by :func:`simulate_false_holds`.

    Returns the same keys as :func:`trend_test` (scalars).
    """
    import statsmodels.api as sm
    from scipy.stats import t as student_t

    y = np.concatenate([np.asarray(v, dtype=np.float64) for v in values_by_level])
    x = np.concatenate([np.full(len(v), i, dtype=float) for i, v in enumerate(values_by_level)])
    design = [np.ones_like(x), x]
    if replicates_by_level is not None:
        reps = np.concatenate([np.asarray(r) for r in replicates_by_level])
        for r in np.unique(reps)[1:]:
            design.append((reps == r).astype(float))
    X = np.column_stack(design)
    nan = {"slope": float("nan"), "p_up": float("nan"), "p_down": float("nan"), "p": float("nan")}
    if len(y) - np.linalg.matrix_rank(X) < 1:
        return nan  # no residual degrees of freedom: nothing to test against
    fit = sm.OLS(y, X).fit()
    slope, se = float(fit.params[1]), float(fit.bse[1])
    if not np.isfinite(se) or se <= 0:
        # all values on one line: a trend without noise is certain only if the slope is not 0
        same = bool(np.isclose(slope, 0.0))
        return {"slope": slope, "p_up": 1.0 if same or slope < 0 else 0.0,
                "p_down": 1.0 if same or slope > 0 else 0.0, "p": 1.0 if same else 0.0}
    tval, df = slope / se, fit.df_resid
    p_up, p_down = float(student_t.sf(tval, df)), float(student_t.cdf(tval, df))
    return {"slope": slope, "p_up": p_up, "p_down": p_down, "p": min(1.0, 2 * min(p_up, p_down))}


def _n_partitions(samples) -> float:
    """Distinct ways to deal the pooled values into groups of the given sizes (multinomial)."""
    from math import factorial

    sizes = [s.shape[-1] for s in samples]
    out = factorial(sum(sizes))
    for n in sizes:
        out //= factorial(n)
    return out


def change_interval(values_by_level: list, sd_by_level: list | None = None, n_boot: int = 2000,
                    seed: int = 0, confidence: float = 0.95) -> dict:
    """Change from the first to the last level (mean over replicates) with a 95 % interval.

    The bootstrap resamples replicates within each level and then, within each drawn cell,
    its sampling noise (a normal draw with the cell's standard error ``sd_by_level``, e.g.
    from its bootstrap interval): "bootstrap over patients, then samples" at the grid level.
    """
    first, last = (np.asarray(values_by_level[i], dtype=np.float64) for i in (0, -1))
    sds = sd_by_level or [np.zeros_like(first), np.zeros_like(last)]
    sd_first, sd_last = (np.nan_to_num(np.asarray(sds[i], dtype=np.float64)) for i in (0, -1))
    rng = np.random.default_rng(seed)

    def boot(v, sd):
        idx = rng.integers(0, v.size, size=(n_boot, v.size))
        return (v[idx] + rng.standard_normal(idx.shape) * sd[idx]).mean(axis=1)

    draws = boot(last, sd_last) - boot(first, sd_first)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(draws, [alpha, 1 - alpha])
    return {"change": float(last.mean() - first.mean()), "lo": float(lo), "hi": float(hi)}


def mean_interval(values, sds=None, n_boot: int = 2000, seed: int = 0,
                  confidence: float = 0.95) -> dict:
    """Mean over replicates with a 95 % interval: replicates resampled, then each cell's
    sampling noise (normal with standard error ``sds``) added, as in :func:`change_interval`."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)] if sds is None else v
    if v.size == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan")}
    sd = np.zeros_like(v) if sds is None else np.nan_to_num(np.asarray(sds, dtype=np.float64))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_boot, v.size))
    draws = (v[idx] + rng.standard_normal(idx.shape) * sd[idx]).mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(draws, [alpha, 1 - alpha])
    return {"mean": float(v.mean()), "lo": float(lo), "hi": float(hi)}


def holm(pvalues, alpha: float = ALPHA) -> np.ndarray:
    """Holm-adjusted p-values (``statsmodels``' ``multipletests``); NaNs are left out and kept."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], alpha=alpha, method="holm")[1]
    return out


def outcome(p_adjusted: float, slope: float, lo: float, hi: float, expect: str,
            alpha: float = ALPHA) -> str:
    """``holds`` / ``opposite`` / ``inconclusive`` from a corrected test and the change's interval."""
    sign = 1 if expect == "up" else -1
    if not np.isfinite(p_adjusted) or p_adjusted >= alpha:
        return "inconclusive"
    if sign * slope > 0 and (sign * lo > 0 and sign * hi > 0):
        return "holds"
    if sign * slope < 0 and (sign * lo < 0 and sign * hi < 0):
        return "opposite"
    return "inconclusive"


# ------------------------------------------------------------------------------------------
# The procedure, measured on simulated grids


def simulate_grids(n_grids: int, n_levels: int, n_replicates: int, effect: float = 0.0,
                   base_rate: float = 0.3, replicate_sd: float = 0.1, cell_sd: float = 0.05,
                   n_samples: int = 64, seed: int = 0) -> np.ndarray:
    """Simulated excess rates, ``(n_grids, n_levels, n_replicates)``.

    Each cell's true rate is ``base_rate`` + a level effect rising linearly by ``effect``
    from the first to the last level + a replicate effect shared by the replicate's cells
    (``replicate_sd``: its patients) + a cell's own deviation (``cell_sd``: its model seed);
    the measured value is a binomial proportion over ``n_samples`` minus an independent null
    proportion (rate 0.05), as a cell's excess is.
    """
    rng = np.random.default_rng(seed)
    levels = np.linspace(0, effect, n_levels)[None, :, None]
    shared = rng.normal(0, replicate_sd, (n_grids, 1, n_replicates))
    own = rng.normal(0, cell_sd, (n_grids, n_levels, n_replicates))
    truth = np.clip(base_rate + levels + shared + own, 0, 1)
    measured = rng.binomial(n_samples, truth) / n_samples
    null = rng.binomial(n_samples, 0.05, truth.shape) / n_samples
    return measured - null


def verdicts_of_grids(grids: np.ndarray, expect: str = "up", n_tests: int = 1,
                      n_resamples: int = 2000, seed: int = 0, method: str = "glm") -> np.ndarray:
    """The procedure's outcome for each simulated grid, as if it were one of ``n_tests`` tests
    in Holm's family (the others taken as null: Holm's first step then is Bonferroni's)."""
    n_grids, n_levels, n_reps = grids.shape
    if method == "permutation":
        test = trend_test([grids[:, i, :] for i in range(n_levels)], n_resamples=n_resamples, seed=seed)
    else:
        reps = [np.arange(n_reps)] * n_levels
        found = [glm_trend_test([grids[g, i, :] for i in range(n_levels)], reps) for g in range(n_grids)]
        test = {k: np.array([f[k] for f in found]) for k in ("slope", "p")}
    # With the other tests at their null, the smallest p of the family is this one in the
    # worst case for false "holds": Holm's threshold for it is alpha / n_tests.
    p_adj = np.minimum(1.0, test["p"] * n_tests)
    sd = np.sqrt(0.3 * 0.7 / 64)  # a cell's sampling error at a 30 % rate over 64 samples
    out = []
    for g in range(n_grids):
        ch = change_interval([grids[g, 0], grids[g, -1]],
                             [np.full(grids.shape[2], sd)] * 2, n_boot=500, seed=seed + g)
        out.append(outcome(p_adj[g], test["slope"][g], ch["lo"], ch["hi"], expect))
    return np.asarray(out)


def simulate_false_holds(n_grids: int = 200, n_levels: int = 3, n_replicates: int = 3,
                         n_tests: int = 1, seed: int = 0, method: str = "glm") -> float:
    """Share of null grids (no effect of the level) on which the procedure says ``holds``."""
    grids = simulate_grids(n_grids, n_levels, n_replicates, effect=0.0, seed=seed)
    return float((verdicts_of_grids(grids, "up", n_tests, seed=seed, method=method) == "holds").mean())


def power(effect: float, n_grids: int = 200, n_levels: int = 3, n_replicates: int = 3,
          n_tests: int = 1, seed: int = 0, method: str = "glm") -> float:
    """Share of simulated grids with a true rise of ``effect`` (first -> last level) judged ``holds``."""
    grids = simulate_grids(n_grids, n_levels, n_replicates, effect=effect, seed=seed)
    return float((verdicts_of_grids(grids, "up", n_tests, seed=seed, method=method) == "holds").mean())

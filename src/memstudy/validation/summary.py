"""The planted-copy benchmark's numbers with their intervals, and detectors compared in pairs.

The queries of every seed are pooled. Slices of one patient are alike, so a rate is not a
binomial proportion over slices: its 95 % interval is the two-stage bootstrap of
:mod:`memstudy.metrics.intervals` (patients with replacement, then slices), with a *patient*
being one (seed, patient id) pair, the patient a copy was made from for a copy. Each seed
calibrates its own tau, so the flags are pooled, not the similarities; an AUC is computed
within each seed (similarity scales differ between encoders trained per seed) and averaged.

Detectors are compared **paired**: every detector is scored on the same queries, so the same
bootstrap resample of patients is applied to both and the difference is taken draw by draw.
That answers "is A better than B on these patients?" with an interval, rather than by the
third decimal of two numbers whose spreads overlap.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..metrics.intervals import N_BOOT, auc_with_interval, percentile_interval, rate_with_interval
from .changes import CHANGES, NOVEL, PATIENT


def _groups(rows: pd.DataFrame) -> np.ndarray:
    """One bootstrap cluster per (seed, patient)."""
    return rows.seed.to_numpy(np.int64) * 10_000_000 + rows.patient_id.to_numpy(np.int64)


def _rate(rows: pd.DataFrame, n_boot: int) -> dict:
    return rate_with_interval(rows.flagged.to_numpy(bool), _groups(rows), n_boot, seed=0)


def _auc(rows: pd.DataFrame, n_boot: int, positive: tuple[str, ...] = CHANGES) -> dict:
    """Copies (of the kinds ``positive``) vs novel: the mean over seeds of each seed's AUC,
    with bootstrap draws."""
    aucs, draws = [], []
    for seed, part in rows.groupby("seed", sort=True):
        pos, neg = part[part.kind.isin(positive)], part[part.kind == NOVEL]
        found = auc_with_interval(pos.sim.to_numpy(), neg.sim.to_numpy(), _groups(pos),
                                  _groups(neg), n_boot, seed=int(seed))
        aucs.append(found["auc"])
        draws.append(found["draws"])
    draws = np.mean(draws, axis=0)
    lo, hi = percentile_interval(draws)
    return {"auc": float(np.mean(aucs)), "lo": lo, "hi": hi, "draws": draws}


def summarize(scores: pd.DataFrame, nominal_fpr: float, reference: str | None = None,
              n_boot: int = N_BOOT) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per-detector table, per-change recall table and paired comparisons, all with intervals.

    Parameters
    ----------
    scores : one row per (detector, seed, query) with ``kind``, ``sim``, ``flagged`` and
        ``patient_id`` (the source patient for copies), as :func:`run_benchmark` writes.
    nominal_fpr : the false-positive rate tau is calibrated to (0.05 for the 95th percentile).
    reference : the detector the others are compared with; default: ``trusted`` when scored,
        else the first detector.
    n_boot : bootstrap resamples.

    Returns
    -------
    table : one row per detector: ``auc``, ``recall``, ``fpr_novel`` (each with ``_lo``/``_hi``),
        ``fpr_excess`` (over the nominal rate), ``recall_<kind>``, ``min_recall_change``.
    recall : long table, one row per (detector, kind): ``rate``, ``lo``, ``hi``, ``n``.
    paired : one row per (detector, metric) against ``reference``: ``diff``, ``lo``, ``hi`` and
        a two-sided bootstrap ``p``.
    """
    detectors = list(dict.fromkeys(scores.detector))  # in the order they were scored
    # the same row order for every detector, so that one bootstrap resample pairs them
    scores = scores.sort_values(["detector", "seed", "query"], kind="stable")
    reference = reference or ("trusted" if "trusted" in detectors else detectors[0])
    rows, recall_rows, draws = [], [], {}
    for det in detectors:
        mine = scores[scores.detector == det]
        copy = mine[mine.kind.isin(CHANGES)]
        auc, rec, fpr = _auc(mine, n_boot), _rate(copy, n_boot), _rate(mine[mine.kind == NOVEL], n_boot)
        draws[det] = {"auc": auc["draws"], "recall": rec["draws"], "fpr_novel": fpr["draws"]}
        row = {"detector": det, "tau": float(mine.groupby("seed").tau.first().mean()),
               "n_seeds": int(mine.seed.nunique())}
        for name, found, value in (("auc", auc, auc["auc"]), ("recall", rec, rec["rate"]),
                                   ("fpr_novel", fpr, fpr["rate"])):
            row.update({name: value, f"{name}_lo": found["lo"], f"{name}_hi": found["hi"]})
        row["fpr_excess"] = row["fpr_novel"] - nominal_fpr
        for kind in CHANGES + (PATIENT, NOVEL):
            part = mine[mine.kind == kind]
            if part.empty:
                continue
            found = _rate(part, n_boot)
            row[f"recall_{kind}"] = found["rate"]
            recall_rows.append({"detector": det, "kind": kind, "rate": found["rate"],
                                "lo": found["lo"], "hi": found["hi"], "n": len(part)})
        row["min_recall_change"] = min(row[f"recall_{k}"] for k in CHANGES if f"recall_{k}" in row)
        rows.append(row)
    paired = []
    for det in detectors:
        if det == reference:
            continue
        for metric in ("auc", "recall", "fpr_novel"):
            diff = draws[reference][metric] - draws[det][metric]
            lo, hi = percentile_interval(diff)
            finite = diff[np.isfinite(diff)]
            p = min(1.0, 2 * min((finite <= 0).mean(), (finite >= 0).mean())) if finite.size else np.nan
            base = {r["detector"]: r[metric] for r in rows}
            paired.append({"reference": reference, "detector": det, "metric": metric,
                           "diff": base[reference] - base[det], "lo": lo, "hi": hi,
                           "p": float(p)})
    return pd.DataFrame(rows), pd.DataFrame(recall_rows), pd.DataFrame(paired)


def auc_by_change(scores: pd.DataFrame, n_boot: int = N_BOOT) -> pd.DataFrame:
    """ROC-AUC of each kind of query against the novel slices, per detector, with intervals.

    Recall at tau asks whether a copy clears one threshold; this asks whether the kind can be
    told from new patients by *any* threshold of the detector. A kind that every detector
    separates poorly is a limit of the rulers (or of how much of the patient the change
    leaves), not of a tau: no recalibration will catch it.

    Returns one row per (detector, kind): ``auc``, ``lo``, ``hi``.
    """
    rows = []
    for det, mine in scores.groupby("detector", sort=False):
        for kind in CHANGES + (PATIENT,):
            if not (mine.kind == kind).any():
                continue
            found = _auc(mine, n_boot, positive=(kind,))
            rows.append({"detector": det, "kind": kind, "auc": found["auc"], "lo": found["lo"],
                         "hi": found["hi"]})
    return pd.DataFrame(rows)

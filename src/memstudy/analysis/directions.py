"""Did the grid reproduce the published directions? Verdicts from a test, from the report alone.

The published claims (Dar et al. 2025; Akbar et al. 2025) are directions: more augmentation,
a smaller model and more data each reduce memorization, longer training increases it, and
(Akbar et al.) slices taken from fewer patients' volumes increase it. A claim is judged on
each **view** — a detector and a rate — from one number per cell: the rate's **excess over
its null** (never-seen patients, same detector and threshold; see
:mod:`memstudy.metrics.evidence`), with the replicates as the unit of variation. The test,
Holm's correction over every claim and view, and the three outcomes are in
:mod:`memstudy.analysis.stats`.

**Primary view** (the rule is stated in the book's methods chapter, fixed before any grid
ran): the copy-rate excess under the first detector of the preset's ``detectors`` list that
passes both controls. Every other view is secondary; the headline sentences come from the
primary verdicts only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..config import RunConfig
from .stats import (ALPHA, change_interval, glm_trend_test, holm, mean_interval, outcome,
                    trend_test)

SIZE_ORDER = ["XS", "S", "M", "L"]
AUG_ORDER = ["none", "flip_rotate", "strong"]
RATES = {"copy_rate": "copies among synthetic slices (N_copies / N_gen)",
         "mem_rate": "memorized training slices (N_mem / N_train, N_gen = N_train)",
         "patients_matched_rate": "training patients matched by a synthetic slice",
         "mia_auc": "membership-inference ROC-AUC (loss attack)"}
METRICS = RATES  # the name the book's older pages use
PRIMARY_RATE = "copy_rate"
POSITIVE_MIN = 0.95  # the positive control must flag at least this share of its samples
CONTROL_MODELS = ("control_positive", "control_negative")


@dataclass(frozen=True)
class Claim:
    axis: str  # a report column ("step" for training length)
    label: str  # how the book names the direction
    expect: str  # "down" or "up": how the rate should move along the ordered levels
    source: str  # who claimed it
    matched_passes: bool = False  # compare levels at equal passes over each training image


CLAIMS = (
    Claim("augmentation", "more augmentation → less memorization", "down", "Dar et al."),
    Claim("unet_preset", "smaller model → less memorization", "up", "Dar et al."),
    Claim("dataset_size", "more training data → less memorization", "down", "Dar et al.; Akbar et al."),
    Claim("dataset_size", "more training data → less memorization, at matched passes", "down",
          "Dar et al.; Akbar et al.", matched_passes=True),
    Claim("slices_per_patient", "more slices per patient (fewer patients) → more memorization",
          "up", "Akbar et al."),
    Claim("step", "longer training → more memorization", "up", "Dar et al."),
)


def ordered_levels(axis: str, levels) -> list:
    """Levels of an axis in the order its claim is stated."""
    levels = list(pd.unique(pd.Series(list(levels))))
    if axis == "augmentation":
        return [x for x in AUG_ORDER if x in levels]
    if axis == "unet_preset":
        return [x for x in SIZE_ORDER if x in levels]
    return sorted(levels)


def axis_slice(df: pd.DataFrame, plan: dict, axis: str, detector: str) -> pd.DataFrame:
    """Complete rows of one detector where every axis except ``axis`` sits at its base level
    (a star design's spoke); all seeds are kept."""
    spec = plan["spec"]
    rows = df[(df["status"] == "complete") & (df["detector"] == detector)]
    if spec["design"] == "star":
        for other, level in spec["base"].items():
            if other != axis and other in rows:
                rows = rows[rows[other] == level]
    return rows


def _claim_rows(df: pd.DataFrame, plan: dict, claim: Claim, detector: str) -> pd.DataFrame:
    """The rows a claim is judged on: one per (level, replicate)."""
    axes = plan["spec"]["axes"]
    if claim.axis != "step" and claim.axis not in axes:
        return df.iloc[:0]
    rows = axis_slice(df, plan, claim.axis, detector)
    if "model" in rows and claim.axis != "model":
        rows = rows[~rows["model"].isin(CONTROL_MODELS)]
    if claim.axis == "step" or rows.empty:
        return rows
    if not claim.matched_passes:
        return rows[rows["step"] == rows.groupby("cell")["step"].transform("max")]
    # Matched passes: each level at the checkpoint whose passes per training image come
    # closest to the most that every level reaches.
    target = rows.groupby(claim.axis)["epochs"].max().min()
    gap = (rows["epochs"] - target).abs()
    return rows[gap == gap.groupby(rows["cell"]).transform("min")].drop_duplicates("cell")


def judge(df: pd.DataFrame, plan: dict, claim: Claim, detector: str, rate: str) -> dict | None:
    """Test one claim under one view; None when the grid cannot (fewer than 2 levels)."""
    value = f"excess_{rate}"
    rows = _claim_rows(df, plan, claim, detector)
    if rows.empty or value not in rows or rows[value].isna().all():
        return None
    rows = rows.dropna(subset=[value])
    levels = ordered_levels(claim.axis, rows[claim.axis])
    if len(levels) < 2:
        return None
    by = [rows[rows[claim.axis] == lv] for lv in levels]
    values = [b[value].to_numpy(float) for b in by]
    # a cell's sampling error, from its 95 % interval of the excess (normal approximation)
    sds = [((b[f"{value}_hi"] - b[f"{value}_lo"]) / 3.92).to_numpy(float) for b in by]
    # The verdict's test: a Gaussian GLM with the replicate as a fixed effect (paired: the
    # cells of one replicate share their patients). The permutation test is shown beside it.
    reps = [b["seed"].to_numpy() for b in by] if "seed" in rows else None
    test = glm_trend_test(values, reps)
    # scipy's permutation test needs two values per level
    p_perm = float(trend_test(values)["p"]) if min(map(len, values)) >= 2 else float("nan")
    ch = change_interval(values, sds)
    fmt = (lambda v: f"{v:.2f}") if rate == "mia_auc" else (lambda v: f"{v:+.0%}")
    raw = (lambda v: f"{v:.2f}") if rate == "mia_auc" else (lambda v: f"{v:.0%}")
    return {"claim": claim.label, "source": claim.source, "axis": claim.axis,
            "expect": claim.expect, "detector": detector, "metric": rate,
            "levels": " → ".join(map(str, levels)),
            "rates": " → ".join(raw(b[rate].mean()) for b in by),
            "nulls": " → ".join(raw(b[f"null_{rate}"].mean()) for b in by),
            "values": " → ".join(fmt(v.mean()) for v in values),
            "n_replicates": "/".join(str(len(v)) for v in values),
            "epochs": " → ".join(f"{b['epochs'].mean():.0f}" for b in by) if "epochs" in rows else "",
            "slope": float(test["slope"]), "p": float(test["p"]), "p_perm": p_perm,
            "change": ch["change"],
            "change_lo": ch["lo"], "change_hi": ch["hi"]}


def control_table(df: pd.DataFrame) -> pd.DataFrame:
    """The controls' copy rates with nulls and intervals, one row per control cell and detector,
    and whether each passes: positive >= 95 % flagged; negative's excess interval includes 0."""
    if "model" not in df:
        return pd.DataFrame()
    rows = df[(df["status"] == "complete") & df["model"].isin(CONTROL_MODELS)]
    if rows.empty or "excess_copy_rate" not in rows:
        return pd.DataFrame()
    keep = ["model", "detector", "seed", "cell", "copy_rate", "copy_rate_lo", "copy_rate_hi",
            "null_copy_rate", "excess_copy_rate", "excess_copy_rate_lo", "excess_copy_rate_hi",
            "mem_rate", "null_mem_rate", "tau"]
    out = rows[[c for c in keep if c in rows]].copy()
    positive = out["model"] == "control_positive"
    out["passes"] = np.where(positive, out["copy_rate"] >= POSITIVE_MIN,
                             (out["excess_copy_rate_lo"] <= 0) & (out["excess_copy_rate_hi"] >= 0))
    return out.sort_values(["model", "detector", "seed"]).reset_index(drop=True)


def controls_passed(df: pd.DataFrame) -> dict[str, bool | None]:
    """Per detector: True if every control cell passes, False if one fails, None if none ran.

    Each negative-control replicate is tested at 95 %, so with many replicates one may miss
    by chance; the pooled excess over replicates must then include zero as well (the book
    shows both)."""
    table = control_table(df)
    dets = sorted(df.loc[df["status"] == "complete", "detector"].dropna().unique())
    if table.empty:
        return {d: None for d in dets}
    out = {}
    for det in dets:
        t = table[table["detector"] == det]
        pos, neg = t[t["model"] == "control_positive"], t[t["model"] == "control_negative"]
        if pos.empty or neg.empty:
            out[det] = None
            continue
        pooled = change_interval([np.zeros(1), neg["excess_copy_rate"].to_numpy(float)],
                                 [np.zeros(1), ((neg["excess_copy_rate_hi"] - neg["excess_copy_rate_lo"]) / 3.92).to_numpy(float)])
        out[det] = bool(pos["passes"].all() and pooled["lo"] <= 0 <= pooled["hi"])
    return out


def primary_detector(df: pd.DataFrame, plan: dict) -> str | None:
    """The primary view's detector: the first of the preset's ``detectors`` passing both controls.

    Without control cells, the first listed detector (the book says the controls are missing);
    when every detector fails a control, None: no claim gets a primary verdict.
    """
    listed = plan["spec"].get("fixed", {}).get("detectors", RunConfig().detectors)
    listed = [d for d in (listed.split(",") if isinstance(listed, str) else listed)]
    passed = controls_passed(df)
    if all(v is None for v in passed.values()):
        return listed[0]
    return next((d for d in listed if passed.get(d)), None)


def verdicts(df: pd.DataFrame, plan: dict, detectors=None, alpha: float = ALPHA) -> pd.DataFrame:
    """Every claim under every view, Holm-corrected together: the long table the book reads.

    Columns: ``claim, source, axis, expect, detector, metric, levels, rates, nulls, values``
    (mean excess per level), ``n_replicates, epochs, slope, p`` (GLM), ``p_perm``
    (permutation, shown only), ``p_holm, change, change_lo,
    change_hi, verdict`` (holds / opposite / inconclusive) and ``primary`` (the view chosen by
    the methods chapter's rule).
    """
    done = df[df["status"] == "complete"]
    if detectors is None:
        detectors = sorted(done["detector"].dropna().unique())
    parts = []
    for claim in CLAIMS:
        for det in detectors:
            for rate in RATES:
                if rate == "mia_auc" and det != detectors[0]:
                    continue  # the attack does not depend on the detector: test it once
                found = judge(done, plan, claim, det, rate)
                if found:
                    parts.append(found)
    table = pd.DataFrame(parts)
    if table.empty:
        return table
    table["p_holm"] = holm(table["p"], alpha)
    table["verdict"] = [outcome(r.p_holm, r.slope, r.change_lo, r.change_hi, r.expect, alpha)
                        for r in table.itertuples()]
    primary = primary_detector(done, plan)
    table["primary"] = (table["detector"] == primary) & (table["metric"] == PRIMARY_RATE)
    return table


def headline(table: pd.DataFrame, preset: str) -> str:
    """The book's and README's headline, generated from the primary verdicts."""
    if table.empty or not table["primary"].any():
        return (f"The {preset} grid gives no primary verdict: no detector passed both controls, "
                "or no claim had two levels to compare.")
    prim = table[table["primary"]]
    det = prim["detector"].iloc[0]
    counts = prim["verdict"].value_counts()
    held = prim.loc[prim["verdict"] == "holds", "claim"].tolist()
    opp = prim.loc[prim["verdict"] == "opposite", "claim"].tolist()
    text = (f"On the {preset} grid (primary view: copy-rate excess over never-seen patients, "
            f"{det} detector; Holm-corrected over {len(table)} tests), {counts.get('holds', 0)} of "
            f"{len(prim)} published directions hold, {counts.get('opposite', 0)} go the opposite "
            f"way and {counts.get('inconclusive', 0)} are inconclusive.")
    if held:
        text += " Holding: " + "; ".join(held) + "."
    if opp:
        text += " Opposite: " + "; ".join(opp) + "."
    return text


def level_table(df: pd.DataFrame, plan: dict, axis: str, detector: str,
                rates=("copy_rate", "mem_rate", "patients_matched_rate")) -> pd.DataFrame:
    """Each level of a star spoke at its cells' last checkpoint: every rate's mean over
    replicates beside its null and its excess with a 95 % interval (replicates, then samples)."""
    claim = Claim(axis, axis, "up", "")
    rows = _claim_rows(df[df["status"] == "complete"], plan, claim, detector)
    if axis == "model":  # the controls are this axis's levels: keep them
        rows = axis_slice(df, plan, axis, detector)
        rows = rows[rows["step"] == rows.groupby("cell")["step"].transform("max")]
    out = []
    for level in ordered_levels(axis, rows[axis]) if not rows.empty else []:
        at = rows[rows[axis] == level]
        entry = {axis: level, "replicates": len(at)}
        if "epochs" in at:
            entry["passes"] = at["epochs"].mean()
        for rate in rates:
            if f"excess_{rate}" not in at or at[f"excess_{rate}"].isna().all():
                continue
            ex = mean_interval(at[f"excess_{rate}"], (at[f"excess_{rate}_hi"] - at[f"excess_{rate}_lo"]) / 3.92)
            entry |= {rate: at[rate].mean(), f"null_{rate}": at[f"null_{rate}"].mean(),
                      f"excess_{rate}": ex["mean"], f"excess_{rate}_lo": ex["lo"],
                      f"excess_{rate}_hi": ex["hi"]}
        out.append(entry)
    return pd.DataFrame(out)


def shuffle_check(df: pd.DataFrame, plan: dict, claim: Claim, detector: str, rate: str,
                  n_tests: int, n_shuffles: int = 200, seed: int = 0) -> float | None:
    """Share of within-replicate shuffles of the level labels that the procedure calls ``holds``.

    The grid's own cells with their levels shuffled inside each replicate have no level effect
    but keep everything else (their noise, their replicate effects, their checkpoints' serial
    correlation), so this is the procedure's false "holds" rate on these very data. The
    corrected threshold is Holm's first step in a family of ``n_tests``. None if the claim
    cannot be tested here.
    """
    value = f"excess_{rate}"
    rows = _claim_rows(df[df["status"] == "complete"], plan, claim, detector)
    if rows.empty or value not in rows or "seed" not in rows:
        return None
    rows = rows.dropna(subset=[value])
    levels = ordered_levels(claim.axis, rows[claim.axis])
    if len(levels) < 2:
        return None
    rng = np.random.default_rng(seed)
    labels = rows[claim.axis].to_numpy()
    groups = [np.flatnonzero(rows["seed"].to_numpy() == s) for s in rows["seed"].unique()]
    y, reps = rows[value].to_numpy(float), rows["seed"].to_numpy()
    sd = ((rows[f"{value}_hi"] - rows[f"{value}_lo"]) / 3.92).to_numpy(float)
    holds = 0
    for i in range(n_shuffles):
        shuffled = labels.copy()
        for g in groups:
            shuffled[g] = rng.permutation(labels[g])
        masks = [shuffled == lv for lv in levels]
        test = glm_trend_test([y[m] for m in masks], [reps[m] for m in masks])
        ch = change_interval([y[m] for m in masks], [sd[m] for m in masks], n_boot=500, seed=seed + i)
        p_adj = min(1.0, test["p"] * n_tests) if np.isfinite(test["p"]) else np.nan
        holds += outcome(p_adj, test["slope"], ch["lo"], ch["hi"], claim.expect) == "holds"
    return holds / n_shuffles

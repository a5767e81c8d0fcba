"""The reference run beside the reader's run, and beside the published claims.

Everything here reads verdicts made by :func:`memstudy.analysis.directions.verdicts` (one
procedure, one Holm family per grid) and never judges a direction a second way:

- :func:`replicate_points`: when the reader reran the reference's own preset, each of their
  replicates at each grid point of a claim, against the interval in which a *new* reference
  replicate would fall (95 % prediction interval from the reference's replicates:
  mean ± t(0.975, n-1) · sd · sqrt(1 + 1/n)). A confidence interval of the mean would be the
  wrong ruler for one replicate: it shrinks with more replicates, a replicate's spread does not.
- :func:`side_by_side`: when the reader ran another preset (the README's quick run: other image
  size, budgets, replicates), the two grids' primary verdicts per claim. Rates do not compare
  across sizes and budgets; directions do.
- :func:`claim_lines` and :func:`changes_sentence`: the introduction's generated sentences: per published
  claim, whether the reference agrees, disagrees or cannot tell, with the change and its
  interval, and a fixed sentence on why a CPU-scale study on a generated cohort may differ.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

from .directions import (CLAIMS, CONTROL_MODELS, _claim_rows, level_table,
                         ordered_levels)

VALUE = "excess_copy_rate"  # the primary view's number per cell (see directions)

# Why a CPU-scale study on a generated cohort may differ from the papers, per claim axis.
# Fixed text by design: every number beside it is generated.
WHY = {
    "augmentation": "the papers' augmentations ran over hundreds of thousands of steps on real "
                    "scans; here a few thousand passes over a few phantom slices may be too short "
                    "for augmentation to matter, or long enough that every level copies",
    "unet_preset": "model sizes here span small latent UNets on a CPU budget; a larger model "
                   "learns more slowly per step, so at a fixed step budget it can memorize less, "
                   "the opposite of capacity at convergence",
    "dataset_size": "at a fixed step budget a larger set is seen fewer times per image (the "
                    "matched-passes row separates the two); the papers' sets had hundreds of "
                    "patients, ours tens",
    "slices_per_patient": "neighbouring slices of one generated patient are more alike than "
                          "slices of real volumes may be, and our slice spacing is fixed by "
                          "the preset",
    "step": "the papers trained for hundreds of thousands of steps; our last checkpoint is a "
            "few thousand passes, where the training loss has mostly stopped falling",
}
SAY = {"holds": "agrees", "opposite": "disagrees", "inconclusive": "cannot tell"}


def _p(v: float) -> str:
    """``= 0.011`` or ``< 0.001``: a p-value as a reader should see it (never "= 0.000")."""
    return "< 0.001" if v < 0.001 else f"= {v:.3f}"


def _pct(v: float) -> str:
    return f"{v:+.0%}"


def change_text(row) -> str:
    """``+20 % [+5 %, +35 %]``: a verdict row's change (first level → last) with its interval."""
    return f"{_pct(row.change)} [{_pct(row.change_lo)}, {_pct(row.change_hi)}]"


def primary_claims(long: pd.DataFrame) -> pd.DataFrame:
    """The primary view's verdicts, one row per claim (empty table when there is none)."""
    if long.empty or "primary" not in long or not long["primary"].any():
        return pd.DataFrame(columns=["claim", "source", "axis", "levels", "verdict", "change",
                                     "change_lo", "change_hi", "epochs", "n_replicates"])
    return long[long["primary"]].reset_index(drop=True)


def same_preset(ref_plan: dict, your_plan: dict) -> bool:
    """Did the reader rerun the reference's own preset (same grid name and fixed settings)?"""
    ref, yours = ref_plan.get("spec", {}), your_plan.get("spec", {})
    return (ref_plan.get("name") == your_plan.get("name")
            and ref.get("fixed", {}).get("image_size") == yours.get("fixed", {}).get("image_size"))


def prediction_interval(values) -> tuple[float, float]:
    """Where a new replicate falls with 95 % probability, from replicates assumed normal;
    (nan, nan) with fewer than two."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return float("nan"), float("nan")
    half = student_t.ppf(0.975, len(v) - 1) * v.std(ddof=1) * np.sqrt(1 + 1 / len(v))
    return float(v.mean() - half), float(v.mean() + half)


def replicate_points(ref_df, ref_plan, your_df, your_plan, detector: str) -> pd.DataFrame:
    """Per claim and level (the verdict table's grid points): the reference's replicates'
    prediction interval of the primary value and each of the reader's replicates beside it.

    Columns: ``claim, axis, level, ref_n, ref_mean, ref_lo, ref_hi, seed, yours, inside``.
    """
    out = []
    for claim in CLAIMS:
        if claim.matched_passes:  # the same cells as the plain data claim, other checkpoints
            continue
        ref = _claim_rows(ref_df[ref_df["status"] == "complete"], ref_plan, claim, detector)
        mine = _claim_rows(your_df[your_df["status"] == "complete"], your_plan, claim, detector)
        if ref.empty or mine.empty or VALUE not in ref or VALUE not in mine:
            continue
        levels = ordered_levels(claim.axis, ref[claim.axis])
        if len(levels) < 2:  # no verdict on this claim, so no grid point to show
            continue
        for level in levels:
            at = ref[ref[claim.axis] == level]
            lo, hi = prediction_interval(at[VALUE])
            for r in mine[mine[claim.axis] == level].itertuples():
                value = getattr(r, VALUE)
                out.append({"claim": claim.label, "axis": claim.axis, "level": level,
                            "ref_n": len(at), "ref_mean": float(at[VALUE].mean()),
                            "ref_lo": lo, "ref_hi": hi, "seed": getattr(r, "seed", None),
                            "yours": float(value),
                            "inside": bool(lo <= value <= hi) if np.isfinite(lo) else None})
    return pd.DataFrame(out)


def side_by_side(ref_long: pd.DataFrame, your_long: pd.DataFrame) -> pd.DataFrame:
    """Each claim's primary verdict on both grids. Columns: ``claim``; ``reference`` and
    ``your run`` (verdict, change [95 % CI], levels, as one cell of text); ``reference verdict``,
    ``your verdict`` and ``same verdict`` (yes / no / — when one grid could not test it)."""
    ref, mine = primary_claims(ref_long), primary_claims(your_long)
    rows = []
    for claim in dict.fromkeys(list(ref["claim"]) + list(mine["claim"])):
        entry = {"claim": claim}
        for name, key, table in (("reference", "reference verdict", ref),
                                 ("your run", "your verdict", mine)):
            hit = table[table["claim"] == claim]
            if hit.empty:
                entry |= {name: "not tested", key: None}
            else:
                r = hit.iloc[0]
                entry |= {name: f"{r.verdict}: {change_text(r)} along {r.levels}", key: r.verdict}
        both = entry["reference verdict"], entry["your verdict"]
        entry["same verdict"] = "—" if None in both else "yes" if both[0] == both[1] else "no"
        rows.append(entry)
    return pd.DataFrame(rows, columns=["claim", "reference", "your run", "reference verdict",
                                       "your verdict", "same verdict"])


def changes_sentence(long: pd.DataFrame) -> str:
    """The called claims' changes with their intervals or, when none was called, the largest
    change and its interval; empty without primary verdicts."""
    prim = primary_claims(long)
    if prim.empty:
        return ""
    called = prim[prim["verdict"] != "inconclusive"]
    if len(called):
        return ("Changes, first level → last, in excess copy rate [95 % CI]: " + "; ".join(
            f"{r.claim}, {change_text(r)}" for r in called.itertuples()) + ".")
    r = prim.loc[prim["change"].abs().idxmax()]
    return (f"The largest change, {r.claim}, is {change_text(r)} in excess copy rate: not enough "
            "to call after the correction for every claim tested.")


def claim_lines(long: pd.DataFrame, df: pd.DataFrame, plan: dict, detector: str | None) -> list[str]:
    """One Markdown bullet per published claim: agrees / disagrees / cannot tell, the change
    with its interval, and why a CPU-scale study may differ. Claims the grid could not test
    (an axis it does not vary) say so."""
    prim = primary_claims(long)
    tested = set(long["claim"]) if "claim" in long else set()
    lines = []
    for claim in CLAIMS:
        hit = prim[prim["claim"] == claim.label]
        if hit.empty:
            why = ("no detector passed both controls, so no view is primary (the grid chapter "
                   "shows the secondary views)" if claim.label in tested else
                   f"this grid has no two levels of `{claim.axis}` to compare")
            lines.append(f"- **{claim.label}** ({claim.source}): memstudy **cannot tell** — {why}.")
            continue
        r = hit.iloc[0]
        say = SAY[r.verdict]
        if r.verdict == "inconclusive" and (r.change_lo > 0 or r.change_hi < 0):
            say += ("** (the change's interval excludes zero, but the trend test does not reject "
                    "after Holm's correction)")
        else:
            say += "**"
        passes = f", {r.epochs} passes over each training slice" if r.epochs else ""
        lines.append(f"- **{claim.label}** ({claim.source}): memstudy **{say} — "
                     f"the excess copy rate changes {change_text(r)} along {r.levels} (copy rate "
                     f"{r.rates}, null {r.nulls}; {r.n_replicates} replicates{passes}; "
                     f"Holm-corrected p {_p(r.p_holm)}). Why it may differ: {WHY.get(claim.axis, '')}.")
    lines.append(_families_line(df, plan, detector))
    return lines


def _families_line(df, plan: dict, detector: str | None) -> str:
    """Akbar et al.'s and Dar et al.'s family comparison, described (it is not one of the
    tested directions): the LDM's and the GAN's excess copy rates with their intervals."""
    claim = "diffusion memorizes more than a GAN"
    source = "Akbar et al.; Dar et al."
    levels = plan.get("spec", {}).get("axes", {}).get("model", [])
    if detector is None or not {"ldm", "gan"} <= set(levels):
        return (f"- **{claim}** ({source}): memstudy **cannot tell** — this grid does not train both an LDM "
                "and a GAN at its base settings.")
    t = level_table(df, plan, "model", detector)
    t = t[~t["model"].isin(CONTROL_MODELS)].set_index("model")
    if not {"ldm", "gan"} <= set(t.index) or VALUE not in t:
        return f"- **{claim}** ({source}): memstudy **cannot tell** — no complete LDM and GAN cells."
    ldm, gan = t.loc["ldm"], t.loc["gan"]

    def ci(r):
        return f"{_pct(r[VALUE])} [{_pct(r[VALUE + '_lo'])}, {_pct(r[VALUE + '_hi'])}]"

    apart = ldm[VALUE + "_lo"] > gan[VALUE + "_hi"] or gan[VALUE + "_lo"] > ldm[VALUE + "_hi"]
    say = ("the intervals do not overlap" if apart else "the intervals overlap")
    return (f"- **{claim}** ({source}): not one of the tested directions, so described, not "
            f"judged — excess copy rate LDM {ci(ldm)} vs GAN {ci(gan)} ({int(ldm.replicates)} / "
            f"{int(gan.replicates)} replicates, `{detector}` detector, last checkpoint): {say}. Why "
            "it may differ: the papers' GANs and diffusion models were trained to convergence on "
            "real scans; here both stop at the same small CPU step budget, where a GAN may not "
            "have learned the images well enough to copy them.")


__all__ = ["WHY", "change_text", "changes_sentence", "claim_lines", "prediction_interval",
           "primary_claims", "replicate_points", "same_preset", "side_by_side"]

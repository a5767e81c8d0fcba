"""Did the grid reproduce the published directions? Judged from the report table alone.

The published claims (Dar et al. 2025; Akbar et al. 2025) are directions: more augmentation,
a smaller model and more data each reduce memorization, longer training increases it. For
each axis this module reads the rates in the claim's order and names what the data show, so
the book's sentences follow the numbers instead of being written in advance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

SIZE_ORDER = ["XS", "S", "M", "L"]
AUG_ORDER = ["none", "flip_rotate", "strong"]


@dataclass(frozen=True)
class Claim:
    axis: str  # a report column ("step" for training length)
    label: str  # how the book names the direction
    expect: str  # "down" or "up": how the rate should move along ``order``
    source: str  # who claimed it


CLAIMS = (
    Claim("augmentation", "more augmentation → less memorization", "down", "Dar et al."),
    Claim("unet_preset", "smaller model → less memorization", "up", "Dar et al."),
    Claim("dataset_size", "more training data → less memorization", "down", "Dar et al.; Akbar et al."),
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


def verdict(values: list[float], expect: str, tol: float = 1e-9) -> str:
    """Name the trend of ``values`` along the claim's order.

    ``holds``: never against the claim and moves its way overall; ``flat``: no change;
    ``opposite``: never with the claim and moves against it; ``mixed``: both ways.
    """
    diffs = np.diff(np.asarray(values, dtype=float))
    sign = 1 if expect == "up" else -1
    with_claim, against = (sign * diffs > tol).any(), (sign * diffs < -tol).any()
    if not with_claim and not against:
        return "flat"
    if with_claim and not against:
        return "holds"
    if against and not with_claim:
        return "opposite"
    return "mixed"


def axis_slice(df: pd.DataFrame, plan: dict, axis: str, detector: str) -> pd.DataFrame:
    """Complete rows of one detector where every axis except ``axis`` sits at its base level
    (a star design's spoke), averaged over seeds."""
    spec = plan["spec"]
    rows = df[(df["status"] == "complete") & (df["detector"] == detector)]
    if spec["design"] == "star":
        for other, level in spec["base"].items():
            if other != axis:
                rows = rows[rows[other] == level]
    return rows


def direction_table(df: pd.DataFrame, plan: dict, detector: str = "contrastive",
                    metric: str = "copy_rate") -> pd.DataFrame:
    """One row per claim: the rates in the claim's order, the verdict, and the change."""
    out = []
    for claim in CLAIMS:
        if claim.axis != "step" and claim.axis not in plan["spec"]["axes"]:
            continue
        if claim.axis == "step":
            rows = axis_slice(df, plan, "step", detector)
        else:
            rows = axis_slice(df, plan, claim.axis, detector)
            rows = rows[rows["step"] == rows["step"].max()]
        means = rows.groupby(claim.axis)[metric].mean()
        levels = ordered_levels(claim.axis, means.index)
        values = [float(means[lv]) for lv in levels]
        out.append({"claim": claim.label, "source": claim.source, "axis": claim.axis,
                    "levels": " → ".join(map(str, levels)),
                    "values": " → ".join(f"{v:.0%}" for v in values),
                    "verdict": verdict(values, claim.expect) if len(values) > 1 else "n/a",
                    "change": values[-1] - values[0] if values else np.nan})
    return pd.DataFrame(out)


METRICS = {"mem_rate": "memorized training slices (N_mem / N_train)",
           "copy_rate": "copies among synthetic slices (N_copies / N_gen)"}


def verdicts(df: pd.DataFrame, plan: dict, detectors=("pixel", "contrastive")) -> pd.DataFrame:
    """Every claim under every (detector, metric): the long table the book's pages pivot."""
    parts = []
    for det in detectors:
        for metric in METRICS:
            t = direction_table(df, plan, detector=det, metric=metric)
            parts.append(t.assign(detector=det, metric=metric))
    return pd.concat(parts, ignore_index=True)

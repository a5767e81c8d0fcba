"""Figures that put the reader's run beside the reference run (tables from
:mod:`memstudy.analysis.compare`)."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd

from .figures import _plt, stamp


def replicates_beside(points: pd.DataFrame, source: str):
    """One panel per claim: per level, the reference's 95 % prediction interval for a new
    replicate (grey bar, mean as a tick) and each of the reader's replicates (green inside,
    red outside). ``points``: :func:`~memstudy.analysis.compare.replicate_points`."""
    plt, _ = _plt()
    claims = list(dict.fromkeys(points["claim"]))
    ncols = min(len(claims), 3)  # at most three panels a row: readable at the page's width
    nrows = -(-len(claims) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.9 * nrows), dpi=110,
                             sharey=True, squeeze=False)
    for ax in axes.flat[len(claims):]:
        ax.set_visible(False)
    for ax, claim in zip(axes.flat, claims):
        at = points[points["claim"] == claim]
        levels = list(dict.fromkeys(at["level"]))
        for x, level in enumerate(levels):
            row = at[at["level"] == level]
            lo, hi, mean = row[["ref_lo", "ref_hi", "ref_mean"]].iloc[0].clip(-1, 1)
            ax.plot([x, x], [lo, hi], color="0.7", lw=6, solid_capstyle="butt")
            ax.plot([x - 0.15, x + 0.15], [mean, mean], color="0.3", lw=1.5)
            colors = np.where(row["inside"].fillna(True), "C2", "C3")
            ax.scatter(np.full(len(row), x) + np.linspace(-0.08, 0.08, len(row)), row["yours"],
                       c=colors, s=22, zorder=3, edgecolor="k", linewidth=0.4)
        ax.axhline(0, color="0.5", lw=0.6, ls=":")
        ax.set_xticks(range(len(levels)), [str(v) for v in levels], fontsize=8)
        ax.set_title(textwrap.fill(claim, 32), fontsize=8)
        ax.set_xlabel(at["axis"].iloc[0], fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("excess copy rate", fontsize=8)
    fig.tight_layout()
    stamp(fig, source)
    return fig


def changes_beside(ref: pd.DataFrame, mine: pd.DataFrame, source: str):
    """Each claim's change (first level → last, excess copy rate) with its 95 % interval, on
    the reference and on the reader's run: directions compare, rates need not.
    ``ref`` / ``mine``: :func:`~memstudy.analysis.compare.primary_claims` tables."""
    plt, _ = _plt()
    claims = list(dict.fromkeys(list(ref["claim"]) + list(mine["claim"])))
    fig, ax = plt.subplots(figsize=(6.5, 0.6 * len(claims) + 1.2), dpi=110)
    y = np.arange(len(claims))[::-1]
    for table, color, dy, name in ((ref, "0.25", 0.13, "reference"), (mine, "C1", -0.13, "your run")):
        t = table.set_index("claim").reindex(claims)
        ok = t["change"].notna().to_numpy()
        mid, lo, hi = (t[c].to_numpy(float)[ok] for c in ("change", "change_lo", "change_hi"))
        ax.errorbar(mid, y[ok] + dy, xerr=[mid - lo, hi - mid], fmt="o", color=color, ms=4,
                    capsize=2, label=name)
    ax.axvline(0, color="0.5", lw=0.8, ls=":")
    ax.set_yticks(y, [textwrap.fill(c, 30) for c in claims], fontsize=8)
    ax.set_xlabel("change first level → last, excess copy rate (95 % interval)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    stamp(fig, source)
    return fig

"""Figures of the evidence: rates beside their nulls with intervals, and the per-patient audit."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .figures import _plt, stamp


def rates_with_nulls(table: pd.DataFrame, label: str, rate: str, source: str):
    """One row per entry of ``table``: the rate (dot, 95 % interval) and its null (grey).

    ``table`` needs ``rate, rate_lo, rate_hi, null_rate, null_rate_lo, null_rate_hi`` columns
    named after ``rate`` (e.g. ``copy_rate``, ``null_copy_rate_lo``) and a ``label`` column.
    """
    plt, _ = _plt()
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(table) + 1.0), dpi=110)
    y = np.arange(len(table))[::-1]
    for prefix, color, dy, name in (("null_", "0.6", -0.15, "null (never-seen patients)"),
                                    ("", "C3", 0.15, "measured")):
        mid = table[f"{prefix}{rate}"].to_numpy(float)
        lo, hi = table[f"{prefix}{rate}_lo"].to_numpy(float), table[f"{prefix}{rate}_hi"].to_numpy(float)
        ax.errorbar(mid, y + dy, xerr=[mid - lo, hi - mid], fmt="o", color=color, ms=4,
                    capsize=2, label=name)
    ax.set_yticks(y, table[label].astype(str))
    ax.set_xlabel(f"{rate} (95 % interval)")
    ax.set_xlim(-0.03, 1.03)
    ax.legend(fontsize=7, loc="lower right")
    stamp(fig, source)
    fig.tight_layout()
    return fig


def audit_histogram(audit: pd.DataFrame, source: str):
    """Histograms of the per-patient audit: worst copy margin (and membership score)."""
    plt, _ = _plt()
    panels = [("copy_margin", "worst slice's similarity − τ (per training patient)")]
    if "membership_score" in audit:
        panels.append(("membership_score", "membership score (share of non-members out-scored)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 2.8), dpi=110, squeeze=False)
    for ax, (col, xlabel) in zip(axes[0], panels):
        ax.hist(audit[col].dropna(), bins=20, color="C0", alpha=0.8)
        ax.axvline(0.0 if col == "copy_margin" else 0.5, color="0.3", ls="--", lw=1)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("patients")
    stamp(fig, source)
    fig.tight_layout()
    return fig

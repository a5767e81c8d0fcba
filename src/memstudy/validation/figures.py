"""Figures of the planted-copy benchmark: ROC curves, recall by change, examples."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from ..viz.figures import _plt, stamp
from .changes import CHANGES, KINDS, NOVEL, PATIENT

if TYPE_CHECKING:  # only for the annotation; planted.py imports this module when it draws
    from .planted import BenchmarkSets


def roc_figure(per_sample: pd.DataFrame, table: pd.DataFrame, source: str):
    """One ROC curve per detector (changed copies vs novel slices, seeds pooled), tau marked.

    The legend gives each detector's AUC (the mean of the per-seed AUCs) with its interval.
    """
    plt, sns = _plt()
    fig, ax = plt.subplots(figsize=(5.0, 4.2), dpi=120)
    colors = dict(zip(table.detector, sns.color_palette("tab10", len(table))))
    for det, rows in per_sample.groupby("detector", sort=False):
        rows = rows[rows.kind.isin(CHANGES + (NOVEL,))]
        fpr, tpr, _ = roc_curve(rows.kind != NOVEL, rows.sim)
        m = table.set_index("detector").loc[det]
        ax.plot(fpr, tpr, color=colors[det], lw=1.4,
                label=f"{det}: AUC {m.auc:.3f} [{m.auc_lo:.3f}, {m.auc_hi:.3f}]")
        ax.plot(m.fpr_novel, m.recall, "o", color=colors[det], ms=5)
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls=":")
    ax.set_xlabel("false-positive rate (novel test-share slices)")
    ax.set_ylabel("true-positive rate (changed copies)")
    ax.set_title("Copy detectors against planted copies (dot = at tau)", fontsize=9)
    ax.legend(fontsize=6.5, loc="lower right")
    stamp(fig, source)
    fig.tight_layout()
    return fig


def recall_figure(table: pd.DataFrame, recall: pd.DataFrame, source: str):
    """Heat map: share of each kind of query flagged by each detector, with its 95 % interval
    (novel = the false-positive rate)."""
    plt, sns = _plt()
    kinds = [k for k in KINDS if k in set(recall.kind)]
    rates = recall.pivot(index="detector", columns="kind", values="rate")
    rates = rates.reindex(index=list(table.detector), columns=kinds)
    text = recall.assign(label=[f"{r:.0%}\n{lo:.0%}–{hi:.0%}" for r, lo, hi in
                                zip(recall.rate, recall.lo, recall.hi)])
    labels = text.pivot(index="detector", columns="kind", values="label").reindex(
        index=list(table.detector), columns=kinds)
    names = {PATIENT: "same patient\n(other slice)", NOVEL: "novel\n(= FPR)"}
    rates, labels = rates.rename(columns=names), labels.rename(columns=names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(kinds), 0.9 + 0.5 * len(table)), dpi=120)
    sns.heatmap(rates, annot=labels.to_numpy(), fmt="", vmin=0, vmax=1, cmap="rocket_r",
                cbar=False, ax=ax, annot_kws={"fontsize": 6})
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.tick_params(labelsize=7)
    ax.set_title("Share of queries flagged as copies at each detector's tau "
                 "(95 % patient-bootstrap interval)", fontsize=9)
    stamp(fig, source)
    fig.tight_layout()
    return fig


def examples_figure(sets: BenchmarkSets, source: str):
    """First query of each kind (top) above its training source (bottom; none for new ones)."""
    plt, _ = _plt()
    fig, axes = plt.subplots(2, len(KINDS), figsize=(1.05 * len(KINDS), 2.5), dpi=120)
    for col, k in enumerate(KINDS):
        q = int(np.flatnonzero(sets.kind == k)[0])
        axes[0, col].imshow(sets.queries[q, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[0, col].set_title(k.replace("_", " "), fontsize=7)
        if sets.source[q] >= 0:
            axes[1, col].imshow(sets.train.images[sets.source[q], 0], cmap="gray", vmin=0, vmax=1)
        for ax in axes[:, col]:
            ax.set_xticks([]), ax.set_yticks([])
    axes[0, 0].set_ylabel("query", fontsize=7)
    axes[1, 0].set_ylabel("training\nsource", fontsize=7)
    stamp(fig, source)
    fig.tight_layout()
    return fig

"""Figures of one run, each stamped with the run that made it.

Matplotlib is imported lazily and forced to the file-only Agg backend, so figures render on
headless CI machines and inside papermill kernels alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    return plt, sns


def stamp(fig, source: str) -> None:
    """Write the run (or preset and cells) that produced a figure into its bottom-right corner."""
    fig.text(0.995, 0.005, source, ha="right", va="bottom", fontsize=6, color="0.45")


def similarity_histogram(sim_gen_train: np.ndarray, sim_holdout_train: np.ndarray, tau: float,
                         similarity: str, title: str, source: str):
    """Max similarity to the training set: synthetic samples vs genuinely new (holdout) images.

    The mass of the synthetic curve to the right of tau is the copy rate; the holdout curve
    shows what novel images of the same distribution look like to the detector.
    """
    plt, sns = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.2), dpi=120)
    lo = min(np.min(sim_gen_train), np.min(sim_holdout_train))
    hi = max(np.max(sim_gen_train), np.max(sim_holdout_train), tau)
    bins = np.linspace(lo, hi + 1e-6, 40)
    sns.histplot(sim_holdout_train, bins=bins, stat="density", color="tab:blue", alpha=0.45,
                 label="holdout → train", ax=ax)
    sns.histplot(sim_gen_train, bins=bins, stat="density", color="tab:red", alpha=0.45,
                 label="synthetic → train", ax=ax)
    ax.axvline(tau, color="black", ls="--", lw=1)
    ax.text(tau, ax.get_ylim()[1] * 0.95, f" τ = {tau:.3f}", va="top", fontsize=8)
    ax.set_xlabel(f"similarity to nearest training image ({similarity})")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    stamp(fig, source)
    fig.tight_layout()
    return fig


def nearest_gallery(gen: np.ndarray, train: np.ndarray, holdout: np.ndarray, sim_train: np.ndarray,
                    nn_train: np.ndarray, sim_holdout: np.ndarray, nn_holdout: np.ndarray,
                    tau: float, n: int, title: str, source: str, similarity: str = "Pearson r"):
    """Rows of synthetic | nearest training | nearest holdout, most train-like first."""
    plt, _ = _plt()
    order = np.argsort(-sim_train)[:n]
    fig, axes = plt.subplots(len(order), 3, figsize=(3.6, 1.25 * len(order) + 0.4), dpi=120,
                             squeeze=False)
    for row, j in enumerate(order):
        panels = [(gen[j], "synthetic", None), (train[nn_train[j]], "nearest train", sim_train[j]),
                  (holdout[nn_holdout[j]], "nearest holdout", sim_holdout[j])]
        for col, (img, label, sim) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(label, fontsize=7)
            if sim is not None:
                flag = " copy" if (col == 1 and sim > tau) else ""
                ax.set_xlabel(f"{similarity[:4]} {sim:.3f}{flag}", fontsize=6,
                              color="tab:red" if flag else "black")
    fig.suptitle(title, fontsize=8)
    stamp(fig, source)
    fig.tight_layout()
    return fig


def training_curve(records: list[dict], source: str):
    """Loss of every training stage against step, from ``stats.jsonl``."""
    plt, _ = _plt()
    stages = list(dict.fromkeys(r["stage"] for r in records)) or ["(no records)"]
    fig, axes = plt.subplots(1, len(stages), figsize=(3.2 * len(stages), 2.4), dpi=120,
                             squeeze=False)
    for ax, stage in zip(axes[0], stages):
        rows = [r for r in records if r.get("stage") == stage]
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1)
        ax.set_title(stage, fontsize=8)
        ax.set_xlabel("step")
        if rows and min(r["loss"] for r in rows) > 0:
            ax.set_yscale("log")
    axes[0, 0].set_ylabel("loss")
    stamp(fig, source)
    fig.tight_layout()
    return fig


def save(fig, path: Path) -> None:
    """Save atomically and close, so a kill never leaves a truncated PNG."""
    from ..runio import save_atomic

    plt, _ = _plt()
    save_atomic(lambda p: fig.savefig(p, bbox_inches="tight"), path)
    plt.close(fig)

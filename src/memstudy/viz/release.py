"""Figure of the release filter: kept and dropped samples against tau."""

from __future__ import annotations

import numpy as np

from .figures import _plt, stamp


def release_histogram(sim: np.ndarray, tau: float, keep: np.ndarray,
                      sim_holdout: np.ndarray | None, detector: str, source: str):
    """Similarity of each synthetic sample to its nearest training image: kept vs dropped."""
    plt, sns = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.2), dpi=120)
    values = [sim] + ([sim_holdout] if sim_holdout is not None else [])
    lo = min(tau, *(np.min(v) for v in values))
    hi = max(tau, *(np.max(v) for v in values))
    # Bins of equal width with tau on an edge, so that no bar mixes kept and dropped samples.
    width = max(hi - lo, 1e-6) / 40
    below = np.arange(tau, lo - width, -width)[::-1]
    bins = np.r_[below, np.arange(tau + width, hi + width, width)]
    if sim_holdout is not None:
        sns.histplot(sim_holdout, bins=bins, stat="count", color="0.6", alpha=0.35,
                     element="step", label="holdout → train (reference)", ax=ax)
    ax.hist([sim[keep], sim[~keep]], bins=bins, stacked=True, color=["tab:green", "tab:red"],
            alpha=0.7, label=[f"kept ({keep.sum()})", f"dropped ({(~keep).sum()})"])
    ax.axvline(tau, color="black", ls="--", lw=1)
    ax.text(tau, ax.get_ylim()[1] * 0.95, f" τ = {tau:.3f}", va="top", fontsize=8)
    ax.set_xlabel(f"similarity to nearest training image ({detector})")
    ax.set_ylabel("samples")
    ax.set_title(f"Release filter ({detector}): {(~keep).sum()} of {len(keep)} samples dropped",
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    stamp(fig, source)
    fig.tight_layout()
    return fig

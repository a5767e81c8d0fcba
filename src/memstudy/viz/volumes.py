"""Figures of 3D cells: a volume is shown as its three orthogonal mid-slices.

A copied volume is only convincing when all three views match, so every volume in these
figures takes three panels (axial | coronal | sagittal). The histogram of similarities needs
nothing new: :func:`memstudy.viz.figures.similarity_histogram` works on any detector's numbers.
"""

from __future__ import annotations

import numpy as np

from ..data.volumes import mid_slices
from .figures import _plt, stamp

VIEWS = ("axial", "coronal", "sagittal")


def _show_volume(axes, volume: np.ndarray) -> None:
    """Draw the three mid-slices of one ``(1, D, H, W)`` or ``(D, H, W)`` volume on three axes.

    Axis 0 of a volume runs inferior -> superior, so coronal and sagittal views are flipped
    upside down to put the top of the head at the top.
    """
    axial, coronal, sagittal = mid_slices(np.asarray(volume).reshape(volume.shape[-3:]))
    for ax, img in zip(axes, (axial, coronal[::-1], sagittal[::-1])):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([]), ax.set_yticks([])


def volume_gallery(gen: np.ndarray, train: np.ndarray, holdout: np.ndarray, sim_train: np.ndarray,
                   nn_train: np.ndarray, sim_holdout: np.ndarray, nn_holdout: np.ndarray,
                   tau: float, n: int, title: str, source: str, similarity: str = "Pearson r"):
    """Rows of synthetic | nearest training | nearest holdout volume, most train-like first.

    The 3D counterpart of :func:`memstudy.viz.figures.nearest_gallery`, with the same arguments;
    volumes are ``(N, 1, D, H, W)``.
    """
    plt, _ = _plt()
    order = np.argsort(-np.asarray(sim_train))[:n]
    fig, axes = plt.subplots(len(order), 9, figsize=(9.0, 1.15 * len(order) + 0.5), dpi=120,
                             squeeze=False)
    for row, j in enumerate(order):
        panels = [(gen[j], "synthetic", None), (train[nn_train[j]], "nearest train", sim_train[j]),
                  (holdout[nn_holdout[j]], "nearest holdout", sim_holdout[j])]
        for col, (vol, label, sim) in enumerate(panels):
            group = axes[row, 3 * col:3 * col + 3]
            _show_volume(group, vol)
            if row == 0:  # the group's name above its middle panel, each view's name on top
                for ax, view in zip(group, VIEWS):
                    ax.set_title(f"{label}\n{view}" if view == VIEWS[1] else f"\n{view}", fontsize=6)
            if sim is not None:
                flag = " copy" if (col == 1 and sim > tau) else ""
                group[1].set_xlabel(f"{similarity[:4]} {sim:.3f}{flag}", fontsize=6,
                                    color="tab:red" if flag else "black")
    fig.suptitle(title, fontsize=8)
    stamp(fig, source)
    fig.tight_layout()
    return fig


def plot_volumes(volumes: np.ndarray, patient_id: np.ndarray | None = None, n: int = 4,
                 title: str = "training volumes"):
    """One row per volume (first ``n``): its axial, coronal and sagittal mid-slices."""
    plt, _ = _plt()
    n = min(n, len(volumes))
    fig, axes = plt.subplots(n, 3, figsize=(3.3, 1.15 * n + 0.4), dpi=120, squeeze=False)
    for row in range(n):
        _show_volume(axes[row], volumes[row])
        if patient_id is not None:
            axes[row, 0].set_ylabel(f"patient {int(patient_id[row])}", fontsize=6)
    for ax, view in zip(axes[0], VIEWS):
        ax.set_title(view, fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig

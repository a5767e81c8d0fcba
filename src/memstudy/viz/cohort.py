"""Figure of the cohort: a few patients' slices, one row per patient."""

from __future__ import annotations

import numpy as np

from ..data.cohort import Cohort


def plot_cohort(cohort: Cohort, n_patients: int = 6, ax_size: float = 1.6):
    """Show the slices of the first few patients, one row per patient.

    Parameters
    ----------
    cohort : Cohort
        The slices to show.
    n_patients : int
        Rows: the first ``n_patients`` patients in order of appearance.
    ax_size : float
        Size of one image in inches.

    Returns
    -------
    matplotlib.figure.Figure
        Slices inferior -> superior from left to right; a red corner mark
        flags slices that show a lesion.
    """
    # Lazy import: generating data must not need matplotlib.
    from matplotlib.figure import Figure

    _, first = np.unique(cohort.patient_id, return_index=True)
    patients = cohort.patient_id[np.sort(first)][:n_patients]
    n_cols = int(cohort.slice_index.max()) + 1 if len(cohort) else 1
    fig = Figure(figsize=(ax_size * n_cols + 0.9, ax_size * max(len(patients), 1) + 0.3))
    axes = fig.subplots(max(len(patients), 1), n_cols, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for row, patient in enumerate(patients):
        rows = np.flatnonzero(cohort.patient_id == patient)
        for i in rows:
            ax = axes[row, cohort.slice_index[i]]
            ax.imshow(cohort.images[i, 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            if cohort.has_lesion[i]:
                ax.plot([0.04], [0.96], "v", color="red", markersize=5, transform=ax.transAxes)
        label = f"patient {patient}"
        if cohort.has_lesion[rows].any():
            label += "\n(lesion)"
        axes[row, 0].set_ylabel(label, fontsize=8)
    for col in range(n_cols):
        axes[0, col].set_title(f"slice {col}", fontsize=8)
    # Fixed margins in inches: room for the row labels and column titles.
    width, height = fig.get_size_inches()
    fig.subplots_adjust(
        left=0.9 / width, right=0.99, bottom=0.02 / height, top=1 - 0.3 / height, wspace=0.03, hspace=0.03
    )
    return fig

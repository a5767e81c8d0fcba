"""2D against 3D on the same patients: the table of the ``dims`` preset, rebuilt from run folders.

Each cell of ``grids/dims.yaml`` is a slice model (``spatial_dims`` 2) or a volume model (3)
trained on the same patients. Per cohort size, detector and training length this module puts
side by side, for both arms, the mean over replicates of

- ``copy_rate``: synthetic samples above tau (Dar et al.'s N_copies / N_gen);
- ``patient_match_rate``: synthetic samples (slices or volumes) whose nearest training sample
  is above what every held-out patient reaches (:func:`memstudy.metrics.patient.patient_level`):
  "this sample is a training patient";
- ``patients_matched_rate``: training patients that at least one such sample matches;

each beside its null (the same measurement on never-seen patients, ``metrics.evidence``) and
its excess over the null with a 95 % interval, and the 3D-minus-2D difference of the excesses
with its interval. Intervals resample replicates and, within each, the cell's own sampling
noise (:func:`memstudy.analysis.stats.change_interval`), so they hold "new patients, new model".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .report import collect
from .stats import change_interval

RATES = ("copy_rate", "patient_match_rate", "patients_matched_rate")
Z95 = 3.92  # width of a 95 % normal interval in standard errors: a cell's sd from its interval


def _sd(rows: pd.DataFrame, name: str) -> np.ndarray:
    """Each cell's standard error of its excess over the null, read off its 95 % interval."""
    return ((rows[f"excess_{name}_hi"] - rows[f"excess_{name}_lo"]) / Z95).to_numpy(float)


def _mean_interval(values: np.ndarray, sds: np.ndarray, seed: int) -> dict:
    """Mean over replicates with a 95 % interval: the change from 0 to ``values``."""
    zeros = np.zeros_like(values)
    return change_interval([zeros, values], [zeros, sds], seed=seed)


def dims_table(df: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """The 2D-versus-3D table from a :func:`memstudy.analysis.report.collect` table.

    Returns
    -------
    pandas.DataFrame
        One row per (``dataset_size``, ``detector``, ``step``, ``spatial_dims``) with
        ``n_patients``, ``n_cells``, and for each rate in :data:`RATES` its mean, its null's
        mean, the mean excess with ``_lo``/``_hi``; rows of ``spatial_dims`` 3 also carry
        ``diff_<rate>`` (3D minus 2D excess) with its interval.
    """
    need = {"spatial_dims", "dataset_size", "seed", *(f"excess_{r}" for r in RATES)}
    rows = df[df["status"] == "complete"] if "status" in df else df
    if "model" in rows:  # the positive controls are read by control_table
        rows = rows[rows["model"].fillna("ldm") == "ldm"]
    missing = need - set(rows.columns)
    if rows.empty or missing:
        raise ValueError(f"no complete dims cells with {sorted(missing) or 'rows'}: run "
                         "`memstudy grid run dims` first (cells need the never-seen null).")
    out = []
    for (size, det, step), group in rows.groupby(["dataset_size", "detector", "step"], sort=True):
        arms = {d: g.sort_values("seed") for d, g in group.groupby("spatial_dims")}
        for dims, g in arms.items():
            row = {"dataset_size": int(size), "n_patients": int(g["n_train_patients"].iloc[0]),
                   "detector": det, "step": int(step), "spatial_dims": int(dims),
                   "n_cells": len(g)}
            for k, name in enumerate(RATES):
                excess = _mean_interval(g[f"excess_{name}"].to_numpy(float), _sd(g, name), seed + k)
                row |= {name: g[name].mean(), f"null_{name}": g[f"null_{name}"].mean(),
                        f"excess_{name}": excess["change"], f"excess_{name}_lo": excess["lo"],
                        f"excess_{name}_hi": excess["hi"]}
                if dims == 3 and 2 in arms:
                    flat = arms[2]
                    diff = change_interval([flat[f"excess_{name}"].to_numpy(float),
                                            g[f"excess_{name}"].to_numpy(float)],
                                           [_sd(flat, name), _sd(g, name)], seed=seed + 10 + k)
                    row |= {f"diff_{name}": diff["change"], f"diff_{name}_lo": diff["lo"],
                            f"diff_{name}_hi": diff["hi"]}
            out.append(row)
    return pd.DataFrame(out)


def control_table(df: pd.DataFrame) -> pd.DataFrame:
    """What each arm's ruler sees of perfect copies: the ``control_positive`` cells' rates.

    Their "samples" are the training images through the shared autoencoder's round trip, so
    every one is a copy; a ruler that flags few of them cannot show memorization in that arm,
    whatever the model does (the book asks for >= 95 %).
    """
    if "model" not in df:
        return pd.DataFrame()
    rows = df[(df["status"] == "complete") & (df["model"] == "control_positive")]
    if rows.empty:
        return pd.DataFrame()
    keep = ["copy_rate", "null_copy_rate", "patient_match_rate", "null_patient_match_rate"]
    return (rows.groupby(["dataset_size", "spatial_dims", "detector"])[keep].mean()
            .reset_index())


def onset(table: pd.DataFrame, rate: str = "copy_rate") -> pd.DataFrame:
    """First training length at which an arm's excess interval lies wholly above zero.

    Missing (NaN) where it never does within the measured checkpoints: "not seen by this
    length", which is not "never".
    """
    rows = []
    for (size, det, dims), g in table.groupby(["dataset_size", "detector", "spatial_dims"]):
        above = g[g[f"excess_{rate}_lo"] > 0].sort_values("step")
        rows.append({"dataset_size": size, "detector": det, "spatial_dims": dims,
                     f"onset_{rate}": int(above["step"].iloc[0]) if len(above) else None})
    return pd.DataFrame(rows)


def verdicts(table: pd.DataFrame, rate: str = "patient_match_rate") -> list[str]:
    """One sentence per cohort size and detector at the last checkpoint: 3D against 2D.

    "more" or "less" only when the 95 % interval of the 3D-minus-2D excess excludes zero;
    otherwise the sizes here cannot tell the two apart.
    """
    out = []
    last = table[table["step"] == table["step"].max()]
    for (size, det), g in last.groupby(["dataset_size", "detector"]):
        arms = g.set_index("spatial_dims")
        if not {2, 3} <= set(arms.index):
            continue
        flat, vol = arms.loc[2], arms.loc[3]

        def excess(r):
            return (f"{r[f'excess_{rate}']:+.0%} [{r[f'excess_{rate}_lo']:+.0%}, "
                    f"{r[f'excess_{rate}_hi']:+.0%}]")

        lo, hi = vol[f"diff_{rate}_lo"], vol[f"diff_{rate}_hi"]
        word = ("more than" if lo > 0 else "less than" if hi < 0 else
                "no differently from (the interval includes zero)")
        out.append(f"{int(flat['n_patients'])} training patients, {det}, step {int(vol['step'])}, "
                   f"{int(vol['n_cells'])} replicate(s): the volume model matches its patients "
                   f"{word} the slice model — excess over the null {excess(vol)} in 3D, "
                   f"{excess(flat)} in 2D; difference {vol[f'diff_{rate}']:+.0%} [{lo:+.0%}, {hi:+.0%}].")
    return out


def load_dims(results_dir: str | Path) -> pd.DataFrame:
    """:func:`dims_table` of a dims results folder (``results/dims``)."""
    return dims_table(collect(results_dir))


def onset_figure(table: pd.DataFrame, source: str, detector: str = "pixel",
                 rate: str = "copy_rate"):
    """Excess of ``rate`` over its null against training length, 2D beside 3D, one panel per
    cohort size, each point the mean over replicates with its 95 % interval.

    The picture of the chapter's question: where an arm's interval leaves zero, it reproduces
    its training patients more often than never-seen patients are matched by chance.
    """
    import matplotlib.pyplot as plt

    from ..viz.figures import stamp

    rows = table[table.detector == detector]
    sizes = sorted(rows.dataset_size.unique())
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 3.4), sharey=True,
                             squeeze=False)
    for ax, size in zip(axes[0], sizes):
        for dims, colour, shift in ((2, "tab:blue", 0.97), (3, "tab:red", 1.03)):
            arm = rows[(rows.dataset_size == size) & (rows.spatial_dims == dims)].sort_values("step")
            if arm.empty:
                continue
            mid = arm[f"excess_{rate}"].to_numpy()
            err = np.vstack([mid - arm[f"excess_{rate}_lo"], arm[f"excess_{rate}_hi"] - mid])
            ax.errorbar(arm.step * shift, mid, yerr=err, marker="o", capsize=3, color=colour,
                        label=f"{dims}D ({int(arm.n_cells.max())} replicates)")
        ax.axhline(0, color="grey", lw=1, ls="--")
        ax.set_xscale("log")
        steps = sorted(rows.step.unique())
        ax.set_xticks(steps, [f"{int(v):,}" for v in steps])
        ax.minorticks_off()
        ax.set_xlabel("training steps")
        n_patients = int(rows[rows.dataset_size == size].n_patients.iloc[0])
        ax.set_title(f"{n_patients} training patients")
        ax.legend(loc="upper left", fontsize=8)
    axes[0][0].set_ylabel(f"{rate} − null ({detector})")
    stamp(fig, source)
    fig.tight_layout()
    return fig

"""Helpers of the two labs: the class table of lab 1 and the planted copies of lab 2.

Lab 1: each student runs one cell (:func:`memstudy.run_cell`) with their own parameters and
adds one row to the class table (:func:`class_row`, :func:`add_to_class_table`); the teacher
reads the table with :func:`class_summary`.

Lab 2: students plant copies changed in their own way (:func:`plant_own`) beside the planted
copies of :mod:`memstudy.validation.planted`, and see which detector finds them
(:func:`score_detectors`).

The interval here (:func:`excess_interval`) is the course's simple version: a bootstrap over
synthetic samples and held-out samples. The study's own intervals resample patients too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..runio import read_json, save_atomic

# One row per (student, cell, detector) at the cell's last checkpoint.
CLASS_COLUMNS = ["student", "dataset_size", "augmentation", "unet_preset", "train_steps", "seed",
                 "detector", "step", "tau", "copy_rate", "null", "excess", "excess_lo",
                 "excess_hi", "mem_rate", "fp_floor", "n_gen", "config_digest", "wall_s"]
AXES = ["dataset_size", "augmentation", "unet_preset", "train_steps"]  # what students vary
MINE = "mine"  # the kind of the copies a student plants in lab 2


def show(fig) -> None:
    """Display a matplotlib figure as a PNG in a notebook or a book page, whatever the
    backend (memstudy's figures use the file-only Agg backend), then close it."""
    import io

    import matplotlib.pyplot as plt
    from IPython.display import Image, display

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    display(Image(data=buf.getvalue()))


def pretend_generator(cfg, n_copies: int = 32, n_new: int = 64, noise: float = 0.05,
                      seed: int = 0):
    """A stand-in for a generator whose truth is known: noisy copies of training slices mixed
    with slices of *test-share* patients (no model and no ruler ever sees those).

    Parameters
    ----------
    cfg : :class:`memstudy.RunConfig` (generated cohort): gives the training and holdout sets.
    n_copies, n_new : how many copies and how many new slices the pretend generator returns.
    noise : standard deviation of the Gaussian noise added to each copy (images are in [0, 1]).
    seed : which training slices are copied, the noise, and the order of the output.

    Returns
    -------
    sets, gen_set, is_copy : the cell's :class:`memstudy.data.sets.Sets`, the (N, 1, H, W)
        synthetic set in shuffled order, and a boolean array marking the copies in it.
    """
    import torch

    from ..data.sets import load_sets, patient_slices, patient_split

    sets = load_sets(cfg)
    train, _ = sets.tensors()
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(0, len(train), (n_copies,), generator=gen)
    copies = (train[src] + noise * torch.randn(train[src].shape, generator=gen)).clamp(0, 1)
    n_patients = -(-n_new // cfg.slices_per_patient)
    new = patient_slices(patient_split(cfg)["test"][:n_patients], cfg).images[:n_new]
    order = torch.randperm(n_copies + n_new, generator=gen)
    gen_set = torch.cat([copies, torch.from_numpy(new)])[order]
    is_copy = (order < n_copies).numpy()
    return sets, gen_set, is_copy


# --------------------------------------------------------------------------------------------
# Lab 1: one cell, one row of the class table
# --------------------------------------------------------------------------------------------


def excess_interval(copies: np.ndarray, null: np.ndarray, confidence: float = 0.95,
                    n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``mean(copies) - mean(null)``.

    ``copies`` flags each synthetic sample above tau, ``null`` each held-out sample above tau
    against training; the two sets are resampled independently (``scipy.stats.bootstrap``).
    """
    from scipy.stats import bootstrap

    copies, null = (np.asarray(a, dtype=float) for a in (copies, null))
    found = bootstrap((copies, null), lambda a, b, axis=-1: a.mean(axis) - b.mean(axis),
                      paired=False, vectorized=True, method="percentile",
                      confidence_level=confidence, n_resamples=n_resamples, rng=seed)
    return float(found.confidence_interval.low), float(found.confidence_interval.high)


def similarities(run_dir: str | Path, detector: str = "pixel", step: int | None = None) -> dict:
    """Per-sample similarities and tau of one detector at one checkpoint (default: the last).

    Returns a dict with ``step``, ``tau``, ``sim_gen_train`` (each synthetic sample's nearest
    training slice), ``sim_holdout_train`` (each held-out slice's nearest training slice: the
    null) and ``sim_train_holdout`` (what tau was calibrated on).
    """
    run_dir = Path(run_dir)
    rows = [r for r in read_json(run_dir / "metrics.json")["rows"] if r["detector"] == detector]
    if not rows:
        raise ValueError(f"{run_dir} has no rows for detector {detector!r}: choose one of the "
                         "cell's `detectors` parameter.")
    step = step if step is not None else max(r["step"] for r in rows)
    row = next(r for r in rows if r["step"] == step)
    arrays = np.load(run_dir / "eval" / f"step_{step:06d}_{detector}.npz")
    return {"step": step, "tau": float(row["tau"]),
            **{k: arrays[k] for k in ("sim_gen_train", "sim_holdout_train", "sim_train_holdout")}}


def class_row(student: str, run_dir: str | Path, detector: str = "pixel") -> dict:
    """The class-table row of one complete run folder, at its last checkpoint."""
    run_dir = Path(run_dir)
    cfg, metrics = read_json(run_dir / "config.json"), read_json(run_dir / "metrics.json")
    found = similarities(run_dir, detector)
    row = next(r for r in metrics["rows"]
               if r["detector"] == detector and r["step"] == found["step"])
    lo, hi = excess_interval(found["sim_gen_train"] > found["tau"],
                             found["sim_holdout_train"] > found["tau"])
    return {"student": student, **{k: cfg[k] for k in AXES + ["seed"]}, "detector": detector,
            "step": found["step"], "tau": row["tau"], "copy_rate": row["copy_rate"],
            "null": row["holdout_copy_rate"],
            "excess": row["copy_rate"] - row["holdout_copy_rate"], "excess_lo": lo,
            "excess_hi": hi, "mem_rate": row["mem_rate"], "fp_floor": row["fp_floor"],
            "n_gen": row["n_gen"], "config_digest": metrics["config_digest"],
            "wall_s": metrics.get("wall_s_this_session")}


def add_to_class_table(row: dict, path: str | Path) -> pd.DataFrame:
    """Add (or replace: same student, config and detector) one row; return the whole table."""
    path = Path(path)
    table = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=CLASS_COLUMNS)
    missing = [c for c in CLASS_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path} lacks the class-table columns {missing}: start from the "
                         "template that `memstudy course build` writes.")
    same = ((table.student == row["student"]) & (table.config_digest == row["config_digest"])
            & (table.detector == row["detector"]))
    new = pd.DataFrame([row], columns=CLASS_COLUMNS)
    table = new if table[~same].empty else pd.concat([table[~same], new], ignore_index=True)
    save_atomic(lambda p: table.to_csv(p, index=False), path)
    return table


def class_summary(table: pd.DataFrame, detector: str = "pixel") -> pd.DataFrame:
    """One row per parameter setting: runs, mean excess, its spread, runs clear of the null."""
    rows = table[table.detector == detector]
    return (rows.assign(clear=rows.excess_lo > 0)
            .groupby(AXES, dropna=False)
            .agg(runs=("student", "size"), seeds=("seed", "nunique"),
                 excess_mean=("excess", "mean"), excess_min=("excess", "min"),
                 excess_max=("excess", "max"), runs_clear_of_null=("clear", "sum"))
            .reset_index())


# --------------------------------------------------------------------------------------------
# Lab 2: plant your own copies, see which detector finds them
# --------------------------------------------------------------------------------------------


def plant_own(sets, change, n: int = 16, seed: int = 0):
    """Append ``n`` copies of training slices changed by ``change`` (kind ``"mine"``).

    Parameters
    ----------
    sets : :class:`memstudy.validation.planted.BenchmarkSets`
    change : callable ``images (N, 1, H, W) in [0, 1] -> images of the same shape``, or None
        (then nothing is added and a note says so: the lab still runs on the other copies).
    n, seed : how many copies, and which training slices they are made from.

    Returns
    -------
    queries, kind, source : the queries with yours appended, their kinds, their source slices.
    """
    import torch

    if change is None:
        print("No change of your own yet: scoring the planted copies of the library only.")
        return sets.queries, sets.kind, sets.source
    gen = torch.Generator().manual_seed(seed)
    src = torch.randperm(len(sets.train.images), generator=gen)[:n].numpy()
    mine = torch.as_tensor(change(torch.from_numpy(sets.train.images[src]).float())).float()
    if mine.shape != (len(src), *sets.queries.shape[1:]):
        raise ValueError(f"your change returned shape {tuple(mine.shape)}; it must keep the "
                         f"shape of its input {(len(src), *sets.queries.shape[1:])}.")
    return (torch.cat([sets.queries, mine]), np.concatenate([sets.kind, [MINE] * len(src)]),
            np.concatenate([sets.source, src]))


def score_detectors(sets, queries, kind: np.ndarray, detectors=("pixel", "nn_ratio", "ssim"),
                    encoder_steps: int = 200, percentile: float = 95.0, seed: int = 0):
    """Score each detector on the queries; return (recall table, per-query frame).

    The recall table has one row per detector and one column per kind of query: the fraction
    flagged (sim > tau). For ``novel`` queries that fraction is the false-positive rate.
    """
    import torch

    from ..detect.factory import make_detector
    from ..metrics.scoring import score

    train = torch.from_numpy(sets.train.images)
    holdout = torch.from_numpy(sets.holdout.images)
    frames = []
    for name in detectors:
        det = make_detector(name, steps=encoder_steps, seed=seed).fit(train)
        found = score(det, train, holdout, queries, percentile)
        frames.append(pd.DataFrame({"detector": name, "kind": kind, "sim": found.sim_gen_train,
                                    "tau": found.result.tau,
                                    "flagged": found.sim_gen_train > found.result.tau}))
    per_query = pd.concat(frames, ignore_index=True)
    order = list(dict.fromkeys(kind))
    recall = (per_query.pivot_table(index="detector", columns="kind", values="flagged",
                                    aggfunc="mean")
              .reindex(index=list(detectors), columns=order))
    return recall, per_query

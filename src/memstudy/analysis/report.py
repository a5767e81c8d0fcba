"""Tables rebuilt from run folders only: the book never reads a notebook's screen output.

:func:`collect` turns a grid's results folder (``results/<preset>/``) into one tidy table,
one row per (cell, checkpoint step, detector); :func:`summarize` averages it over seeds;
:func:`write_report` stores it as ``report.parquet`` and ``report.csv`` beside the cells.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_type_hints

import pandas as pd

from ..config import RunConfig
from ..runio import cell_status, error_line, read_json, save_atomic, write_bytes_atomic

METRIC_COLUMNS = ["step", "detector", "tau", "mem_rate", "copy_rate", "fp_floor",
                  "holdout_copy_rate", "n_mem", "n_train", "n_copies", "n_gen"]
# Counts stay integers even where a failed cell leaves them missing (pandas' nullable Int64).
INT_METRICS = ["step", "n_mem", "n_train", "n_copies", "n_gen"]
FLOAT_METRICS = ["tau", "mem_rate", "copy_rate", "fp_floor", "holdout_copy_rate"]
CELL_METRICS = ["autoencoder_recon_pearson_holdout"]  # one value per cell, repeated on its rows
STATUSES = ("complete", "failed", "incomplete", "pending")


def cell_table(run_dir: str | Path) -> pd.DataFrame:
    """Metrics of one complete run folder: one row per (checkpoint step, detector)."""
    rows = read_json(Path(run_dir) / "metrics.json")["rows"]
    return pd.DataFrame(rows)[METRIC_COLUMNS].sort_values(["detector", "step"]).reset_index(drop=True)


def load_plan(results_dir: str | Path) -> dict[str, Any] | None:
    """The ``grid.json`` the runner wrote (spec and planned cells), or None."""
    path = Path(results_dir) / "grid.json"
    return read_json(path) if path.exists() else None


def collect(results_dir: str | Path) -> pd.DataFrame:
    """One row per (cell, checkpoint step, detector) of a grid's results folder.

    Parameters
    ----------
    results_dir : str or Path
        A grid's folder, ``results/<preset>``: its ``grid.json`` says which cells were
        planned, and every sub-folder with a ``config.json`` or ``error.json`` is a cell.

    Returns
    -------
    pandas.DataFrame
        Columns ``preset, cell, status``, the RunConfig fields that vary between cells (the
        axes and ``seed`` at least), the metric columns, ``autoencoder_recon_pearson_holdout``
        and ``error`` (first line, failed cells). A cell that is not complete has one row with
        its status and missing metrics. Rows are in planned cell order (then any unplanned
        cells by name), then by detector and step.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"{results_dir} is not a folder of grid results.")
    plan = load_plan(results_dir)
    planned = {c["id"]: c["levels"] for c in plan["cells"]} if plan else {}
    found = sorted(d.name for d in results_dir.iterdir()
                   if (d / "config.json").exists() or (d / "error.json").exists())
    cells = list(planned) + [c for c in found if c not in planned]
    values = {c: _config_values(results_dir / c, planned.get(c, {})) for c in cells}
    shown = _varying_fields(values.values(), plan)

    rows = []
    for cell in cells:
        run_dir = results_dir / cell
        base = {"preset": plan["name"] if plan else results_dir.name, "cell": cell,
                "status": cell_status(run_dir), **{f: values[cell].get(f) for f in shown}}
        if base["status"] == "complete":
            metrics = read_json(run_dir / "metrics.json")
            extra = {k: metrics.get(k) for k in CELL_METRICS}
            rows += [{**base, **r, **extra}
                     for r in sorted(metrics["rows"], key=lambda r: (r["detector"], r["step"]))]
        else:
            rows.append({**base, "error": error_line(run_dir) if base["status"] == "failed" else None})
    df = pd.DataFrame(rows)
    extra_metrics = sorted(set(df.columns) - {"preset", "cell", "status", "error", *shown,
                                              *METRIC_COLUMNS, *CELL_METRICS})
    columns = ["preset", "cell", "status", *shown, *METRIC_COLUMNS, *extra_metrics, *CELL_METRICS,
               "error"]
    return _typed(df.reindex(columns=columns), shown)


def summarize(df: pd.DataFrame, by: str | list[str], where: dict[str, Any] | None = None
              ) -> pd.DataFrame:
    """Mean and std of ``mem_rate`` and ``copy_rate`` per level of ``by``, detector and step.

    Complete cells only. Cells that share the levels of ``by`` are averaged: pass every axis
    to average over seeds alone. For a star design, pass ``where`` = the base levels of the
    other axes, so that an axis is compared with everything else at base.

    Parameters
    ----------
    df : pandas.DataFrame
        A table from :func:`collect`.
    by : str or list of str
        Columns to group by (axes), besides ``detector`` and ``step``.
    where : dict, optional
        Keep only rows whose column equals the value, e.g. ``{"unet_preset": "M"}``.

    Returns
    -------
    pandas.DataFrame
        ``by, detector, step, mem_rate_mean, mem_rate_std, copy_rate_mean, copy_rate_std,
        n_cells``; std is NaN where a group has a single cell.
    """
    by = [by] if isinstance(by, str) else list(by)
    rows = df[df["status"] == "complete"]
    for column, value in (where or {}).items():
        rows = rows[rows[column] == value]
    groups = rows.groupby(by + ["detector", "step"], sort=True)
    stats = groups[["mem_rate", "copy_rate"]].agg(["mean", "std"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    stats["n_cells"] = groups.size()
    return stats.reset_index()


def write_report(results_dir: str | Path) -> pd.DataFrame:
    """Collect a grid folder and write ``report.parquet`` and ``report.csv`` into it, atomically."""
    results_dir = Path(results_dir)
    df = collect(results_dir)
    save_atomic(lambda p: df.to_parquet(p, index=False), results_dir / "report.parquet")
    write_bytes_atomic(results_dir / "report.csv", df.to_csv(index=False).encode())
    return df


def summary_text(df: pd.DataFrame, plan: dict[str, Any] | None) -> str:
    """A few lines for the terminal: cell states, failures, and each axis at the last step."""
    cells = df.drop_duplicates("cell")
    counts = cells["status"].value_counts()
    lines = [f"{len(cells)} cells: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES)]
    lines += [f"  failed {r.cell}: {r.error}" for r in cells.itertuples() if r.status == "failed"]
    done = df[df["status"] == "complete"]
    if done.empty or not plan:
        return "\n".join(lines)
    spec = plan["spec"]
    last = done[done["step"] == done["step"].max()]
    lines.append(f"at the last step ({last['step'].iloc[0]}), mean (std) over cells:")
    for axis in spec["axes"]:
        where = ({k: v for k, v in spec["base"].items() if k != axis}
                 if spec["design"] == "star" else None)
        table = summarize(last, axis, where).drop(columns="step")
        lines.append("  " + table.round(3).to_string(index=False).replace("\n", "\n  "))
    return "\n".join(lines)


def _config_values(run_dir: Path, levels: dict[str, Any]) -> dict[str, Any]:
    """Config of a cell from its config.json, else its planned levels; tuples as "a,b"."""
    path = run_dir / "config.json"
    values = read_json(path) if path.exists() else levels
    return {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in values.items()}


def _varying_fields(configs, plan: dict[str, Any] | None) -> list[str]:
    """RunConfig fields that differ between cells, plus the planned axes and seed."""
    configs = list(configs)
    always = set(plan["spec"]["axes"]) if plan else set()
    always.add("seed")
    return [f for f in RunConfig.field_names()
            if f in always or len({repr(c.get(f)) for c in configs if f in c}) > 1]


def _typed(df: pd.DataFrame, fields: list[str]) -> pd.DataFrame:
    """Fixed numeric dtypes whether or not some cells are missing (text columns are inferred)."""
    hints = get_type_hints(RunConfig)
    dtypes = {**{c: "Int64" for c in INT_METRICS}, **{c: "float64" for c in FLOAT_METRICS + CELL_METRICS}}
    dtypes.update({f: {int: "Int64", float: "float64"}[hints[f]] for f in fields
                   if hints[f] in (int, float)})
    dtypes.update(detector="string", error="string")  # else all-missing would make them float
    return df.astype(dtypes).reset_index(drop=True)


def cell_audit(run_dir: str | Path, detector: str, step: int | None = None) -> pd.DataFrame:
    """Per-patient audit of one cell at one checkpoint (default: its last), from its files.

    Reads ``eval/step_XXXXXX_<detector>.npz`` (similarities, tau, training patient ids) and,
    when the cell ran the membership attack, ``eval/step_XXXXXX_membership.npz`` (per-slice
    losses); see :func:`memstudy.metrics.patient.patient_audit` for the columns.
    """
    import numpy as np

    from ..metrics.patient import patient_audit

    run_dir = Path(run_dir)
    if step is None:
        step = max(r["step"] for r in read_json(run_dir / "metrics.json")["rows"])
    det = np.load(run_dir / "eval" / f"step_{step:06d}_{detector}.npz")
    mem_path = run_dir / "eval" / f"step_{step:06d}_membership.npz"
    mem = np.load(mem_path) if mem_path.exists() else None
    pid = det["train_pid"] if "train_pid" in det else (mem["train_pid"] if mem is not None else None)
    if pid is None:
        raise FileNotFoundError(f"{run_dir}: no training patient ids at step {step}; rerun the cell "
                                "with this version of memstudy to record them.")
    tau = float(det["tau"]) if "tau" in det else float(np.percentile(det["sim_train_holdout"], 95))
    losses = {}
    if mem is not None:
        losses = {"loss_train": mem["loss_train"],
                  "loss_nonmembers": np.r_[mem["loss_holdout"], mem["loss_null"]]}
    return patient_audit(pid, det["sim_train_gen"], tau, **losses).assign(step=step)


def grid_audit(df: pd.DataFrame, results_dir: str | Path, detector: str) -> pd.DataFrame:
    """:func:`cell_audit` of every complete generative cell (controls left out), one table."""
    results_dir = Path(results_dir)
    done = df[(df["status"] == "complete") & (df["detector"] == detector)]
    if "model" in done:
        done = done[~done["model"].astype(str).str.startswith("control_")]
    parts = [cell_audit(results_dir / cell, detector).assign(cell=cell)
             for cell in done["cell"].unique()]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def loss_settled_step(run_dir: str | Path, stage: str = "diffusion", share: float = 0.9,
                      window: int = 8) -> int | None:
    """First logged step by which ``share`` of the training loss's whole decrease is done.

    The loss's running mean over ``window`` records is compared with its first record and its
    final running mean: the step returned is the first at which the running mean has come
    ``share`` of the way down (and stays there). Training-length levels past it are training
    on a loss that has mostly stopped falling; the book prints this step beside them. None when
    the run logged too few records to tell.
    """
    from ..runio import read_jsonl

    records = [r for r in read_jsonl(Path(run_dir) / "stats.jsonl") if r.get("stage") == stage]
    if len(records) < 2 * window:
        return None
    loss = pd.Series([r["loss"] for r in records]).rolling(window, min_periods=1).mean()
    start, final = float(records[0]["loss"]), float(loss.iloc[-1])
    above = loss - final > (1 - share) * (start - final)
    last_above = above[above].index.max() if above.any() else -1
    return int(records[min(last_above + 1, len(records) - 1)]["step"])

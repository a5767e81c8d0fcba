"""Tables rebuilt from run folders only: the book never reads a notebook's screen output."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .runio import read_json

METRIC_COLUMNS = ["step", "detector", "tau", "mem_rate", "copy_rate", "fp_floor",
                  "holdout_copy_rate", "n_mem", "n_train", "n_copies", "n_gen"]


def cell_table(run_dir: str | Path) -> pd.DataFrame:
    """Metrics of one complete run folder: one row per (checkpoint step, detector)."""
    rows = read_json(Path(run_dir) / "metrics.json")["rows"]
    return pd.DataFrame(rows)[METRIC_COLUMNS].sort_values(["detector", "step"]).reset_index(drop=True)

"""The report is rebuilt from run folders alone: hand-made folders give a known table."""

import math

import numpy as np
import pandas as pd
import pytest

from memstudy.config import RunConfig
from memstudy.analysis.report import collect, summarize, write_report
from memstudy.runio import write_json_atomic


def metric_row(step, detector, mem_rate):
    return {"step": step, "detector": detector, "tau": 0.9, "mem_rate": mem_rate,
            "copy_rate": mem_rate / 2, "fp_floor": 0.05, "holdout_copy_rate": 0.0,
            "n_mem": int(mem_rate * 8), "n_train": 8, "n_copies": 1, "n_gen": 16}


def write_cell(folder, cfg, rows=None, recon=0.8):
    write_json_atomic(folder / "config.json", cfg.to_dict())
    if rows is not None:
        write_json_atomic(folder / "metrics.json", {
            "rows": rows, "autoencoder_recon_pearson_holdout": recon,
            "config_digest": cfg.digest(), "device": "cpu", "wall_s_this_session": 1.0})


def test_collect_two_cells_gives_the_expected_table(tmp_path):
    grid = tmp_path / "mine"
    # Rows written out of order: the table must sort them by detector, then step.
    write_cell(grid / "b", RunConfig(augmentation="strong", checkpoints=(10,)),
               [metric_row(30, "pixel", 0.25), metric_row(10, "pixel", 0.125)], recon=0.7)
    write_cell(grid / "a", RunConfig(augmentation="none", checkpoints=(10,)),
               [metric_row(30, "pixel", 0.5), metric_row(30, "contrastive", 0.75)])

    table = collect(grid)

    expected = pd.DataFrame({
        "preset": ["mine"] * 4, "cell": ["a", "a", "b", "b"], "status": ["complete"] * 4,
        "augmentation": ["none", "none", "strong", "strong"], "seed": [0, 0, 0, 0],
        "step": [30, 30, 10, 30], "detector": ["contrastive", "pixel", "pixel", "pixel"],
        "tau": [0.9] * 4, "mem_rate": [0.75, 0.5, 0.125, 0.25],
        "copy_rate": [0.375, 0.25, 0.0625, 0.125], "fp_floor": [0.05] * 4,
        "holdout_copy_rate": [0.0] * 4, "n_mem": [6, 4, 1, 2], "n_train": [8] * 4,
        "n_copies": [1] * 4, "n_gen": [16] * 4,
        "autoencoder_recon_pearson_holdout": [0.8, 0.8, 0.7, 0.7], "error": [None] * 4,
    }).astype({c: "Int64" for c in ("seed", "step", "n_mem", "n_train", "n_copies", "n_gen")}
              ).astype({"detector": "string", "error": "string"})
    pd.testing.assert_frame_equal(table, expected)


def test_planned_cells_that_did_not_finish_have_a_status_and_no_metrics(tmp_path):
    grid = tmp_path / "g"
    levels = {c: {"augmentation": a, "seed": 0}
              for c, a in zip("abcd", ("none", "flip_rotate", "strong", "none"))}
    write_json_atomic(grid / "grid.json", {
        "name": "g", "spec": {"design": "full", "axes": {"augmentation": []}},
        "cells": [{"id": c, "levels": lv} for c, lv in levels.items()]})
    write_cell(grid / "a", RunConfig(), [metric_row(30, "pixel", 0.5)])
    write_cell(grid / "b", RunConfig(augmentation="flip_rotate"))
    write_json_atomic(grid / "b" / "error.json", {"error_type": "RuntimeError",
                                                  "message": "out of memory\nmore detail"})
    write_cell(grid / "c", RunConfig(augmentation="strong"))
    write_cell(grid / "zz_unplanned", RunConfig(seed=3))

    table = collect(grid)

    assert table["cell"].tolist() == ["a", "b", "c", "d", "zz_unplanned"]
    assert table["status"].tolist() == ["complete", "failed", "incomplete", "pending", "incomplete"]
    assert table["augmentation"].tolist() == ["none", "flip_rotate", "strong", "none", "none"]
    assert table["seed"].tolist() == [0, 0, 0, 0, 3]
    assert table.loc[1, "error"] == "RuntimeError: out of memory"
    assert table["mem_rate"].isna().tolist() == [False, True, True, True, True]
    assert table["step"].dtype == "Int64"


def test_summarize_gives_mean_and_std_across_seeds():
    rows = [("none", 0, 0.1), ("none", 1, 0.3), ("strong", 0, 0.0), ("strong", 1, 0.0)]
    df = pd.DataFrame({"status": "complete", "augmentation": [r[0] for r in rows],
                       "unet_preset": "S", "seed": [r[1] for r in rows], "detector": "pixel",
                       "step": 100, "mem_rate": [r[2] for r in rows],
                       "copy_rate": [2 * r[2] for r in rows]})
    df = pd.concat([df, df.assign(status="failed", mem_rate=np.nan, copy_rate=np.nan),
                    df.assign(unet_preset="M", mem_rate=1.0)], ignore_index=True)

    out = summarize(df, "augmentation", where={"unet_preset": "S"})

    assert out.columns.tolist() == ["augmentation", "detector", "step", "mem_rate_mean",
                                    "mem_rate_std", "copy_rate_mean", "copy_rate_std", "n_cells"]
    assert out["augmentation"].tolist() == ["none", "strong"]
    assert out["mem_rate_mean"].tolist() == pytest.approx([0.2, 0.0])
    assert out["mem_rate_std"].tolist() == pytest.approx([math.sqrt(0.02), 0.0])
    assert out["copy_rate_mean"].tolist() == pytest.approx([0.4, 0.0])
    assert out["n_cells"].tolist() == [2, 2]
    assert summarize(df, ["augmentation", "unet_preset"])["n_cells"].tolist() == [2, 2, 2, 2]


def test_write_report_writes_parquet_and_csv(tmp_path):
    write_cell(tmp_path / "a", RunConfig(), [metric_row(30, "pixel", 0.5)])
    table = write_report(tmp_path)
    again = pd.read_parquet(tmp_path / "report.parquet")
    assert again["mem_rate"].tolist() == table["mem_rate"].tolist() == [0.5]
    assert pd.read_csv(tmp_path / "report.csv")["cell"].tolist() == ["a"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left

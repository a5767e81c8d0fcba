"""Publishing a grid as small committed files, and the rebuild check of a committed cell."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from memstudy.analysis.publish import (SIZE_LIMIT_MB, PublishError, disallowed_files,
                                       folder_size, publish)
from memstudy.cli import main
from memstudy.config import RunConfig
from memstudy.pipeline.cell import run_cell
from memstudy.runio import read_json, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
TINY_CELL = {"ae_steps": 10, "encoder_steps": 10, "train_steps": 20, "checkpoints": (10, 20),
             "ddim_steps": 5, "num_gen": 16, "holdout_size": 16}
# Two cells of a star design on the model axis: the first complete cell and a second family.
CELLS = {"model-ldm_seed-0": {"model": "ldm", "seed": 0},
         "model-control_positive_seed-0": {"model": "control_positive", "seed": 0}}


@pytest.fixture(scope="module")
def grid_source(tmp_path_factory) -> Path:
    """A complete two-cell grid folder (seconds), with files that must never be published."""
    grid = tmp_path_factory.mktemp("results") / "mini"
    for cell, levels in CELLS.items():
        cfg = RunConfig.from_params({**TINY_CELL, **levels})
        run_cell(cfg, grid / cell, progress=False)
        (grid / cell / "notebook.ipynb").write_text("{}")  # what the grid runner leaves
        (grid / cell / "samples").mkdir(exist_ok=True)
        (grid / cell / "samples" / "planted.npz").write_bytes(b"pixels")
        (grid / cell / "planted.pt").write_bytes(b"weights")
        (grid / cell / "eval" / "planted.npy").write_bytes(b"sample array")
    write_json_atomic(grid / "grid.json", {
        "name": "mini", "source": "test", "cells": [{"id": c, "levels": lv} for c, lv in CELLS.items()],
        "spec": {"name": "mini", "design": "star", "axes": {"model": ["ldm", "control_positive"]},
                 "base": {"model": "ldm"}, "seeds": [0], "fixed": TINY_CELL}})
    return grid


@pytest.fixture
def grid(grid_source, tmp_path) -> Path:
    """A private copy per test (mtimes kept: provenance reads them)."""
    return Path(shutil.copytree(grid_source, tmp_path / "results" / "mini"))


def test_publish_copies_only_the_allow_list(grid, tmp_path, capsys):
    out = tmp_path / "reference"
    assert main(["publish", str(grid), "--to", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "MB" in printed and "files" in printed

    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith((".pt", ".ipynb", ".npy"))
                or "/samples/" in f or "/checkpoints/" in f or f.endswith(("split.json", "data.json"))
                or "train_examples" in f], files
    assert disallowed_files(out) == []
    ldm, control = (f"mini/{c}" for c in CELLS)
    for name in ("config.json", "metrics.json", "env.json", "stats.jsonl",
                 "eval/step_000020.json", "eval/step_000020_pixel.npz",
                 "figures/training_curve.png", "figures/hist_step000020_contrastive.png",
                 "figures/gallery_step000020_pixel.png"):
        assert f"{ldm}/{name}" in files, name
    # Every grid point's first replicate keeps its last-step figures, for every detector
    last = max(r["step"] for r in read_json(out / control / "metrics.json")["rows"])
    detectors = read_json(out / control / "config.json")["detectors"]
    assert {f for f in files if f.startswith(f"{control}/figures/")} >= {
        f"{control}/figures/{kind}_step{last:06d}_{d}.png" for kind in ("hist", "gallery") for d in detectors}
    for cell in (ldm, control):  # and no other checkpoint's
        end = max(r["step"] for r in read_json(out / cell / "metrics.json")["rows"])
        assert not [f for f in files if f.startswith(f"{cell}/figures/") and "_step" in f
                    and f"_step{end:06d}_" not in f]
    assert {"README.md", "mini/grid.json", "mini/report.parquet", "mini/report.csv",
            "mini/provenance.json"} <= files
    report = pd.read_parquet(out / "mini" / "report.parquet")
    assert set(report.cell) == set(CELLS) and (report.status == "complete").all()

    prov = read_json(out / "mini" / "provenance.json")
    assert prov["preset"] == "mini" and prov["cells"] == {"planned": 2, "complete": 2}
    assert sum(prov["git"]["sha_cells"].values()) == 2
    assert prov["packages"]["torch"] and prov["python"]
    assert prov["machine"]["logical_cores"] >= 1 and prov["machine"]["ram_gb"] > 0
    assert prov["timing"]["grid_wall_s"] >= 0 and prov["timing"]["cells_profile_total_s"]["wall"] > 0
    assert "config.json mtime" in prov["timing"]["how"]
    assert prov["date_utc"] and prov["grid_command"].startswith("memstudy grid run mini")
    assert "memstudy publish" in (out / "README.md").read_text()


def test_publishing_a_second_grid_keeps_the_first_in_the_readme(grid, tmp_path):
    out = tmp_path / "reference"
    assert main(["publish", str(grid), "--to", str(out)]) == 0
    other = Path(shutil.copytree(grid, grid.parent / "other"))
    assert main(["publish", str(other), "--to", str(out)]) == 0
    text = (out / "README.md").read_text()
    for name in ("mini", "other"):  # each grid keeps its section and its check command
        assert f"## `{name}/`" in text and f"report --check {out.name}/{name}" in text


def test_publish_refuses_real_data_and_writes_nothing(grid, tmp_path):
    path = grid / next(iter(CELLS)) / "config.json"
    write_json_atomic(path, {**read_json(path), "dataset": "brats2021"})
    with pytest.raises(PublishError, match="real data.*patient"):
        publish(grid, to=tmp_path / "reference")
    assert not (tmp_path / "reference").exists()
    assert not list(tmp_path.glob(".reference*"))


def test_publish_refuses_an_incomplete_grid_unless_allowed(grid, tmp_path):
    (grid / "model-control_positive_seed-0" / "metrics.json").unlink()
    with pytest.raises(PublishError, match="1 of 2 cells are not complete.*--allow-incomplete"):
        publish(grid, to=tmp_path / "reference")
    assert not (tmp_path / "reference").exists()

    done = publish(grid, to=tmp_path / "reference", allow_incomplete=True)
    assert done.provenance["cells"] == {"planned": 2, "complete": 1, "incomplete": 1}
    left = tmp_path / "reference" / "mini" / "model-control_positive_seed-0"
    assert [p.name for p in left.iterdir()] == ["config.json"]
    report = pd.read_parquet(tmp_path / "reference" / "mini" / "report.parquet")
    assert sorted(report.drop_duplicates("cell").status) == ["complete", "incomplete"]


def test_a_failed_publish_leaves_the_old_folder(grid, tmp_path, monkeypatch):
    out = tmp_path / "reference"
    publish(grid, to=out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    import memstudy.analysis.report as report

    def broken(_):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "write_report", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        publish(grid, to=out)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".reference")]


def test_report_check_passes_untouched_and_fails_on_a_changed_metric(grid, tmp_path, capsys):
    out = tmp_path / "reference"
    publish(grid, to=out)
    committed = out / "mini"
    cell = "model-ldm_seed-0"
    args = ["report", "--check", str(committed), "--cell", cell, "--atol", "0.02"]

    assert main([*args, "--work-dir", str(tmp_path / "check1")]) == 0
    printed = capsys.readouterr().out
    assert "within tolerance" in printed and "mem_rate" in printed and "excess_copy_rate" in printed
    written = read_json(tmp_path / "check1" / f"{cell}.check.json")
    assert written["ok"] and written["table"][0]["tau"]["diff"] is not None

    metrics = read_json(committed / cell / "metrics.json")
    metrics["rows"][0]["copy_rate"] += 0.05  # more than the tolerance
    write_json_atomic(committed / cell / "metrics.json", metrics)
    assert main([*args, "--work-dir", str(tmp_path / "check2")]) == 1
    printed = capsys.readouterr().out
    assert "OUTSIDE" in printed and "copy_rate" in printed


def test_the_committed_reference_is_small():
    """reference/ is committed by hand after the reference grid has run (issue 14): this test
    fails until then."""
    root = ROOT / "reference"
    assert root.is_dir(), f"{root} is missing: run `memstudy publish results/reference` and commit it"
    assert disallowed_files(root) == []
    size, n = folder_size(root)
    print(f"reference/: {n} files, {size / 1e6:.2f} MB")
    assert size < SIZE_LIMIT_MB * 1e6, f"reference/ holds {size / 1e6:.1f} MB"
    provenance = json.loads((root / "reference" / "provenance.json").read_text())
    assert provenance["preset"] == "reference"


def test_a_benchmark_alone_is_published_beside_the_grid_already_there(grid, tmp_path):
    first = publish(grid, to=tmp_path / "pub")
    bench = tmp_path / "validation_32px_t1"
    bench.mkdir()
    (bench / "benchmark.json").write_text('{"params": {}}')
    (bench / "validation.csv").write_text("detector,auc\npixel,0.8\n")
    (bench / "model.pt").write_bytes(b"never published")
    before = {p.relative_to(tmp_path / "pub"): p.read_bytes()
              for p in (tmp_path / "pub" / grid.name).rglob("*") if p.is_file()}
    done = publish(None, to=tmp_path / "pub", validation=(bench,))
    assert done.provenance == {} and first.provenance
    after = {p.relative_to(tmp_path / "pub"): p.read_bytes()
             for p in (tmp_path / "pub" / grid.name).rglob("*") if p.is_file()}
    assert after == before  # the grid, its provenance included, untouched
    assert sorted(p.name for p in (tmp_path / "pub" / bench.name).iterdir()) == [
        "benchmark.json", "validation.csv"]
    readme = (tmp_path / "pub" / "README.md").read_text()
    assert f"`{bench.name}/` | validation benchmark" in readme and f"## `{grid.name}/`" in readme
    with pytest.raises(PublishError, match="nothing to publish"):
        publish(None, to=tmp_path / "pub")

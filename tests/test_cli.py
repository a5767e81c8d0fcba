"""The command line: every command documents itself, and mistakes cost one line, exit 2."""

import subprocess
import sys

import pytest

from memstudy.cli import main
from memstudy.config import RunConfig
from memstudy.runio import write_json_atomic


@pytest.mark.parametrize("command", [[], ["grid"], ["grid", "run"], ["grid", "list"],
                                     ["report"], ["cell"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.startswith("usage: memstudy")
    assert "example" in out and "cost" in out


@pytest.mark.parametrize("argv, message", [
    (["cell", "--param", "dataset_size=abc"], "dataset_size='abc' cannot be read"),
    (["cell", "--param", "datset_size=64"], "Unknown config key"),
    (["cell", "--param", "augmentation"], "is not KEY=VALUE"),
    (["grid", "run", "nosuch"], "no packaged grid spec named 'nosuch'"),
    (["grid", "run", "smoke", "--only", "nope", "--dry-run"], "no cell named nope"),
    (["grid", "run", "smoke", "--jobs", "0", "--dry-run"], "jobs must be at least 1"),
])
def test_bad_input_prints_one_line_and_exits_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("memstudy: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_shell_entry_point_helps_and_rejects_a_bad_spec(tmp_path):
    shell = [sys.executable, "-m", "memstudy.cli"]
    helped = subprocess.run([*shell, "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and all(c in helped.stdout for c in ("grid", "report", "cell"))
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\naxes: {augmentation: [none, heavy]}\n")
    done = subprocess.run([*shell, "grid", "run", str(spec)], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "cell aug-heavy_seed-0: augmentation='heavy'" in done.stderr


def test_grid_list_shows_each_preset_and_its_size(capsys):
    assert main(["grid", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("full") and " 180 cells" in line for line in lines)
    assert any(line.startswith("smoke") and " 3 cells" in line for line in lines)


def test_report_command_writes_the_tables(tmp_path, monkeypatch, capsys):
    grid = tmp_path / "mine"
    write_json_atomic(grid / "grid.json", {"name": "mine", "spec": {"design": "full", "axes": {}},
                                           "cells": [{"id": "a", "levels": {"seed": 0}}]})
    monkeypatch.setenv("MEMSTUDY_RESULTS", str(tmp_path))
    assert main(["report"]) == 0
    assert (grid / "report.parquet").exists() and (grid / "report.csv").exists()
    assert "1 cells: 0 complete, 0 failed, 0 incomplete, 1 pending" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 2


@pytest.mark.slow
def test_cell_command_runs_one_cell(tmp_path, capsys):
    params = ["train_steps=5", "ae_steps=5", "encoder_steps=5", "num_gen=8", "unet_preset=XS",
              "device=cpu"]
    argv = ["cell", *(a for p in params for a in ("--param", p)), "--run-dir", str(tmp_path),
            "--no-progress"]
    assert main(argv) == 0
    assert (tmp_path / "metrics.json").exists()
    assert "mem_rate" in capsys.readouterr().out
    assert RunConfig.from_json((tmp_path / "config.json").read_text()).train_steps == 5


def test_slurm_executor_off_a_cluster_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun here, whatever the machine
    assert main(["grid", "run", "smoke", "--executor", "slurm", "--results", str(tmp_path),
                 "--no-progress"]) == 2
    assert "cannot submit to Slurm from here" in capsys.readouterr().err

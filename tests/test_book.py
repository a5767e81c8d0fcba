"""The book builds, with errors raised, from run folders alone (the `tiny` preset's)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from memstudy.validation.planted import run_benchmark
from memstudy.pipeline.runner import run_grid
from memstudy.analysis.report import write_report

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_book_builds_from_result_files(tmp_path):
    results = tmp_path / "results"
    summary = run_grid("tiny", results_dir=results, progress=False)
    assert not summary.failed, summary.failed
    write_report(results / "tiny")
    run_benchmark(n_train=16, n_holdout=16, n_per_change=4, n_novel=16, encoder_steps=10,
                  detectors=("contrastive", "pixel", "nn_ratio", "ssim"),
                  out_dir=results / "validation", progress=False)
    env = {**os.environ, "MEMSTUDY_RESULTS": str(results), "MEMSTUDY_BOOK_PRESET": "tiny"}
    out = subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", str(ROOT), "-W", "-n",
                          "--keep-going", "--path-output", str(tmp_path / "book")],
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    html = tmp_path / "book" / "_build" / "html"
    page = (html / "book" / "results_cell.html").read_text()
    assert "tiny/aug-none_size-XS_n-8_model-ldm_seed-0" in page  # names the run it shows
    for name in ["intro", "cohort", "methods", "results_grid", "families", "detectors",
                 "comparison", "cpu_regime", "rerun"]:
        assert (html / "book" / f"{name}.html").exists(), name

"""The book builds, with errors raised, from run folders alone (the `tiny` preset's), every
figure a page makes is on the page, and a rebuild shows the results that are on disk now."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from bs4 import BeautifulSoup

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# A code cell makes a figure when it calls a plotting function, shows a PNG or draws with
# matplotlib/seaborn. Such a cell must leave an image on the page (the cohort page once built
# its figure and never displayed it).
MAKES_FIGURE = re.compile(r"\bplot_\w+\(|\w+_histogram\(|\bbook\.(figure|show)\(|\bfigure\(|"
                          r"\bplt\.|\bsns\.|\brelplot\(")
CODE_CELL = re.compile(r"^```\{code-cell\}[^\n]*\n(.*?)^```", re.S | re.M)


def code_cells(source: Path) -> list[str]:
    """Sources of a page's code cells that reach the HTML (``remove-cell`` ones never do), in
    order, from a MyST notebook (``.md``) or a Jupyter notebook (``.ipynb``)."""
    if source.suffix == ".ipynb":
        cells = json.loads(source.read_text())["cells"]
        return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"
                and "remove-cell" not in c.get("metadata", {}).get("tags", [])]
    cells = CODE_CELL.findall(source.read_text())
    return [c for c in cells if not re.search(r"^:tags:.*remove-cell", c, re.M)]


def toc_pages() -> list[str]:
    """Every page of ``_toc.yml``, as its path without suffix (``book/cohort``)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]]
    for part in toc.get("parts", []):
        for chapter in part.get("chapters", []):
            pages += [chapter["file"]] + [s["file"] for s in chapter.get("sections", [])]
    return pages


def page_source(page: str) -> Path:
    return next(p for p in (ROOT / f"{page}.md", ROOT / f"{page}.ipynb") if p.exists())


def says_why(cell) -> bool:
    """A cell may show a note instead of its figure when the figure's input is absent (no 3D
    run yet, real patients' pixels): an italic sentence starting "No ..." or "Not shown"."""
    return any(re.match(r"\s*(No |Not shown)", em.get_text()) for em in cell.find_all("em"))


def page_problems(source: Path, html_path: Path) -> list[str]:
    """What a reader would miss on a built page: figures never shown, empty outputs, tracebacks.

    The k-th code cell of the source that reaches the HTML is the k-th ``div.cell`` of the page.
    """
    problems = []
    soup = BeautifulSoup(html_path.read_text(), "html.parser")
    article = soup.find("article") or soup
    text = article.get_text()
    if "Traceback" in text or article.select(".output.traceback, .output.stderr"):
        problems.append("shows a Python traceback or stderr output")
    sources = code_cells(source)
    divs = article.select("div.cell")
    if len(sources) != len(divs):
        return problems + [f"{len(sources)} code cells in the source but {len(divs)} on the page"]
    for k, (source, div) in enumerate(zip(sources, divs), 1):
        images = div.find_all("img")
        content = div.get_text(strip=True) or images
        if not content:
            problems.append(f"code cell {k} shows nothing (empty output)")
        if MAKES_FIGURE.search(source) and not images and not says_why(div):
            problems.append(f"code cell {k} makes a figure but shows no image")
        for img in images:
            src = img.get("src", "")
            if not (src.startswith("data:") or (html_path.parent / src).exists()):
                problems.append(f"code cell {k} shows image {src[:60]!r}, which does not exist")
    return problems


def test_page_check_catches_a_figure_that_is_never_shown(tmp_path):
    md = tmp_path / "p.md"
    md.write_text("# P\n\n```{code-cell} ipython3\n:tags: [remove-cell]\nx = 1\n```\n\n"
                  "```{code-cell} ipython3\n:tags: [remove-input]\nfig = plot_cohort(c)\n```\n")
    html = tmp_path / "p.html"
    (tmp_path / "f.png").write_bytes(b"png")
    good = '<article><div class="cell"><div class="cell_output"><img src="f.png"/></div></div></article>'
    html.write_text(good)
    assert page_problems(md, html) == []
    # The cohort page's fault: the figure is built, the cell's output is empty.
    html.write_text('<article><div class="cell tag_remove-input docutils container">\n</div></article>')
    assert page_problems(md, html) == ["code cell 1 shows nothing (empty output)",
                                       "code cell 1 makes a figure but shows no image"]
    # A figure whose input is absent may be replaced by a note that says so, and only so.
    html.write_text('<article><div class="cell"><p><em>No complete 3D cell yet.</em></p></div></article>')
    assert page_problems(md, html) == []
    html.write_text('<article><div class="cell"><p><em>From preset tiny.</em></p></div></article>')
    assert page_problems(md, html) == ["code cell 1 makes a figure but shows no image"]
    html.write_text(good.replace("f.png", "gone.png"))
    assert "does not exist" in page_problems(md, html)[0]
    html.write_text(good.replace("</article>", "<pre>Traceback (most recent call last):</pre></article>"))
    assert page_problems(md, html) == ["shows a Python traceback or stderr output"]


def _fake_cell(folder: Path, cfg, copy_rate: float) -> None:
    """A complete run folder as the book reads it: config.json and metrics.json."""
    from memstudy.runio import write_json_atomic

    row = {"step": 20, "detector": "pixel", "tau": 0.9, "mem_rate": copy_rate,
           "copy_rate": copy_rate, "fp_floor": 0.05, "holdout_copy_rate": 0.05, "n_mem": 1,
           "n_train": 8, "n_copies": 1, "n_gen": 16}
    write_json_atomic(folder / "config.json", cfg.to_dict())
    write_json_atomic(folder / "metrics.json", {"rows": [row], "wall_s_this_session": 1.0})


def test_a_folder_of_single_cells_reads_as_a_grid_and_a_stale_report_is_refused(tmp_path):
    from memstudy.analysis.book import derived_plan, load_report, report_problem
    from memstudy.analysis.report import write_report
    from memstudy.config import RunConfig

    mine = tmp_path / "mine"
    cfg = RunConfig(train_steps=20, lr=5e-4)
    assert "does not exist" in report_problem(mine)
    _fake_cell(mine / "a", cfg, 0.5)
    assert "report.parquet is missing" in report_problem(mine)
    write_report(mine)
    assert report_problem(mine) is None
    df, plan = load_report(mine)
    assert plan["derived"] and plan["spec"]["axes"] == {}  # one cell: nothing varies
    assert plan["spec"]["fixed"] == {"train_steps": 20, "lr": 5e-4}  # what differs from defaults

    _fake_cell(mine / "b", cfg.replace(dataset_size=16), 0.25)
    _fake_cell(mine / "c", cfg.replace(dataset_size=16, augmentation="strong"), 0.125)
    problem = report_problem(mine)  # two new cells, report not rebuilt: refused, with the fix
    assert "out of date" in problem and "b (absent in the report, complete on disk)" in problem
    assert f"memstudy report {mine}" in problem
    with pytest.raises(RuntimeError, match="out of date"):
        load_report(mine)
    df = write_report(mine)
    df.drop(columns="tau").to_parquet(mine / "report.parquet")  # as an older memstudy wrote it
    assert "other columns" in report_problem(mine) and "tau" in report_problem(mine)
    df = write_report(mine)
    plan = derived_plan(df, mine)
    assert plan["spec"]["axes"] == {"augmentation": ["none", "strong"], "dataset_size": [8, 16]}
    # base = the most common level: dataset_size 16 (two cells), augmentation none (two cells)
    assert plan["spec"]["base"] == {"augmentation": "none", "dataset_size": 16}
    assert [c["id"] for c in plan["cells"]] == ["a", "b", "c"]


# Budgets of one smoke cell (seconds on a CPU), as in the `tiny` grid.
TINY_CELL = {"ae_steps": 10, "encoder_steps": 10, "train_steps": 20, "ddim_steps": 5,
             "num_gen": 16, "holdout_size": 16}


def jupyter_book(out: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "jupyter-book"), "build", str(ROOT), "-W", "-n", "--keep-going",
                           "--path-output", str(out)], env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
def test_book_builds_from_result_files(tmp_path):
    from memstudy.analysis.book import provenance_facts
    from memstudy.analysis.publish import grid_provenance
    from memstudy.analysis.report import write_report
    from memstudy.pipeline.runner import run_grid
    from memstudy.runio import read_json, write_json_atomic
    from memstudy.validation.planted import run_benchmark

    results = tmp_path / "results"
    summary = run_grid("tiny", results_dir=results, progress=False)
    assert not summary.failed, summary.failed
    write_report(results / "tiny")
    run_benchmark(n_train=16, n_holdout=16, n_per_change=4, n_novel=16, encoder_steps=10,
                  detectors=("contrastive", "pixel", "nn_ratio", "ssim"), tau_draws=4,
                  out_dir=results / "validation", progress=False)
    # Reference mode, as a reader with the published results and a run of their own sees the
    # book: the tiny grid plays the reference (with the provenance `memstudy publish` writes),
    # a copy of it under another preset name plays "your run".
    prov = grid_provenance(results / "tiny", {c["id"]: "complete" for c in
                                              read_json(results / "tiny" / "grid.json")["cells"]})
    write_json_atomic(results / "tiny" / "provenance.json", prov)
    # read back as the book reads it (keys sorted: cells run across commits list their shas so)
    facts = provenance_facts(read_json(results / "tiny" / "provenance.json"))
    yours = tmp_path / "yours" / "tiny-yours"
    shutil.copytree(results / "tiny", yours)
    write_json_atomic(yours / "grid.json", {**read_json(yours / "grid.json"), "name": "tiny-yours"})
    env = {k: v for k, v in os.environ.items() if k not in ("MEMSTUDY_RESULTS", "MEMSTUDY_BOOK_PRESET")}
    env |= {"MEMSTUDY_REFERENCE": str(results / "tiny"), "MEMSTUDY_YOUR_RUN": str(yours)}
    out = jupyter_book(tmp_path / "book", env)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    html = tmp_path / "book" / "_build" / "html"
    page = (html / "book" / "results_cell.html").read_text()
    assert "tiny/aug-none_size-XS_n-8_model-ldm_seed-0" in page  # names the run it shows
    intro = BeautifulSoup((html / "book" / "intro.html").read_text(), "html.parser").get_text(" ")
    for said in ("Results shown: the reference run", "Your run", str(yours),
                 "Where memstudy agrees with the papers", *(f for f in (
                     facts["machine"], facts["sha"], facts["packages"]) if f)):
        assert said in intro, said  # the intro names both sources and the reference's provenance
    said = re.findall(r"\(((?:Dar|Akbar) et al\.[^)]*)\):\s+memstudy\s+(agrees|disagrees|cannot tell)", intro)
    assert len(said) >= 6, said  # every published claim gets an answer (the tiny grid's: cannot tell)
    grid = BeautifulSoup((html / "book" / "results_grid.html").read_text(), "html.parser").get_text(" ")
    assert "another preset" in grid and "directions compare, rates do not" in grid
    pages = toc_pages()
    assert {f"book/{name}" for name in ("intro", "cohort", "methods", "results_grid", "families",
                                        "detectors", "comparison", "cpu_regime", "rerun")} <= set(pages)
    problems = {page: page_problems(page_source(page), html / f"{page}.html") for page in pages}
    assert not any(problems.values()), {k: v for k, v in problems.items() if v}

    # book/rerun.md as a new user follows it, into the same build folder: one cell of their
    # own, its report, the book rebuilt with their folder. No page source changed, so only
    # the book's extension makes Sphinx re-execute the pages.
    def memstudy(*args):
        done = subprocess.run([str(BIN / "memstudy"), *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    env |= {"MEMSTUDY_RESULTS": str(results), "MEMSTUDY_BOOK_PRESET": "mine"}  # explicit mode
    memstudy("cell", "--no-progress", "--run-dir", "results/mine/smoke1", "--param", "device=cpu",
             *[f"--param={k}={v}" for k, v in TINY_CELL.items()])
    stale = jupyter_book(tmp_path / "book", env)  # forgot `memstudy report`: refused, loudly
    assert stale.returncode != 0
    assert "memstudy report" in stale.stdout + stale.stderr
    memstudy("report", "results/mine")
    out = jupyter_book(tmp_path / "book", env)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    page = (html / "book" / "results_cell.html").read_text()
    assert "mine/smoke1" in page and "tiny/aug-none" not in page
    for name in ("results_grid", "cpu_regime", "comparison"):  # every page re-executed
        assert "smoke1" in (html / "book" / f"{name}.html").read_text(), name


def test_reference_mode_picks_the_published_grid_and_refuses_a_stale_run_of_yours(tmp_path, monkeypatch):
    """Source selection: explicit variables win; else the reference grid with its provenance;
    your run beside it only with a current report, and a stale one stops the build."""
    from types import SimpleNamespace

    from sphinx.errors import ExtensionError

    from memstudy.analysis import book
    from memstudy.analysis.report import write_report
    from memstudy.config import RunConfig
    from memstudy.runio import write_json_atomic

    for var in ("MEMSTUDY_RESULTS", "MEMSTUDY_BOOK_PRESET", "MEMSTUDY_YOUR_RUN"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "_config.yml").write_text("title: t\n")
    monkeypatch.chdir(tmp_path)
    ref = tmp_path / "reference" / "reference"
    monkeypatch.setenv("MEMSTUDY_REFERENCE", str(ref))
    assert not book.reference_mode() and book.preset_dir() == tmp_path / "results" / "quick"
    _fake_cell(ref / "a", RunConfig(train_steps=20), 0.5)
    write_report(ref)
    write_json_atomic(ref / "provenance.json", {
        "preset": "reference", "cells": {"complete": 1, "failed": 0}, "git_sha": "abcdef0123456789",
        "packages": {"torch": "9.9", "monai": "8.8"}, "wall_s": 600.0, "date": "2026-11-25T10:00",
        "machine": {"cpu": "TestCPU", "cores": 2, "ram_gb": 8}})
    assert book.reference_mode() and book.preset() == "reference"
    # as `memstudy publish` writes it (analysis/publish.py: grid_provenance)
    published = book.provenance_facts({
        "preset": "reference", "cells": {"planned": 3, "complete": 2, "failed": 1},
        "git": {"sha_cells": {"fedcba9876543210": 2}}, "machine": {"cpu_model": "PubCPU",
        "logical_cores": 16, "ram_gb": 64.0}, "timing": {"grid_end_utc": "2026-11-26T01:02:03+00:00",
        "grid_wall_s": 5400.0}, "packages": {"variants": [[{"torch": "2.1", "monai": "1.3"}, 2]]}})
    assert published == {"date": "2026-11-26", "machine": "PubCPU (16 cores, 64.0 GB RAM)",
                         "sha": "fedcba98", "wall_s": 5400.0, "packages": "torch 2.1, monai 1.3",
                         "complete": 2, "failed": 1}
    assert book.provenance_facts({})["machine"] is None  # nothing recorded: nothing claimed
    assert book.preset_dir() == ref and book.results_dir() == ref.parent
    note = book.source_note()
    for part in ("reference run", "2026-11-25", "TestCPU (2 cores, 8 GB RAM)", "abcdef01", "10 min", "torch 9.9",
                 "monai 8.8", "No run of yours"):
        assert part in note, (part, note)
    app = SimpleNamespace(srcdir=str(tmp_path))
    book._check_results(app)  # no run of yours: fine

    mine = tmp_path / "results" / "quick"
    _fake_cell(mine / "b", RunConfig(train_steps=20), 0.25)  # a run of yours, report forgotten
    assert book.your_run() is None
    with pytest.raises(ExtensionError, match=f"memstudy report {mine}"):
        book._check_results(app)
    write_report(mine)
    assert book.your_run() == mine
    assert "**Your run** (`results/quick`, 1 complete cell)" in book.source_note()
    book._check_results(app)

    monkeypatch.setenv("MEMSTUDY_BOOK_PRESET", "quick")  # explicit: exactly as before
    assert not book.reference_mode() and book.preset_dir() == mine and book.your_run() is None

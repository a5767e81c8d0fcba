"""Small helpers for the book's pages, so each page stays a few readable lines.

**Which results the book shows** (:func:`preset_dir`), in this order:

1. *explicit*: when ``$MEMSTUDY_RESULTS`` or ``$MEMSTUDY_BOOK_PRESET`` is set, exactly
   ``$MEMSTUDY_RESULTS/$MEMSTUDY_BOOK_PRESET`` (defaults ``results`` and ``quick``);
2. *reference*: else, when the published reference grid exists (``$MEMSTUDY_REFERENCE``,
   default ``<book root>/reference/reference``, with its ``report.parquet``), that grid; the
   results root is then its parent, which also holds the published detector benchmark;
3. else ``results/quick``, what the README's main command runs.

In reference mode the reader's own grid (:func:`your_run`: ``$MEMSTUDY_YOUR_RUN``, else
``results/reference``, else ``results/quick``) is shown beside the reference when it has
complete cells, and every results page opens with :func:`source_note`, which names both.
Nothing here trains or samples.

This module is also a Sphinx extension (``_config.yml``: ``extra_extensions``). Sphinx
re-executes only the pages whose *source* changed, so without it a rebuild after new runs, or
with another preset, would silently keep the old numbers. The extension re-reads every page on
every build and stops the build, with the command that fixes it, when the results shown (or the
reader's run beside them) are missing or a ``report.parquet`` no longer matches its run folders.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from pathlib import Path
from typing import Any

from ..runio import RESULTS_ENV, read_json

PRESET_ENV = "MEMSTUDY_BOOK_PRESET"
REFERENCE_ENV = "MEMSTUDY_REFERENCE"  # the published reference grid (a folder of run folders)
YOUR_RUN_ENV = "MEMSTUDY_YOUR_RUN"  # the reader's own grid, shown beside the reference
REFERENCE_DIR = Path("reference") / "reference"  # where `memstudy publish` puts it, in the repo
YOUR_RUN_DIRS = (Path("results") / "reference", Path("results") / "quick")  # first with cells


def book_root() -> Path:
    """The folder holding ``_config.yml``: the book runs its pages from ``book/``, so a
    relative results path must be read from here, not from the working directory."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "_config.yml").exists():
            return folder
    return here


def _from_root(path: str | Path, root: Path | None) -> Path:
    path = Path(path)
    return path if path.is_absolute() else (root or book_root()) / path


def explicit() -> bool:
    """Did the reader name the results (``$MEMSTUDY_RESULTS`` / ``$MEMSTUDY_BOOK_PRESET``)?"""
    return RESULTS_ENV in os.environ or PRESET_ENV in os.environ


def reference_dir(root: Path | None = None) -> Path:
    return _from_root(os.environ.get(REFERENCE_ENV, REFERENCE_DIR), root)


def reference_mode(root: Path | None = None) -> bool:
    """True when the book shows the published reference grid (see the module's docstring)."""
    return not explicit() and (reference_dir(root) / "report.parquet").exists()


def preset() -> str:
    """The name of the results shown: the reference's preset (from its provenance, else its
    plan), else ``$MEMSTUDY_BOOK_PRESET`` (default ``quick``)."""
    if reference_mode():
        ref = reference_dir()
        name = provenance().get("preset")
        if not name and (ref / "grid.json").exists():
            name = read_json(ref / "grid.json").get("name")
        return str(name or ref.name)
    return os.environ.get(PRESET_ENV, "quick")


def results_dir(root: Path | None = None) -> Path:
    """The results root: the reference grid's parent in reference mode (it holds the
    published ``validation_64px/`` too), else ``$MEMSTUDY_RESULTS`` (absolute, or relative to
    the book's root), default ``results``."""
    if reference_mode(root):
        return reference_dir(root).parent
    return _from_root(os.environ.get(RESULTS_ENV, "results"), root)


def preset_dir(root: Path | None = None) -> Path:
    if reference_mode(root):
        return reference_dir(root)
    return results_dir(root) / preset()


def provenance(root: Path | None = None) -> dict[str, Any]:
    """The reference grid's ``provenance.json`` (written by ``memstudy publish``), or {}.
    Read with ``.get`` throughout: its fields may grow."""
    path = reference_dir(root) / "provenance.json"
    return read_json(path) if path.exists() else {}


def provenance_facts(prov: dict[str, Any]) -> dict[str, Any]:
    """What the source note says about the reference, from either layout of ``provenance.json``
    (flat: ``date, git_sha, wall_s, machine.cpu/cores``; or as ``memstudy publish`` writes it:
    ``timing.grid_end_utc/grid_wall_s, git.sha_cells, machine.cpu_model/logical_cores``).
    Absent fields are None, never an error."""
    timing, machine = prov.get("timing") or {}, prov.get("machine") or {}
    shas = prov.get("git_sha") or prov.get("git_shas") or list((prov.get("git") or {}).get("sha_cells") or {})
    shas = [shas] if isinstance(shas, str) else [s for s in shas if s]
    cpu = machine.get("cpu") or machine.get("cpu_model")
    cores = machine.get("cores") or machine.get("logical_cores")
    ram = machine.get("ram_gb")
    packages = prov.get("packages") or {}
    if "variants" in packages:  # the cells ran with different versions: name the commonest
        packages = packages["variants"][0][0] if packages["variants"] else {}
    cells = prov.get("cells") or {}
    date = prov.get("date") or timing.get("grid_end_utc") or prov.get("date_utc")
    size = ", ".join(x for x in (f"{cores} cores" if cores else "", f"{ram} GB RAM" if ram else "") if x)
    return {"date": str(date)[:10] if date else None,
            "machine": f"{cpu or 'an unnamed CPU'}{f' ({size})' if size else ''}" if cpu or size else None,
            "sha": ", ".join(str(s)[:8] for s in shas) or None,
            "wall_s": prov.get("wall_s") or timing.get("grid_wall_s"),
            "packages": ", ".join(f"{k} {packages[k]}" for k in ("torch", "monai") if k in packages) or None,
            "complete": cells.get("complete"), "failed": cells.get("failed")}


def _has_cells(folder: Path) -> bool:
    return folder.is_dir() and any((p / "metrics.json").exists() for p in folder.iterdir() if p.is_dir())


def your_run_candidate(root: Path | None = None) -> Path | None:
    """The reader's own grid folder, whatever the state of its report: ``$MEMSTUDY_YOUR_RUN``
    if set, else the first of ``results/reference`` and ``results/quick`` with a complete
    cell. Only in reference mode (otherwise the reader's run is what the book shows)."""
    if not reference_mode(root):
        return None
    if YOUR_RUN_ENV in os.environ:
        return _from_root(os.environ[YOUR_RUN_ENV], root)
    return next((f for f in (_from_root(d, root) for d in YOUR_RUN_DIRS) if _has_cells(f)), None)


def your_run(root: Path | None = None) -> Path | None:
    """The reader's grid to show beside the reference: :func:`your_run_candidate` when it has
    complete cells and a current report, else None (the Sphinx check refuses a stale one)."""
    folder = your_run_candidate(root)
    if folder is None or folder.resolve() == reference_dir(root).resolve():
        return None
    return folder if _has_cells(folder) and report_problem(folder) is None else None


def shown_path(folder: Path) -> str:
    """A folder as a reader would type it: relative to the book's root when inside it."""
    root = book_root()
    return str(folder.relative_to(root)) if folder.is_relative_to(root) else str(folder)


def source_note() -> str:
    """The paragraph each results page opens with: which results it shows, made where, when
    and how, and whether the reader's own run is shown beside them (or how to make one)."""
    here = preset_dir()
    if not reference_mode():
        why = ("named by `$MEMSTUDY_RESULTS` / `$MEMSTUDY_BOOK_PRESET`" if explicit() else
               "the reference results are not in this checkout")
        return (f"**Results shown: `{shown_path(here)}`** (preset `{preset()}`, {why}). Every number "
                "and figure on this page is computed from that folder when the book is built.")
    facts = provenance_facts(provenance())
    made = [f"made {facts['date']}" if facts["date"] else "",
            f"on {facts['machine']}" if facts["machine"] else "",
            f"with memstudy {facts['sha']}" if facts["sha"] else "",
            f"in {facts['wall_s'] / 60:,.0f} min of wall time" if facts["wall_s"] else ""]
    made = " ".join(m for m in made if m)
    complete = facts["complete"] if facts["complete"] is not None else len(complete_cells(here))
    failed = f", {facts['failed']} failed" if facts["failed"] else ""
    text = (f"**Results shown: the reference run** (`{shown_path(here)}`, preset `{preset()}`, "
            f"{complete} complete cells{failed}){', ' + made if made else ''}"
            f"{'; ' + facts['packages'] if facts['packages'] else ''}. ")
    mine = your_run()
    if mine is not None:
        n = len(complete_cells(mine))
        text += (f"**Your run** (`{shown_path(mine)}`, {n} complete cell{'s' * (n != 1)}) is shown "
                 "beside it where a page compares the two; everything else on the page is the "
                 "reference's.")
    else:
        text += ("No run of yours is shown beside it: run `memstudy grid run quick` (or "
                 "`memstudy cell`, then `memstudy report`) and rebuild, and the grid chapter "
                 f"puts your replicates beside these (or set `{YOUR_RUN_ENV}`).")
    return text


def complete_cells(root: Path | None = None) -> list[Path]:
    """Complete run folders of the preset, in the order the grid planned them."""
    root = root or preset_dir()
    plan = root / "grid.json"
    names = ([c["id"] for c in read_json(plan)["cells"]] if plan.exists()
             else sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else [])
    cells = [root / n for n in names if (root / n / "metrics.json").exists()]
    if not cells:
        raise FileNotFoundError(
            f"No complete run folder under {root}. Run the grid first: "
            f"`memstudy grid run {preset()}` (or set {PRESET_ENV} / {RESULTS_ENV}).")
    return cells


def figure(path: Path, caption: str = "") -> None:
    """Show a PNG from a run folder, captioned with the folder it came from."""
    from IPython.display import Image, Markdown, display

    path = Path(path)
    if path.name.startswith(PATIENT_FIGURES) and not patient_images_allowed(path.parent.parent):
        display(Markdown(privacy_notice(path.parent.parent)))  # real patients: numbers only
        return
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: rerun the cell that should have written it.")
    display(Image(filename=str(path)))
    where = path.relative_to(results_dir()) if path.is_relative_to(results_dir()) else path
    display(Markdown(f"*{caption}{' — ' if caption else ''}from `{where}`.*"))


PATIENT_FIGURES = ("gallery_", "train_examples")  # run-folder figures showing patient pixels


def patient_images_allowed(run_dir: Path) -> bool:
    """May a page show this run's training and holdout pixels? Always for the generated
    cohort; for real patients only if the run set ``show_patient_images``."""
    cfg = read_json(Path(run_dir) / "config.json")
    return cfg.get("dataset", "cohort") == "cohort" or bool(cfg.get("show_patient_images"))


def privacy_notice(run_dir: Path) -> str:
    """What a page says instead of a figure of real patients' images."""
    cfg = read_json(Path(run_dir) / "config.json")
    data = Path(run_dir) / "data.json"
    ids = read_json(data).get("patient_ids") if data.exists() else None
    return (f"*Not shown: this figure would show images of real patients (`{cfg['dataset']}`). "
            "The numbers on this page are computed from them; the figure was not drawn, not even in "
            "the run folder. Set `show_patient_images: true` only for data you may publish."
            + (f" Patient ids: {ids}." if ids else "") + "*")


def show(fig, caption: str) -> None:
    """Show a matplotlib figure made while the page builds (not read from a run folder).

    A figure is not displayed by being made or assigned, and ``plt.show()`` shows nothing once
    :mod:`memstudy.viz` has switched matplotlib to its file-only backend: render it here,
    explicitly, and say in the caption what made it, as a run folder's name does elsewhere.
    """
    import matplotlib.pyplot as plt
    from IPython.display import Image, Markdown, display

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)  # shown once, here, not again by the notebook backend at the end of the cell
    display(Image(data=buffer.getvalue(), format="png"))
    display(Markdown(f"*{caption}*"))


def last_step_figures(run_dir: Path, detector: str = "contrastive") -> tuple[Path, Path]:
    """Histogram and gallery of a run's last checkpoint for one detector."""
    step = max(int(r["step"]) for r in read_json(run_dir / "metrics.json")["rows"])
    tag = f"step{step:06d}_{detector}"
    return run_dir / "figures" / f"hist_{tag}.png", run_dir / "figures" / f"gallery_{tag}.png"


def report_problem(root: Path) -> str | None:
    """Why ``root``'s report cannot be shown as the results on disk, or None when it can.

    The report is current when it has the columns :func:`~memstudy.analysis.report.collect`
    gives now and lists the same cells, in the same states, as the run folders do (a complete
    run folder never changes, so that is all that can drift).
    """
    import pandas as pd

    from ..config import RunConfig
    from .report import collect

    path = root / "report.parquet"
    fix = f"run `memstudy report {root}`, then rebuild the book"
    if not root.is_dir():
        return (f"{root} does not exist: run `memstudy grid run {root.name}` (or point "
                f"{PRESET_ENV} / {RESULTS_ENV} at a folder of run folders).")
    if not path.exists():
        return f"{path} is missing: {fix}."
    fresh, saved = collect(root), pd.read_parquet(path)
    on_disk = fresh.drop_duplicates("cell").set_index("cell")["status"].to_dict()
    in_report = saved.drop_duplicates("cell").set_index("cell")["status"].to_dict()
    if on_disk != in_report:
        changed = sorted(c for c in on_disk.keys() | in_report.keys()
                         if on_disk.get(c) != in_report.get(c))
        shown = ", ".join(f"{c} ({in_report.get(c, 'absent')} in the report, "
                          f"{on_disk.get(c, 'absent')} on disk)" for c in changed[:3])
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        return f"{path} is out of date: {shown}{more}. To show what is on disk, {fix}."
    # Same cells, other metric columns: written by another version of memstudy. (Config
    # columns may differ legitimately: they are the settings that vary between cells.)
    differ = sorted((set(fresh.columns) ^ set(saved.columns)) - set(RunConfig.field_names()))
    if differ:
        return (f"{path} has other columns than `memstudy report` writes now "
                f"({', '.join(differ[:5])}{' ...' if len(differ) > 5 else ''}): {fix}.")
    if not any(s == "complete" for s in on_disk.values()):
        return f"no complete cell under {root} yet: run one (`memstudy grid run`, `memstudy cell`)."
    return None


def load_report(root: Path | None = None):
    """The preset's report table and grid plan, as written by ``memstudy report``.

    A folder of cells that no grid planned (``memstudy cell --run-dir results/mine/...``) has
    no ``grid.json``: its plan is derived from the report (:func:`derived_plan`).
    """
    import pandas as pd

    root = root or preset_dir()
    problem = report_problem(root)
    if problem:
        raise RuntimeError(problem)
    df = pd.read_parquet(root / "report.parquet")
    plan = root / "grid.json"
    return df, (read_json(plan) if plan.exists() else derived_plan(df, root))


def derived_plan(df, root: Path) -> dict[str, Any]:
    """A grid plan for cells run one by one, so the book reads them as it reads a grid.

    Every config field that differs between the cells is an axis; its base level is the
    level most cells share (the first cell's on a tie). Read as a star design, each axis is
    compared only among cells whose other axes sit at base, so two fields changed together
    are never credited to one of them. ``fixed`` holds the settings the cells share that
    differ from ``RunConfig``'s defaults.
    """
    from ..config import RunConfig
    from .directions import ordered_levels

    cells = df.drop_duplicates("cell")
    fields = [f for f in RunConfig.field_names() if f in df.columns and f != "seed"]
    axes = {f: [_plain(v) for v in ordered_levels(f, cells[f].dropna())]
            for f in fields if cells[f].nunique() > 1}
    base = {a: _plain(Counter(cells[a].dropna()).most_common(1)[0][0]) for a in axes}
    first = next(root / c for c in cells.cell if (root / c / "config.json").exists())
    config = RunConfig.from_json((first / "config.json").read_text())
    default = RunConfig()
    fixed = {f: _plain(getattr(config, f)) for f in RunConfig.field_names()
             if f not in axes and f != "seed" and getattr(config, f) != getattr(default, f)}
    return {"name": root.name, "derived": True,
            "source": f"derived from the run folders in {root} (no grid.json)",
            "spec": {"design": "star", "axes": axes, "base": base, "fixed": fixed},
            "cells": [{"id": c, "levels": {a: _plain(getattr(r, a)) for a in axes}}
                      for c, r in zip(cells.cell, cells.itertuples())]}


def _plain(value):
    """A JSON-able Python value (numpy scalars and tuples as the grid spec writes them)."""
    if hasattr(value, "item"):
        return value.item()
    return ",".join(map(str, value)) if isinstance(value, tuple) else value


def cells_named(df, cells, source: str | None = None) -> str:
    """Caption text naming the preset (or ``source``, e.g. the reader's run) and the cells a
    table or figure was made from."""
    cells = sorted(set(cells))
    shown = ", ".join(f"`{c}`" for c in cells[:4]) + (f" and {len(cells) - 4} more" if len(cells) > 4 else "")
    return f"{source or f'preset `{preset()}`'}, cells {shown}"


# ------------------------------------------------------------------------------------------
# Sphinx extension: every build shows the results on disk, or stops and says why


def _check_results(app) -> None:
    from sphinx.errors import ExtensionError
    from sphinx.util import logging

    srcdir = Path(app.srcdir)
    root = preset_dir(srcdir)
    problem = report_problem(root)
    if problem:
        raise ExtensionError(f"memstudy: the book cannot show preset {preset()!r}: {problem}")
    mine = your_run_candidate(srcdir)
    if mine is not None and (_has_cells(mine) or YOUR_RUN_ENV in os.environ):
        problem = report_problem(mine)  # a run of yours exists: never show it stale, or drop it
        if problem:
            raise ExtensionError(f"memstudy: your run {mine} cannot be shown beside the reference: "
                                 f"{problem}")
    logging.getLogger(__name__).info(
        f"memstudy: every page re-executes against {root} (preset {preset()!r})"
        + (f", with your run {mine} beside it" if mine is not None else ""))


def _every_page(app, env, added, changed, removed) -> list[str]:
    # Pages read results, not only their own source: re-read (and so re-execute) them all.
    return sorted(env.found_docs - added - changed - removed)


def setup(app) -> dict[str, Any]:
    """Register the checks with Sphinx (``extra_extensions: [memstudy.analysis.book]``)."""
    app.connect("builder-inited", _check_results)
    app.connect("env-get-outdated", _every_page)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

"""Small helpers for the book's pages, so each page stays a few readable lines.

The book shows one preset's results, read from files: ``$MEMSTUDY_RESULTS/<preset>/``, with
the preset from ``$MEMSTUDY_BOOK_PRESET`` (default ``quick``, what the README's main command
runs). Nothing here trains or samples.

This module is also a Sphinx extension (``_config.yml``: ``extra_extensions``). Sphinx
re-executes only the pages whose *source* changed, so without it a rebuild after new runs, or
with another preset, would silently keep the old numbers. The extension re-reads every page on
every build and stops the build, with the command that fixes it, when the preset's results are
missing or its ``report.parquet`` no longer matches the run folders.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from pathlib import Path
from typing import Any

from ..runio import RESULTS_ENV, read_json

PRESET_ENV = "MEMSTUDY_BOOK_PRESET"


def preset() -> str:
    return os.environ.get(PRESET_ENV, "quick")


def book_root() -> Path:
    """The folder holding ``_config.yml``: the book runs its pages from ``book/``, so a
    relative results path must be read from here, not from the working directory."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "_config.yml").exists():
            return folder
    return here


def results_dir(root: Path | None = None) -> Path:
    """``$MEMSTUDY_RESULTS`` (absolute, or relative to the book's root), default ``results``."""
    path = Path(os.environ.get(RESULTS_ENV, "results"))
    return path if path.is_absolute() else (root or book_root()) / path


def preset_dir(root: Path | None = None) -> Path:
    return results_dir(root) / preset()


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


def cells_named(df, cells) -> str:
    """Caption text naming the preset and the cells a table or figure was made from."""
    cells = sorted(set(cells))
    shown = ", ".join(f"`{c}`" for c in cells[:4]) + (f" and {len(cells) - 4} more" if len(cells) > 4 else "")
    return f"preset `{preset()}`, cells {shown}"


# ------------------------------------------------------------------------------------------
# Sphinx extension: every build shows the results on disk, or stops and says why


def _check_results(app) -> None:
    from sphinx.errors import ExtensionError
    from sphinx.util import logging

    root = preset_dir(Path(app.srcdir))
    problem = report_problem(root)
    if problem:
        raise ExtensionError(f"memstudy: the book cannot show preset {preset()!r}: {problem}")
    logging.getLogger(__name__).info(
        f"memstudy: every page re-executes against {root} (preset {preset()!r})")


def _every_page(app, env, added, changed, removed) -> list[str]:
    # Pages read results, not only their own source: re-read (and so re-execute) them all.
    return sorted(env.found_docs - added - changed - removed)


def setup(app) -> dict[str, Any]:
    """Register the checks with Sphinx (``extra_extensions: [memstudy.analysis.book]``)."""
    app.connect("builder-inited", _check_results)
    app.connect("env-get-outdated", _every_page)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

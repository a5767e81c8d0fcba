"""Small helpers for the book's pages, so each page stays a few readable lines.

The book shows one preset's results, read from files: ``$MEMSTUDY_RESULTS/<preset>/``, with
the preset from ``$MEMSTUDY_BOOK_PRESET`` (default ``quick``, what the README's main command
runs). Nothing here trains or samples.
"""

from __future__ import annotations

import os
from pathlib import Path

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


def results_dir() -> Path:
    """``$MEMSTUDY_RESULTS`` (absolute, or relative to the book's root), default ``results``."""
    path = Path(os.environ.get(RESULTS_ENV, "results"))
    return path if path.is_absolute() else book_root() / path


def preset_dir() -> Path:
    return results_dir() / preset()


def complete_cells(root: Path | None = None) -> list[Path]:
    """Complete run folders of the preset, in the order the grid planned them."""
    root = root or preset_dir()
    plan = root / "grid.json"
    names = ([c["id"] for c in read_json(plan)["cells"]] if plan.exists()
             else sorted(p.name for p in root.iterdir() if p.is_dir()))
    cells = [root / n for n in names if (root / n / "metrics.json").exists()]
    if not cells:
        raise FileNotFoundError(
            f"No complete run folder under {root}. Run the grid first: "
            f"`memstudy grid run {preset()}` (or set {PRESET_ENV} / MEMSTUDY_RESULTS).")
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



def last_step_figures(run_dir: Path, detector: str = "contrastive") -> tuple[Path, Path]:
    """Histogram and gallery of a run's last checkpoint for one detector."""
    step = max(int(r["step"]) for r in read_json(run_dir / "metrics.json")["rows"])
    tag = f"step{step:06d}_{detector}"
    return run_dir / "figures" / f"hist_{tag}.png", run_dir / "figures" / f"gallery_{tag}.png"


def load_report(root: Path | None = None):
    """The preset's report table and grid plan, as written by ``memstudy report``."""
    import pandas as pd

    root = root or preset_dir()
    path = root / "report.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `memstudy report {root}` after the grid.")
    return pd.read_parquet(path), read_json(root / "grid.json")


def cells_named(df, cells) -> str:
    """Caption text naming the preset and the cells a table or figure was made from."""
    cells = sorted(set(cells))
    shown = ", ".join(f"`{c}`" for c in cells[:4]) + (f" and {len(cells) - 4} more" if len(cells) > 4 else "")
    return f"preset `{preset()}`, cells {shown}"

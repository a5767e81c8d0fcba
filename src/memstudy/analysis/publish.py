"""Publish a grid's results as small files the repository can hold, and the book builds from.

``memstudy publish results/reference --to reference --validation results/validation_64px``
makes ``reference/`` a *results root* (the shape of ``results/``)::

    reference/README.md                 what is here, which command made it, how to check it
    reference/<preset>/                 grid.json, report.parquet/.csv, provenance.json and,
        <cell>/                         per cell, config/metrics/env.json, stats.jsonl, eval/
                                        and only the figures the book shows
    reference/<validation folder>/      the detector benchmark's tables, benchmark.json, figures

What may be published is an explicit allow list (:func:`allowed`), never a deny list: a file
kind the pipeline adds later stays out until someone decides it belongs in a public book.
Checkpoints, samples, notebooks, split.json and data.json never do.

The whole root is written into a temporary folder beside the target and then renamed into
place, so a failed publish leaves the previous one as it was. A grid on real data is refused:
a published book must never hold patient pixels, patient ids or per-patient scores of real
patients (eval/*.npz hold per-sample scores and training patient ids).
"""

from __future__ import annotations

import fnmatch
import json
import os
import platform
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from ..config import ConfigError
from ..runio import cell_status, read_json, write_bytes_atomic, write_json_atomic

# The allow list, relative to a grid folder / a cell folder / a validation folder.
GRID_FILES = ("grid.json", "report.parquet", "report.csv", "provenance.json")
CELL_FILES = ("config.json", "metrics.json", "env.json", "stats.jsonl")
CELL_PATTERNS = ("eval/*.json", "eval/*.npz")  # per-sample scores: kilobytes, not images
FIGURE_PATTERNS = ("figures/hist_step*_*.png", "figures/gallery_step*_*.png",
                   "figures/training_curve.png")
# scores.csv is left out: the same per-query scores are in scores.parquet at a tenth the size
VALIDATION_PATTERNS = ("validation.csv", "recall.csv", "paired.csv", "per_seed.csv",
                       "tau_rule.csv", "*.parquet",
                       "benchmark.json", "*.png")
ROOT_FILES = ("README.md",)
SIZE_LIMIT_MB = 20.0  # the 65-cell reference + dims + two benchmarks: ~16 MB, two thirds figures


class PublishError(ConfigError):
    """A grid or folder that must not (or cannot) be published; nothing was written."""


def allowed(rel: str | PurePosixPath, kind: str) -> bool:
    """May a file at ``rel`` (relative to a published folder of ``kind``) be published?

    ``kind`` is ``root`` (the results root: its README), ``grid`` (a grid folder: its own files
    and ``<cell>/...``) or ``validation`` (a ``memstudy validate`` folder). ``fnmatch``'s ``*``
    crosses ``/``, so patterns are matched per depth.
    """
    parts = PurePosixPath(rel).parts
    if kind == "root":
        return len(parts) == 1 and parts[0] in ROOT_FILES
    if kind == "validation":
        return len(parts) == 1 and any(fnmatch.fnmatchcase(parts[0], p) for p in VALIDATION_PATTERNS)
    if kind != "grid":
        raise ValueError(f"unknown kind {kind!r}: root, grid or validation")
    if len(parts) == 1:
        return parts[0] in GRID_FILES
    inner = parts[1:]
    if len(inner) == 1:
        return inner[0] in CELL_FILES
    if len(inner) == 2:
        path = "/".join(inner)
        return any(fnmatch.fnmatchcase(path, p) for p in CELL_PATTERNS + FIGURE_PATTERNS)
    return False


def disallowed_files(root: str | Path) -> list[str]:
    """Every file under a published results root that the allow list does not admit.

    A sub-folder with ``grid.json`` is a grid, one with ``benchmark.json`` a validation
    folder; anything else at the top (or any file in an unknown folder) is disallowed.
    """
    root = Path(root)
    bad = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if len(rel.parts) == 1:
            ok = allowed(rel, "root")
        else:
            top = root / rel.parts[0]
            kind = ("grid" if (top / "grid.json").exists()
                    else "validation" if (top / "benchmark.json").exists() else None)
            ok = kind is not None and allowed(PurePosixPath(*rel.parts[1:]), kind)
        if not ok:
            bad.append(rel.as_posix())
    return bad


def folder_size(root: str | Path) -> tuple[int, int]:
    """(bytes, file count) of every file under ``root``."""
    files = [p for p in Path(root).rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


@dataclass(frozen=True)
class Published:
    """What one publish wrote."""

    root: Path
    size_bytes: int
    n_files: int
    provenance: dict[str, Any]  # the grid's; empty when only benchmarks were published

    def format(self) -> str:
        return (f"published {self.root}: {self.n_files} files, {self.size_bytes / 1e6:.2f} MB "
                f"(limit {SIZE_LIMIT_MB:.0f} MB)")


def figure_cells(grid_dir: Path) -> dict[str, list[str]]:
    """Which cells' figures are published, and which: ``{cell: [figure file names]}``.

    The first complete replicate (planned order) of every grid point: histogram and gallery of
    every detector at its last checkpoint, and its training curve when it has one. The pages
    pick their cells by rules of their own (results_cell.md: the first complete cell;
    families.md: each family's first cell at base; three_d.md: the smallest 3D cell's first
    seed), and every one of those is some grid point's first replicate, so one general rule
    covers pages written later too, at about a fifth of the size of every cell's figures.
    """
    plan = read_json(grid_dir / "grid.json")
    chosen: dict[str, list[str]] = {}
    points: set[tuple] = set()
    for c in plan["cells"]:
        run_dir = grid_dir / c["id"]
        point = tuple(sorted((k, str(v)) for k, v in c["levels"].items() if k != "seed"))
        if point in points or cell_status(run_dir) != "complete":
            continue
        points.add(point)
        detectors = read_json(run_dir / "config.json")["detectors"]
        names = [n for d in detectors for n in _last_step_names(run_dir, d)]
        if (run_dir / "figures" / "training_curve.png").exists():
            names.append("training_curve.png")
        chosen[c["id"]] = sorted(names)
    return chosen


def _last_step_names(run_dir: Path, detector: str) -> list[str]:
    """Histogram and gallery names of a run's last checkpoint (as analysis.book finds them)."""
    step = max(int(r["step"]) for r in read_json(run_dir / "metrics.json")["rows"])
    return [f"hist_step{step:06d}_{detector}.png", f"gallery_step{step:06d}_{detector}.png"]


def check_grid(grid_dir: Path, allow_incomplete: bool = False) -> dict[str, str]:
    """Status of every planned cell; raise PublishError for what may not be published."""
    if not (grid_dir / "grid.json").exists():
        raise PublishError(f"{grid_dir} has no grid.json: give a grid folder written by "
                           "`memstudy grid run`, e.g. results/reference.")
    plan = read_json(grid_dir / "grid.json")
    status = {c["id"]: cell_status(grid_dir / c["id"]) for c in plan["cells"]}
    real = sorted({read_json(p).get("dataset", "cohort") for p in grid_dir.glob("*/config.json")}
                  - {"cohort"})
    if real:
        raise PublishError(
            f"{grid_dir} was run on real data ({', '.join(real)}): refusing to publish. A "
            "published book or repository must never hold patient pixels, patient ids or "
            "per-patient scores of real patients (samples/, checkpoints, eval/*.npz, split.json, "
            "data.json, galleries). Publish a grid on the generated cohort (dataset: cohort).")
    if not any(s == "complete" for s in status.values()):
        raise PublishError(f"{grid_dir}: no complete cell; run the grid first.")
    unfinished = {c: s for c, s in status.items() if s != "complete"}
    if unfinished and not allow_incomplete:
        counts = Counter(unfinished.values())
        raise PublishError(
            f"{grid_dir}: {len(unfinished)} of {len(status)} cells are not complete "
            f"({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}; e.g. "
            f"{next(iter(unfinished))}). Finish them (`memstudy grid run {plan['name']}` resumes) "
            "or pass --allow-incomplete to publish the complete ones and say so.")
    return status


def check_validation(folder: Path) -> None:
    if not (folder / "benchmark.json").exists():
        raise PublishError(f"{folder} has no benchmark.json: give a complete `memstudy validate` "
                           "results folder, e.g. results/validation_64px.")
    dataset = read_json(folder / "benchmark.json").get("params", {}).get("dataset", "cohort")
    if dataset != "cohort":
        raise PublishError(f"{folder}: the benchmark ran on real data ({dataset}): refusing to "
                           "publish (patient pixels and per-patient scores must never be published).")


def publish(grid_dir: str | Path | None, to: str | Path = "reference",
            validation: tuple[str | Path, ...] = (), allow_incomplete: bool = False,
            grid_command: str | None = None, command: str | None = None) -> Published:
    """Copy the allow-listed files of a grid (and validation folders) into the results root
    ``to``, rebuild the grid's report from the copied cells, write provenance and README.

    Other folders already in ``to`` are kept; a folder of the same name is replaced. Every
    check runs before anything is written; the new root is assembled beside ``to`` and
    renamed into place. ``grid_dir=None`` publishes the validation folders alone (a new
    benchmark beside grids published before, which stay as they were).
    """
    to = Path(to)
    validation = tuple(Path(v) for v in validation)
    if grid_dir is None and not validation:
        raise PublishError("nothing to publish: give a grid folder, --validation folders, or both.")
    grid_dir = None if grid_dir is None else Path(grid_dir)
    status = check_grid(grid_dir, allow_incomplete) if grid_dir is not None else {}
    for folder in validation:
        check_validation(folder)
    names = [*([grid_dir.name] if grid_dir is not None else []), *(v.name for v in validation)]
    if len(set(names)) < len(names):
        raise PublishError(f"two published folders would share a name: {names}")

    to.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=to.parent, prefix=f".{to.name}.publish-"))
    try:
        if to.is_dir():  # keep what an earlier publish put there and this one does not replace
            for entry in to.iterdir():
                if entry.is_dir() and entry.name not in names:
                    shutil.copytree(entry, tmp / entry.name, copy_function=shutil.copy2)
        for folder in validation:
            _copy_allowed(folder, tmp / folder.name, "validation")
        provenance = {}
        if grid_dir is not None:
            from .report import write_report

            _copy_grid(grid_dir, tmp / grid_dir.name, status)
            write_report(tmp / grid_dir.name)  # the report matches the copied cells, nothing else
            provenance = grid_provenance(grid_dir, status, grid_command, command)
            write_json_atomic(tmp / grid_dir.name / "provenance.json", provenance)
        write_bytes_atomic(tmp / "README.md", readme(tmp, to.name).encode())
        bad = disallowed_files(tmp)
        if bad:  # cannot happen through _copy_*: a kept older folder holds something else
            raise PublishError(f"{to} would hold files outside the allow list: {bad[:5]}; "
                               "remove them from the existing folder first.")
        _swap(tmp, to)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size, n = folder_size(to)
    return Published(to, size, n, provenance)


def _copy_grid(src: Path, dst: Path, status: dict[str, str]) -> None:
    figures = figure_cells(src)
    dst.mkdir(parents=True)
    shutil.copy2(src / "grid.json", dst / "grid.json")
    for cell, state in status.items():
        if state != "complete":  # --allow-incomplete: its config alone, so the report says
            if (src / cell / "config.json").exists():  # "incomplete" (provenance: exact states)
                (dst / cell).mkdir()
                shutil.copy2(src / cell / "config.json", dst / cell / "config.json")
            continue
        for path in sorted((src / cell).rglob("*")):
            rel = path.relative_to(src)
            if not path.is_file() or not allowed(rel, "grid"):
                continue
            if rel.parts[1] == "figures" and path.name not in figures.get(cell, ()):
                continue  # a figure the book does not show
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dst / rel)  # copy2 keeps mtimes: provenance reads them


def _copy_allowed(src: Path, dst: Path, kind: str) -> None:
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_file() and allowed(rel, kind):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dst / rel)


def _swap(new: Path, target: Path) -> None:
    """Put ``new`` in place of ``target``: two renames; the old root is removed only after."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)  # put the previous publish back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# Provenance


def grid_provenance(grid_dir: Path, status: dict[str, str], grid_command: str | None = None,
                    command: str | None = None) -> dict[str, Any]:
    """What made the published results, from the cells' own files and this machine."""
    plan = read_json(grid_dir / "grid.json")
    done = [grid_dir / c for c, s in status.items() if s == "complete"]
    envs = [read_json(d / "env.json") for d in done if (d / "env.json").exists()]
    metrics = [read_json(d / "metrics.json") for d in done]
    starts = [(d / "config.json").stat().st_mtime for d in done]
    ends = [(d / "metrics.json").stat().st_mtime for d in done]
    profile = {kind: round(sum(m.get("profile_s", {}).get(kind, {}).get("total", 0.0)
                               for m in metrics), 1) for kind in ("cpu", "wall")}
    return {
        "preset": plan["name"],
        "spec_source": plan.get("source"),
        "cells": {"planned": len(status), **Counter(status.values())},
        "git": {"sha_cells": dict(Counter(e.get("git_sha") for e in envs)),
                "dirty_cells": sum(bool(e.get("git_dirty")) for e in envs),
                "clean_cells": sum(not e.get("git_dirty") for e in envs)},
        "python": _variants(e.get("python") for e in envs),
        "packages": _variants((json.dumps(e.get("packages"), sort_keys=True) for e in envs),
                              parse=json.loads),
        "device": _variants(e.get("device") for e in envs),
        "torch_threads": _variants(e.get("torch_threads") for e in envs),
        "cell_platform": _variants(e.get("platform") for e in envs),
        "machine": machine(),
        "machine_note": "the machine that ran `memstudy publish`; the grid's own machine is "
                        "cell_platform (env.json) - the same when published where it ran",
        "timing": {
            "grid_start_utc": _iso(min(starts)), "grid_end_utc": _iso(max(ends)),
            "grid_wall_s": round(max(ends) - min(starts), 1),
            "how": "first cell start = earliest config.json mtime (written before any work), "
                   "last cell end = latest metrics.json mtime (written last); includes any pause "
                   "between resumed sessions",
            "cells_profile_total_s": profile,
            "cells_profile_note": "sum over complete cells of metrics.json profile_s "
                                  "{cpu,wall}.total (the session that completed each cell)",
            "cells_wall_s_this_session": round(sum(m.get("wall_s_this_session", 0.0)
                                                   for m in metrics), 1),
        },
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "grid_command": grid_command or f"memstudy grid run {plan['name']} (reconstructed from "
                                        "grid.json; runner options such as --jobs were not recorded)",
        "publish_command": command or "memstudy.analysis.publish.publish() from Python",
    }


def _variants(values, parse=lambda v: v) -> Any:
    """One value when every cell agrees, else ``{"variants": [[value, n cells], ...]}``."""
    counts = Counter(values)
    if len(counts) == 1:
        return parse(next(iter(counts)))
    return {"variants": [[parse(v), n] for v, n in counts.most_common()]}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def machine() -> dict[str, Any]:
    """CPU model, logical cores, RAM (GB) and platform of this machine (Linux /proc files)."""
    cpu = ram = None
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in
                    Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
                   None)
        kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
        ram = round(kb / 1024**2, 1)
    except (OSError, StopIteration, ValueError):
        pass  # not Linux: the fields stay empty rather than guessed
    return {"cpu_model": cpu or platform.processor() or None, "logical_cores": os.cpu_count(),
            "ram_gb": ram, "platform": platform.platform()}


def readme(root: Path, name: str) -> str:
    """The published root's README: what is here, what made each grid, how to check it.

    Every grid folder with a ``provenance.json`` gets its section, so publishing one grid
    beside others (the 3D ``dims`` grid beside ``reference``) keeps what the others say.
    """
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    lines = [
        "# Published results of the memstudy study",
        "",
        "Written by `memstudy publish` (src/memstudy/analysis/publish.py); do not edit by hand.",
        "This folder is a *results root* (the shape of `results/`). Committed as `reference/`, the",
        "book reads its `reference/` grid by default (memstudy.analysis.book, reference mode); any",
        f"grid here is shown with `MEMSTUDY_RESULTS={name} MEMSTUDY_BOOK_PRESET=<grid>`.",
        "",
        "| folder | what |",
        "|---|---|",
    ]
    grids = [f for f in folders if (root / f / "grid.json").exists()]
    for folder in folders:
        lines.append(f"| `{folder}/` | {'grid' if folder in grids else 'validation benchmark'} |")
    for grid_name in grids:
        if not (root / grid_name / "provenance.json").exists():
            continue
        prov = read_json(root / grid_name / "provenance.json")
        cells, t = prov["cells"], prov["timing"]
        lines += [
            "",
            f"## `{grid_name}/`",
            "",
            f"- made by: `{prov['grid_command']}`",
            f"- published by: `{prov['publish_command']}` on {prov['date_utc']}",
            f"- cells: {cells.get('complete', 0)} complete of {cells['planned']} planned"
            + (f" ({cells.get('failed', 0)} failed)" if cells.get("failed") else ""),
            f"- code: git {', '.join(f'{s} ({n} cells)' for s, n in prov['git']['sha_cells'].items())}; "
            f"{prov['git']['dirty_cells']} cells ran from a dirty tree",
            f"- grid wall time {t['grid_wall_s'] / 3600:.2f} h ({t['grid_start_utc']} to "
            f"{t['grid_end_utc']}); summed per-cell CPU {t['cells_profile_total_s']['cpu'] / 3600:.2f} h, "
            f"wall {t['cells_profile_total_s']['wall'] / 3600:.2f} h",
            "- details: `provenance.json`; tables: `report.parquet` / `report.csv` (one row per cell, "
            "checkpoint and detector)",
        ]
    lines += [
        "",
        "Per cell: `config.json`, `metrics.json`, `env.json`, `stats.jsonl`, `eval/*.json` and "
        "`eval/*.npz` (per-sample similarity scores, no images), and only the figures the book shows.",
        "Never published: checkpoints, `*.pt`, `samples/`, notebooks, `split.json`, `data.json`, "
        "training-example figures. Real-data grids are refused.",
        "",
        "## Check it",
        "",
        "```",
        *(f"memstudy report --check {name}/{g}     # reruns the cheapest cell, compares" for g in grids),
        "python -m pytest -q tests/test_publish.py            # allow list and size",
        "```",
        "",
    ]
    return "\n".join(lines)

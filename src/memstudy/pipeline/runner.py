"""The grid runner: run every cell of a spec that is not complete yet, and say what happened.

The runner owns what it starts: Ctrl-C, SIGTERM or SIGHUP stop every cell's worker and kernel
within seconds (and so does its own death, see :mod:`.workers`); the stopped cells resume
from their last checkpoint when the same command runs again. Each running cell's folder is
locked, so two runners on one results folder share the cells instead of running them twice.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, RunConfig
from ..runio import (cell_status, describe_holder, error_line, is_complete, lock_holder,
                     results_root, write_json_atomic)
from . import executors
from .executors import CellJob, CellOutcome, SlurmOptions
from .grid import Cell, GridSpec, SpecError, load_spec
from .progress import GridProgress

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class GridInterrupted(KeyboardInterrupt):
    """A signal stopped the grid; ``summary`` says what finished before it.

    A KeyboardInterrupt, so that no ``except Exception`` on the way swallows it.
    """

    def __init__(self, signum: int, summary: "GridSummary | None" = None):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.summary = signum, summary



@dataclass
class GridSummary:
    """What one :func:`run_grid` call did; ``format()`` gives the printed summary."""

    name: str
    results_dir: Path
    planned: list[str]
    complete: list[str] = field(default_factory=list)  # ran to completion in this call
    skipped: list[str] = field(default_factory=list)  # already complete before this call
    failed: dict[str, str] = field(default_factory=dict)  # cell id -> first line of the error
    locked: dict[str, str] = field(default_factory=dict)  # cell id -> who runs it (another runner)
    stopped: list[str] = field(default_factory=list)  # running when a signal stopped the grid
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def format(self) -> str:
        lines = [f"grid {self.name}: {len(self.planned)} cells in {self.results_dir}, "
                 f"{self.wall_s:.0f} s"]
        for label, ids in (("complete", self.complete), ("skipped (already complete)", self.skipped)):
            lines.append(f"  {label}: {len(ids)}" + (f"  {' '.join(ids)}" if ids else ""))
        lines.append(f"  failed: {len(self.failed)}")
        lines += [f"    {cid}: {line}" for cid, line in self.failed.items()]
        if self.failed:
            lines.append("  details: <cell folder>/error.json and notebook.ipynb; run the same "
                         "command again to retry them.")
        if self.locked:
            lines.append(f"  left to another runner (folder locked): {len(self.locked)}")
            lines += [f"    {cid}: run by {who}" for cid, who in self.locked.items()]
        if self.stopped:
            lines.append(f"  stopped while running: {len(self.stopped)}  {' '.join(self.stopped)}"
                         "\n  run the same command again: they resume from their last checkpoint.")
        return "\n".join(lines)


def run_grid(spec: GridSpec | str | Path, results_dir: str | Path | None = None,
             executor: str = "sequential", jobs: int | None = None, dry_run: bool = False,
             retry_failed: bool = True, only: list[str] | None = None,
             slurm: SlurmOptions | None = None, progress: bool = True) -> GridSummary:
    """Run every cell of a grid that is not complete yet, each through the ablation notebook.

    Parameters
    ----------
    spec : GridSpec, str or Path
        A spec, or the name of a packaged spec, or a path to a YAML spec.
    results_dir : str or Path, optional
        Root of the results; cells go to ``<results_dir>/<spec name>/<cell id>``. Default:
        ``$MEMSTUDY_RESULTS`` or ``./results``.
    executor : {"sequential", "local", "slurm", "submitit-local"}
        Where cells run, see :mod:`memstudy.pipeline.executors`.
    jobs : int, optional
        Cells at once. Default: 1 for ``sequential``; the number of visible GPUs (or 1) for
        ``local``; all cells for ``slurm`` and ``submitit-local``.
    dry_run : bool
        Print every cell id and its resolved config, then return without touching the disk.
    retry_failed : bool
        Run cells that failed before (have an ``error.json``) again; if False they stay failed.
    only : list of str, optional
        Run only these cell ids (all cells are still validated and planned in ``grid.json``).
    slurm : SlurmOptions, optional
        Resources of each job for the ``slurm`` and ``submitit-local`` executors.
    progress : bool
        Show live progress (cells done / failed / running / left, ETA, and each running
        cell's stage and step); if False, print one plain line per event, for logs.

    Returns
    -------
    GridSummary
        Complete, skipped, failed and locked cell ids, and the wall time.

    Raises
    ------
    GridInterrupted
        On SIGINT, SIGTERM or SIGHUP, after every worker has been stopped; it carries the
        summary so far.
    """
    tic = time.perf_counter()
    if not isinstance(spec, GridSpec):
        spec = load_spec(spec)
    if executor not in executors.EXECUTORS:
        raise ConfigError(f"executor {executor!r} is not one of {', '.join(executors.EXECUTORS)}.")
    if jobs is not None and jobs < 1:
        raise ConfigError(f"jobs must be at least 1, got {jobs}.")
    if executor == "sequential" and (jobs or 1) > 1:
        raise ConfigError(f"the sequential executor runs one cell at a time: use executor 'local' "
                          f"for {jobs} cells at once.")
    cells = spec.cells()  # validates all cells before anything runs
    selected = _select(cells, only)
    grid_dir = Path(results_dir) if results_dir else results_root()
    grid_dir = (grid_dir / spec.name).resolve()
    summary = GridSummary(spec.name, grid_dir, [c.id for c in cells])
    if dry_run:
        print(format_plan(spec, cells, selected, grid_dir))
        return summary

    notebook = str(executors.notebook_path())
    write_json_atomic(grid_dir / "grid.json", {
        "name": spec.name, "spec": spec.to_dict(), "source": spec.source,
        "cells": [{"id": c.id, "levels": c.levels, "config_digest": c.config.digest()}
                  for c in cells]})
    todo = []
    for cell in selected:
        run_dir = grid_dir / cell.id
        if is_complete(run_dir):
            summary.skipped.append(cell.id)
        elif not retry_failed and (run_dir / "error.json").exists():
            summary.failed[cell.id] = "(not retried) " + error_line(run_dir)
        else:
            todo.append(CellJob(cell.id, _flat_params(cell.config), str(run_dir), notebook))

    running: list[str] = []
    view = GridProgress(spec.name, todo, live=progress)
    try:
        with _raise_on_signals(), view, closing(
                executors.run_jobs(executor, todo, jobs, slurm, grid_dir)) as events:
            for outcome in events:
                _record(summary, running, outcome)
                view.update(outcome)
    except GridInterrupted as err:
        # Slurm jobs outlive this process (scancel stops them); everywhere else they stopped.
        summary.stopped = [] if executor == "slurm" else running
        summary.wall_s = time.perf_counter() - tic
        err.summary = summary
        raise
    summary.wall_s = time.perf_counter() - tic
    return summary


def _record(summary: GridSummary, running: list[str], outcome: CellOutcome) -> None:
    cid = outcome.cell_id
    if outcome.status == "running":
        running.append(cid)
        return
    if cid in running:
        running.remove(cid)
    if outcome.status == "failed":
        summary.failed[cid] = outcome.error
    elif outcome.status == "skipped":
        summary.skipped.append(cid)
    elif outcome.status == "locked":
        summary.locked[cid] = outcome.error
    else:
        summary.complete.append(cid)


@contextmanager
def _raise_on_signals():
    """Turn SIGINT, SIGTERM and SIGHUP into :class:`GridInterrupted` while the grid runs.

    Python's default for SIGTERM and SIGHUP ends the process without running ``finally``
    blocks, which would leave the workers running. The first signal raises; later ones are
    ignored, so that stopping the workers is not itself interrupted. Signal handlers can only
    be set in the main thread: elsewhere the workers still stop with their runner's death.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = []

    def handler(signum, frame):
        if not fired:
            fired.append(signum)
            raise GridInterrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _select(cells: list[Cell], only: list[str] | None) -> list[Cell]:
    if not only:
        return cells
    ids = [c.id for c in cells]
    unknown = [i for i in only if i not in ids]
    if unknown:
        raise SpecError(f"--only: no cell named {', '.join(unknown)}; see the ids with --dry-run.")
    return [c for c in cells if c.id in only]


def _flat_params(cfg: RunConfig) -> dict[str, Any]:
    """RunConfig as notebook parameters: papermill passes literals, so tuples become "a,b,c"."""
    return {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in cfg.to_dict().items()}


def format_plan(spec: GridSpec, cells: list[Cell], selected: list[Cell], grid_dir: Path) -> str:
    """The dry-run listing: every selected cell, its state on disk and its non-default config."""
    defaults = _flat_params(RunConfig())
    lines = [f"grid {spec.name} ({spec.design} design, source {spec.source}): {len(cells)} cells, "
             f"{len(selected)} selected -> {grid_dir}"]
    for cell in selected:
        changed = " ".join(f"{k}={v}" for k, v in _flat_params(cell.config).items()
                           if v != defaults[k])
        holder = lock_holder(grid_dir / cell.id)
        state = cell_status(grid_dir / cell.id) + (f", running: {describe_holder(holder)}"
                                                    if holder else "")
        lines.append(f"{cell.id}  [{state}]\n"
                     f"    {changed or '(all defaults)'}")
    lines.append("dry run: nothing was written.")
    return "\n".join(lines)

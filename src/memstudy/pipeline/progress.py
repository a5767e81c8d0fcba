"""What a running grid shows a person: cells done / failed / running / left, an ETA, and each
running cell's stage and step (read from the ``progress.json`` that the cell writes).

Two forms: a live view (tqdm bars on stderr, refreshed every second) and, for logs
(``--no-progress``), one plain line per event plus a status line every minute.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from tqdm.auto import tqdm

from ..runio import read_progress
from .executors import CellJob, CellOutcome, relative_cost

TRAINING_STAGES = ("diffusion", "gan", "model")  # stages whose steps measure a cell's progress
MAX_CELL_LINES = 8  # running cells shown one per line; Slurm grids may run hundreds
LOG_EVERY_S = 60.0


class GridProgress:
    """Live view of one grid run; feed it every :class:`CellOutcome` with :meth:`update`.

    The ETA weighs cells by :func:`~memstudy.pipeline.executors.relative_cost` and counts a
    running cell by its training step, so it is rough while the first cells run (stage 1 and
    the evaluation are not counted) and improves as cells finish.
    """

    def __init__(self, name: str, jobs: list[CellJob], live: bool = True, stream=None):
        self.name, self.live, self.stream = name, live, stream or sys.stderr
        self.jobs = {job.cell_id: job for job in jobs}
        self.cost = {cid: max(relative_cost(job.params), 1e-9) for cid, job in self.jobs.items()}
        self.done: list[str] = []
        self.failed: list[str] = []
        self.elsewhere: list[str] = []  # locked: another runner has them
        self.running: dict[str, float] = {}  # cell id -> time it started
        self.base: dict[str, float] = {}  # fraction a resumed cell had when first seen
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._bar = None
        self._lines: list = []
        self._last_log = time.time()

    # -- events ------------------------------------------------------------------------

    def update(self, outcome: CellOutcome) -> None:
        """Record one event; print it (logs) or redraw (live)."""
        with self._lock:
            cid, took = outcome.cell_id, ""
            if outcome.status == "running":
                self.running[cid] = time.time()
            else:
                started = self.running.pop(cid, None)
                took = f" after {time.time() - started:.0f} s" if started else ""
                {"failed": self.failed, "locked": self.elsewhere}.get(
                    outcome.status, self.done).append(cid)
                if outcome.status in ("skipped", "locked"):
                    self.cost[cid] = 0.0  # did no work here: keep it out of the speed
            if self.live:
                if outcome.status != "running":  # a lasting line above the bars
                    detail = f": {outcome.error}" if outcome.error else ""
                    tqdm.write(f"{outcome.status} {cid}{took}{detail}", file=self.stream)
                self._redraw()
            else:
                detail = f": {outcome.error}" if outcome.error else ""
                word = "started" if outcome.status == "running" else outcome.status
                self._print(f"{word} {cid}{took}{detail}  ({self._counts()})")

    def __enter__(self) -> "GridProgress":
        if self.live and self.jobs:
            self._bar = tqdm(total=1.0, file=self.stream, smoothing=0, leave=True,
                             bar_format="{desc} |{bar}| {percentage:3.0f}% [{elapsed}, ETA "
                             "{remaining}]", desc=self._desc())
        if self.jobs:
            threading.Thread(target=self._refresh_loop, name="grid-progress", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        with self._lock:
            if self._bar is not None:
                self._redraw(with_cells=False)  # the final counts; the cell lines go
                self._bar.close()

    # -- drawing -----------------------------------------------------------------------

    def _refresh_loop(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                if self._stop.is_set():  # closed while this thread waited for the lock
                    return
                if self.live:
                    self._redraw()
                elif time.time() - self._last_log >= LOG_EVERY_S and self.running:
                    self._print("running: " + "; ".join(self._cell_text(c) for c in self.running))

    def _redraw(self, with_cells: bool = True) -> None:
        if self._bar is None:
            return
        total, done = self._work()
        self._bar.total = total
        self._bar.n = done
        self._bar.set_description_str(self._desc(), refresh=False)
        self._bar.refresh()
        cells = list(self.running)[:MAX_CELL_LINES] if with_cells else []
        while len(self._lines) < len(cells):
            self._lines.append(tqdm(total=0, file=self.stream, leave=False, bar_format="{desc}",
                                    position=len(self._lines) + 1))
        while len(self._lines) > len(cells):
            self._lines.pop().close()
        for line, cid in zip(self._lines, cells):
            line.set_description_str("  " + self._cell_text(cid))

    def _desc(self) -> str:
        return f"grid {self.name}: {self._counts()}"

    def _counts(self) -> str:
        ended = len(self.done) + len(self.failed) + len(self.elsewhere)
        left = len(self.jobs) - ended - len(self.running)
        other = f"{len(self.elsewhere)} run by another runner, " if self.elsewhere else ""
        return (f"{len(self.done)} done, {len(self.failed)} failed, {other}"
                f"{len(self.running)} running, {left} left of {len(self.jobs)}")

    def _cell_text(self, cid: str) -> str:
        prog = read_progress(self.jobs[cid].run_dir)
        elapsed = time.time() - self.running[cid]
        if not prog or prog.get("time", 0) < self.running[cid]:  # none yet, or a killed run's
            return f"{cid}  starting ({elapsed:.0f} s)"
        step = f" {prog['step']}/{prog['total']}" if prog.get("total") else ""
        if prog["stage"] == "autoencoder" and not step:  # stage 1 logs to stats.jsonl only
            done = _last_logged_step(self.jobs[cid].run_dir, "autoencoder")
            step = f" {done}/{self.jobs[cid].params.get('ae_steps', '?')}" if done else ""
        return f"{cid}  {prog['stage']}{step}  ({elapsed:.0f} s)"

    def _work(self) -> tuple[float, float]:
        """(total, done) in cost units of the work this run does: a resumed cell counts only
        from where it resumed, so that its earlier steps do not inflate the speed."""
        total = done = 0.0
        ended = set(self.done + self.failed + self.elsewhere)
        for cid, cost in self.cost.items():
            if cid in self.running:
                prog = read_progress(self.jobs[cid].run_dir)
                frac = _fraction(prog)
                if cid not in self.base:  # a killed run's progress.json: where this one resumes
                    stale = prog is not None and prog.get("time", 0) < self.running[cid]
                    self.base[cid] = frac if stale else 0.0
                done += cost * max(frac - self.base[cid], 0.0)
            base = self.base.get(cid, 0.0)
            total += cost * (1 - base)
            if cid in ended:
                done += cost * (1 - base)
        return max(total, 1e-9), min(max(done, 0.0), total)

    def _print(self, text: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        print(f"[{stamp}] grid {self.name}: {text}", file=self.stream, flush=True)
        self._last_log = time.time()


def _last_logged_step(run_dir: str, stage: str) -> int | None:
    """The step of the last ``stats.jsonl`` record if it belongs to ``stage`` (reads the tail)."""
    try:
        with open(Path(run_dir) / "stats.jsonl", "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # torn, or cut by the seek
        return record.get("step") if record.get("stage") == stage else None
    return None


def _fraction(prog: dict | None) -> float:
    """How far a cell is, from its progress.json: its training step over its training length."""
    if not prog or not prog.get("total"):
        return 0.0
    if prog["stage"] in TRAINING_STAGES or prog["stage"] == "evaluate":
        return min(1.0, prog["step"] / prog["total"])
    return 0.0

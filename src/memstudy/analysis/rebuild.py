"""Rebuild check: rerun one committed cell from its config.json and compare the metrics.

``memstudy report --check reference/reference`` picks the cheapest complete generative cell
(smallest ``profile_s`` total in metrics.json; controls train no model) unless ``--cell`` names one, reruns it with
:func:`memstudy.pipeline.cell.run_cell` into a temporary run folder, and compares the fresh
``metrics.json`` rows with the committed ones, row by row (checkpoint step x detector):

- rates, AUCs, true-positive rates, tau and the false-positive floor: within ``atol``;
- set sizes (``n_train``, ``n_gen``, ``n_train_patients``, ``mia_n_*``): exactly;
- counts (``n_mem``, ``n_copies``, ...): within ``atol`` x the row's largest set size;
- everything else (Frechet distance, MMD, MS-SSIM, epochs) is shown but not judged: their
  scale is not a probability, so one absolute tolerance would mean nothing.

Why a tolerance at all: a CPU rerun with the same seed, torch version and thread count repeats
the numbers; another CPU, BLAS or thread count changes float summation order, and 1,500
training steps amplify that into different samples. A rate over N samples moves in steps of
1/N, so the default 0.02 allows one flip in 64 and none in 16 or fewer.
"""

from __future__ import annotations

import math
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, RunConfig
from ..runio import cache_root, read_json, write_json_atomic

MAIN_COLUMNS = ("mem_rate", "copy_rate", "excess_copy_rate", "mia_auc", "tau")
SIZES = re.compile(r"^(n_train|n_gen|n_train_patients|mia_n_\w+)$")
COUNTS = re.compile(r"^n_\w+$")
JUDGED = re.compile(r"(rate|auc|tpr|^tau$|fp_floor)")
DEFAULT_ATOL = 0.02


def cheapest_cell(grid_dir: Path) -> str:
    """The complete generative cell whose recorded cost (profile_s total, else wall_s) is
    smallest. Control cells (``control_*``) train no generative model, so rerunning one
    checks little; they are chosen only when a grid has nothing else."""
    def cost(run: Path) -> float:
        m = read_json(run / "metrics.json")
        prof = m.get("profile_s", {})
        return prof.get("cpu", {}).get("total") or prof.get("wall", {}).get("total") \
            or m.get("wall_s_this_session") or math.inf

    cells = [p.parent for p in grid_dir.glob("*/metrics.json")]
    if not cells:
        raise ConfigError(f"{grid_dir} holds no complete cell (no */metrics.json): give a grid "
                          "folder such as reference/reference.")
    generative = [p for p in cells
                  if not str(read_json(p / "config.json").get("model", "")).startswith("control_")]
    return min(generative or cells, key=lambda p: (cost(p), p.name)).name


@dataclass(frozen=True)
class CheckResult:
    cell: str
    atol: float
    ok: bool
    problems: list[str]
    table: list[dict[str, Any]]  # per step x detector: committed, fresh, diff of MAIN_COLUMNS
    run_dir: Path
    report_path: Path
    wall_s: float
    notes: tuple[str, ...] = ()

    def format(self) -> str:
        head = f"{'step':>6} {'detector':12}" + "".join(f" {c:>28}" for c in MAIN_COLUMNS)
        sub = f"{'':>6} {'':12}" + "".join(f" {'committed  fresh     diff':>28}" for _ in MAIN_COLUMNS)
        lines = [f"cell {self.cell}: rerun in {self.wall_s:.0f} s into {self.run_dir}",
                 *self.notes, head, sub]
        for row in self.table:
            cells = []
            for c in MAIN_COLUMNS:
                a, b = row[c]["committed"], row[c]["fresh"]
                d = row[c]["diff"]
                cells.append(f" {_num(a):>9} {_num(b):>9} {_num(d, sign=True):>8}")
            lines.append(f"{row['step']:>6} {row['detector']:12}" + "".join(cells))
        verdict = ("within tolerance" if self.ok else f"{len(self.problems)} value(s) OUTSIDE "
                   "tolerance:\n  " + "\n  ".join(self.problems[:20]))
        lines.append(f"atol {self.atol} (rates/AUC/tau), counts within atol x n, sizes exact: {verdict}")
        lines.append(f"written: {self.report_path}")
        return "\n".join(lines)


def _num(v: Any, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:+.3f}" if sign else f"{v:.3f}"


def compare_rows(committed: list[dict], fresh: list[dict], atol: float) -> tuple[list[str], list[dict]]:
    """(problems, side-by-side table) of two metrics.json row lists."""
    key = lambda r: (int(r["step"]), str(r["detector"]))  # noqa: E731
    old, new = {key(r): r for r in committed}, {key(r): r for r in fresh}
    problems = [f"step {s} / {d}: only in the committed metrics" for s, d in sorted(old.keys() - new.keys())]
    problems += [f"step {s} / {d}: only in the fresh run" for s, d in sorted(new.keys() - old.keys())]
    table = []
    for k in sorted(old.keys() & new.keys()):
        a, b = old[k], new[k]
        n = max([v for c, v in a.items() if SIZES.match(c) and isinstance(v, (int, float))] or [1])
        for col in sorted(set(a) | set(b)):
            x, y = a.get(col), b.get(col)
            if col in ("step", "detector") or not (_is_num(x) or _is_num(y)):
                continue
            where = f"step {k[0]} / {k[1]} / {col}"
            if not (_is_num(x) and _is_num(y)):
                if SIZES.match(col) or COUNTS.match(col) or JUDGED.search(col):
                    problems.append(f"{where}: committed {x}, fresh {y}")
                continue
            if _both_nan(x, y):
                continue
            if SIZES.match(col):
                bad = x != y
            elif COUNTS.match(col):
                bad = abs(x - y) > atol * n
            elif JUDGED.search(col):
                bad = not abs(x - y) <= atol  # NaN on one side only is a difference
            else:
                continue
            if bad:
                problems.append(f"{where}: committed {x}, fresh {y}")
        table.append({"step": k[0], "detector": k[1],
                      **{c: {"committed": a.get(c), "fresh": b.get(c),
                             "diff": (b[c] - a[c]) if _is_num(a.get(c)) and _is_num(b.get(c)) else None}
                         for c in MAIN_COLUMNS}})
    return problems, table


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _both_nan(x: float, y: float) -> bool:
    return isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)


def check_cell(grid_dir: str | Path, cell: str | None = None, atol: float = DEFAULT_ATOL,
               work_dir: str | Path | None = None, progress: bool = False) -> CheckResult:
    """Rerun one committed cell into ``work_dir/<cell>/`` (default: a new temporary folder)
    and compare its metrics with the committed ones; the comparison is written beside the run
    as ``<cell>.check.json``. Nothing in ``grid_dir`` is touched."""
    from ..pipeline.cell import run_cell

    grid_dir = Path(grid_dir)
    cell = cell or cheapest_cell(grid_dir)
    committed_dir = grid_dir / cell
    if not (committed_dir / "metrics.json").exists():
        raise ConfigError(f"{committed_dir} is not a complete cell (no metrics.json); complete "
                          f"cells: {sorted(p.parent.name for p in grid_dir.glob('*/metrics.json'))[:5]}")
    cfg = RunConfig.from_json((committed_dir / "config.json").read_text())
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="memstudy-check-"))
    run_dir = work / cell
    if run_dir.exists():
        raise ConfigError(f"{run_dir} exists: a rebuild check reruns from scratch; give an empty "
                          "--work-dir.")
    committed = read_json(committed_dir / "metrics.json")
    cached = _cached_autoencoder(committed)
    tic = time.perf_counter()
    fresh = run_cell(cfg, run_dir, progress=progress)
    wall = time.perf_counter() - tic
    notes = []
    if cached is False:  # a fresh clone: the shared stage-1 autoencoder is trained first
        stage1 = fresh.get("profile_s", {}).get("wall", {}).get("stage1")
        notes.append(f"the shared autoencoder was not in the cache ({cache_root()}): the rerun "
                     f"trained it ({cfg.ae_steps} steps, {stage1 if stage1 is not None else '?'} s "
                     "of the rerun); later checks reuse it")
    problems, table = compare_rows(committed["rows"], fresh["rows"], atol)
    report_path = work / f"{cell}.check.json"
    write_json_atomic(report_path, {
        "grid": str(grid_dir), "cell": cell, "atol": atol, "ok": not problems,
        "problems": problems, "table": table, "rerun_wall_s": round(wall, 1),
        "cache": str(cache_root()), "fresh_run_dir": str(run_dir), "notes": notes})
    return CheckResult(cell, atol, not problems, problems, table, run_dir, report_path, wall,
                       tuple(notes))


def _cached_autoencoder(metrics: dict) -> bool | None:
    """Is the committed cell's shared autoencoder in this machine's cache? None: it has none."""
    name = Path(metrics.get("autoencoder_file") or "").name
    if not name:
        return None
    return (cache_root() / "autoencoder" / name).exists()

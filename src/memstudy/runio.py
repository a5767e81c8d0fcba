"""The run folder: atomic writes, provenance (env.json) and where results live.

A run folder is the unit of provenance. Every file in it is written atomically (a temporary
file in the same folder, then ``os.replace``), so a crash leaves either the old file or the
new one, never half of one. ``metrics.json`` is written last: its presence means "complete".
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_ENV = "MEMSTUDY_RESULTS"  # where run folders go; "where" comes from the environment
DATA_ENV = "MEMSTUDY_DATA"  # where local real data sets live
CACHE_ENV = "MEMSTUDY_CACHE"  # expensive intermediates shared by runs (keyed by content)
_PACKAGES = ("memstudy", "torch", "monai", "numpy", "pandas", "scikit-learn", "nibabel", "papermill")


def results_root() -> Path:
    """Root folder for run folders: ``$MEMSTUDY_RESULTS`` or ``./results``."""
    return Path(os.environ.get(RESULTS_ENV, "results"))


def cache_root() -> Path:
    """Shared cache: ``$MEMSTUDY_CACHE`` or ``<results root>/_cache``."""
    return Path(os.environ.get(CACHE_ENV, results_root() / "_cache"))


def cache_file(kind: str, key: dict[str, Any], suffix: str = ".pt") -> Path:
    """Where an expensive intermediate lives: ``<cache>/<kind>/<hash of key><suffix>``.

    The key names everything the artefact depends on (data set, image size, seed, budget...),
    so a changed key is a different file and never a stale one. The key itself is written next
    to the artefact (``.json``) so a person can see what a cached file is.
    """
    text = json.dumps(key, sort_keys=True, default=_jsonable)
    path = cache_root() / kind / (hashlib.sha256(text.encode()).hexdigest()[:16] + suffix)
    if not path.with_suffix(".json").exists():
        write_bytes_atomic(path.with_suffix(".json"), (text + "\n").encode())
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def save_atomic(save_fn, path: str | os.PathLike, suffix: str | None = None) -> None:
    """Call ``save_fn(tmp_path)`` (e.g. torch.save, np.savez, fig.savefig), then rename into place.

    The temporary name is unique (two writers never share it) and keeps the file's suffix, or
    ``suffix`` when given (``.nii.gz``), because some writers choose the format from the name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        save_fn(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one record; a torn last line from a crash is skipped by :func:`read_jsonl`."""
    with open(path, "a") as f:
        f.write(json.dumps(record, default=_jsonable) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    records = []
    if not Path(path).exists():
        return records
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the last line of a killed run may be torn
    return records


# ------------------------------------------------------------------------------------------
# The state of a run folder


def is_complete(run_dir: str | os.PathLike) -> bool:
    """A run is complete when its ``metrics.json`` exists: it is always written last."""
    return (Path(run_dir) / "metrics.json").exists()


def cell_status(run_dir: str | os.PathLike) -> str:
    """``complete`` (metrics.json), ``failed`` (error.json), ``incomplete`` (started) or ``pending``."""
    run_dir = Path(run_dir)
    if is_complete(run_dir):
        return "complete"
    if (run_dir / "error.json").exists():
        return "failed"
    return "incomplete" if run_dir.exists() else "pending"


def error_line(run_dir: str | os.PathLike) -> str:
    """First line of a failed cell's error.json, e.g. ``RuntimeError: CUDA is not available``."""
    err = read_json(Path(run_dir) / "error.json")
    lines = str(err.get("message", "")).strip().splitlines()
    return f"{err.get('error_type', 'Error')}: {lines[0] if lines else ''}"


# ------------------------------------------------------------------------------------------
# Who is running a cell: the run lock, and what it is doing: progress.json

LOCK_FILE = "run.lock"
LOCK_ENV = "MEMSTUDY_RUN_LOCK"  # token of a lock that a parent process holds for this one
PROGRESS_FILE = "progress.json"
_UNREADABLE_GRACE_S = 10.0  # a lock file still being written is empty for a moment


class RunLocked(RuntimeError):
    """The run folder is locked by a live process: another runner, or run_cell elsewhere."""

    def __init__(self, run_dir: str | os.PathLike, holder: dict[str, Any]):
        self.run_dir, self.holder = Path(run_dir), holder
        super().__init__(f"{self.run_dir} is being run by {describe_holder(holder)}. Wait for it, "
                         f"or, if that process is gone, delete {self.run_dir / LOCK_FILE}.")


def describe_holder(holder: dict[str, Any]) -> str:
    """``pid 123 on host since 2026-11-25T07:30:00+00:00`` for a lock's contents."""
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"


def acquire_lock(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Take the run folder's exclusive lock for this process; raise :class:`RunLocked` if taken.

    The lock is a file ``run.lock`` created with O_EXCL (atomic on local disks and NFS v3+)
    that names its holder: pid, host, start time and a random token. A lock whose pid is gone
    (same host only: a pid on another host cannot be checked) is stale and is taken over, so a
    killed run never blocks the next one. Returns the lock's contents; give its ``token`` to
    :func:`release_lock`, or to a child process as ``$MEMSTUDY_RUN_LOCK`` so that the child's
    :func:`run_lock` knows the folder is held for it.
    """
    path = Path(run_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "pid_start": _pid_start(os.getpid()),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "token": uuid.uuid4().hex}
    for _ in range(5):  # each retry follows the removal of a stale lock
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            if holder is None or _holder_alive(holder, path):
                raise RunLocked(run_dir, holder or {"pid": "?", "host": "?", "started": "just now"})
            _break_stale(path, holder)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(info) + "\n")
        return info
    raise RunLocked(run_dir, _read_lock(path) or {})


def release_lock(run_dir: str | os.PathLike, token: str) -> None:
    """Remove the run folder's lock if it is still the one with ``token`` (never another's)."""
    path = Path(run_dir) / LOCK_FILE
    holder = _read_lock(path)
    if holder is not None and holder.get("token") == token:
        path.unlink(missing_ok=True)


def lock_holder(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The contents of a live lock on the run folder, or None when nobody holds it."""
    path = Path(run_dir) / LOCK_FILE
    holder = _read_lock(path)
    return holder if holder is not None and _holder_alive(holder, path) else None


@contextmanager
def run_lock(run_dir: str | os.PathLike):
    """Hold the run folder's lock for a ``with`` block, unless a parent already holds it.

    A grid runner takes the lock before it starts a cell's worker and passes the token down
    (``$MEMSTUDY_RUN_LOCK``); the cell's own ``run_lock`` then sees its token on the lock and
    goes ahead. Anyone else finds the folder locked and gets :class:`RunLocked`.
    """
    run_dir = Path(run_dir)
    holder = _read_lock(run_dir / LOCK_FILE)
    inherited = os.environ.get(LOCK_ENV)
    if inherited and holder is not None and holder.get("token") == inherited:
        yield holder
        return
    created = not run_dir.exists()
    info = acquire_lock(run_dir)
    try:
        yield info
    finally:
        release_lock(run_dir, info["token"])
        if created:  # nothing was written (e.g. bad input): leave no folder that looks started
            try:
                run_dir.rmdir()
            except OSError:
                pass  # not empty: the run wrote files


def _read_lock(path: Path) -> dict[str, Any] | None:
    """The lock's contents; None if there is no lock. A lock file still being written (or
    garbled) reads as held for a few seconds, then as stale."""
    try:
        text = path.read_text()
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"pid": None, "host": None, "started": None, "token": None, "age_s": age}


def _holder_alive(holder: dict[str, Any], path: Path) -> bool:
    if holder.get("pid") is None:  # unreadable: being written right now, unless it is old
        return holder.get("age_s", 0.0) < _UNREADABLE_GRACE_S
    if holder.get("host") != socket.gethostname():
        return True  # cannot see processes on another host: assume it runs
    pid = int(holder["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    start = _pid_start(pid)
    if start is not None and holder.get("pid_start") is not None and start != holder["pid_start"]:
        return False  # the pid was reused by a newer process
    return start != "zombie"


def _pid_start(pid: int) -> int | str | None:
    """When a process started (clock ticks since boot; Linux only), to tell a reused pid
    apart; ``"zombie"`` for a process that has exited but was not reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces
    return "zombie" if fields[0] in "ZX" else int(fields[19])


def _break_stale(path: Path, holder: dict[str, Any]) -> None:
    """Remove a stale lock without removing a fresh one that another process took meanwhile:
    move it aside under a unique name, then check that it was the stale one."""
    aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # another process removed it first
    if (_read_lock(aside) or {}).get("token") != holder.get("token"):
        try:  # it was a fresh lock: put it back
            os.link(aside, path)
        except FileExistsError:
            pass
    aside.unlink(missing_ok=True)


_last_progress: dict[Path, tuple[float, str]] = {}


def write_progress(run_dir: str | os.PathLike, stage: str, step: int | None = None,
                   total: int | None = None, every_s: float = 1.0) -> None:
    """Tell whoever watches the run folder what the cell is doing (``progress.json``).

    Cheap enough to call on every training step: it writes at most once per ``every_s``
    seconds per folder, and always when the stage changes or the stage's last step is reached.
    The grid runner reads it to show each running cell's stage, step and speed.
    """
    path = Path(run_dir) / PROGRESS_FILE
    now = time.time()
    last = _last_progress.get(path)
    if last and last[1] == stage and now - last[0] < every_s and step != total:
        return
    _last_progress[path] = (now, stage)
    write_json_atomic(path, {"stage": stage, "step": step, "total": total, "time": now,
                             "pid": os.getpid()})


def read_progress(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The last ``progress.json`` of a run folder, or None if it has none (yet)."""
    try:
        return read_json(Path(run_dir) / PROGRESS_FILE)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def environment(device: str) -> dict[str, Any]:
    """What produced a result: git commit, package versions, Python, machine and device."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    env = {
        "git_sha": _git(["rev-parse", "HEAD"]),
        "git_dirty": bool(_git(["status", "--porcelain", "--untracked-files=no"])),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "device": device,
    }
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        if device.startswith("cuda"):
            env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    except Exception as err:  # provenance must never stop a run; record why it is incomplete
        env["torch_error"] = repr(err)
    return env


def _git(args: list[str]) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")

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
import subprocess
import sys
import tempfile
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

"""Where grid cells run: in this process, in a local process pool, or as Slurm array jobs.

Every executor runs the same task, :func:`run_cell_job`: execute the ablation notebook with
papermill for one cell, writing the executed notebook into the cell's run folder. The task
never raises for a failing cell; it records the failure in ``<run_dir>/error.json`` and the
grid goes on. Executors only decide where tasks run and which environment their kernel gets
(papermill kernels inherit the environment of the process that starts them):

``sequential``
    One cell after another, each in a fresh worker process (:mod:`.workers`).
``local``
    Up to ``jobs`` worker processes at once, one per cell. With GPUs each worker sees one GPU
    (``CUDA_VISIBLE_DEVICES`` round-robin); on CPU each gets cores // jobs threads.
``slurm``
    One Slurm array task per cell, through submitit; a timed-out or preempted task is
    requeued and resumes from the cell's last checkpoint.
``submitit-local``
    The same submitit code path on this machine (all cells at once); the tests use it.

With ``sequential`` and ``local`` this process owns the workers: it holds each cell's run
lock while the cell's worker runs, and stopping it (Ctrl-C, SIGTERM, or its death) ends every
worker and kernel it started. Slurm jobs outlive the process that submitted them; there the
cell itself takes the lock (:func:`memstudy.pipeline.cell.run_cell`).
"""

from __future__ import annotations

import glob
import os
import re
import socket
import sys
import time
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import submitit

from ..config import ConfigError
from ..runio import (LOCK_ENV, RunLocked, acquire_lock, describe_holder, error_line, is_complete,
                     release_lock, write_json_atomic)
from . import workers

EXECUTORS = ("sequential", "local", "slurm", "submitit-local")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # colour codes in IPython tracebacks
# ipykernel >= 7 logs a warning about unencrypted TCP at every kernel start; the kernel only
# listens on localhost, so at ERROR level the per-cell noise goes and real errors stay.
KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR"]


@dataclass(frozen=True)
class CellJob:
    """Everything a worker needs to run one cell (picklable, for process pools and Slurm)."""

    cell_id: str
    params: dict[str, Any]  # flat notebook parameters, tuples as "a,b,c"
    run_dir: str  # absolute, so the kernel's working directory does not matter
    notebook: str
    env: dict[str, str] = field(default_factory=dict)  # set before the kernel starts


@dataclass(frozen=True)
class CellOutcome:
    """An event of one cell: it started ("running") or ended (every other status)."""

    cell_id: str
    status: str  # "running" | "complete" | "skipped" | "failed" | "locked"
    error: str = ""  # first line of the error (failed), or who holds the lock (locked)


class WorkerDied(RuntimeError):
    """The process running a cell ended without a result: killed, or out of memory."""


@dataclass(frozen=True)
class SlurmOptions:
    """Resources of one array task (one cell); ``partition``/``account`` None = cluster default."""

    partition: str | None = None
    account: str | None = None
    time_min: int = 240
    cpus_per_task: int = 8
    mem_gb: int = 32
    gpus_per_node: int = 1


def notebook_path() -> Path:
    """The ablation notebook of the repository this package is installed (editable) from."""
    path = Path(__file__).resolve().parents[3] / "notebooks" / "ablation.ipynb"
    if not path.is_file():
        raise ConfigError(f"the ablation notebook is not at {path}: the grid runner needs memstudy "
                          "installed editable from a clone of the repository (pip install -e .).")
    return path


# ----------------------------------------------------------------------------------------
# The task


def run_cell_job(job: CellJob, kernel_manager_class: type | None = None) -> CellOutcome:
    """Run one cell through the notebook; a failure is written to error.json, not raised.

    A cell whose folder another live process has locked is not run and not failed: its
    outcome is ``locked``. ``kernel_manager_class`` lets a worker know its kernel's pid.
    """
    import papermill  # heavy; only workers need it

    run_dir = Path(job.run_dir)
    if is_complete(run_dir):
        return CellOutcome(job.cell_id, "skipped")
    os.environ.update(job.env)
    run_dir.mkdir(parents=True, exist_ok=True)  # papermill writes notebook.ipynb into it
    extra = {"kernel_manager_class": kernel_manager_class} if kernel_manager_class else {}
    try:
        papermill.execute_notebook(job.notebook, str(run_dir / "notebook.ipynb"),
                                   parameters={**job.params, "run_dir": str(run_dir)},
                                   progress_bar=False, extra_arguments=KERNEL_ARGS, **extra)
        if not is_complete(run_dir):
            raise RuntimeError("the notebook ran to the end but wrote no metrics.json")
    except Exception as err:
        if getattr(err, "ename", None) == RunLocked.__name__:  # raised inside the kernel
            return CellOutcome(job.cell_id, "locked", err.evalue)
        return record_failure(job, err)
    (run_dir / "error.json").unlink(missing_ok=True)  # a retry succeeded: the old error is stale
    return CellOutcome(job.cell_id, "complete")


def record_failure(job: CellJob, err: BaseException) -> CellOutcome:
    """Write ``error.json`` (type, message, traceback, time) and return the failed outcome."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(err, PapermillExecutionError):
        # The exception happened in the kernel: its own traceback is the useful one.
        kind, message = err.ename, err.evalue
        trace = _ANSI.sub("", "\n".join(err.traceback))
    else:
        kind, message = type(err).__name__, str(err)
        trace = "".join(traceback.format_exception(err))
    write_json_atomic(Path(job.run_dir) / "error.json", {
        "cell": job.cell_id, "error_type": kind, "message": message, "traceback": trace,
        "notebook": "notebook.ipynb", "notebook_cell": getattr(err, "exec_count", None),
        "host": socket.gethostname(),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    first = message.strip().splitlines()[0] if message.strip() else ""
    return CellOutcome(job.cell_id, "failed", f"{kind}: {first}")


class ResumableCellTask(submitit.helpers.Checkpointable):
    """The Slurm task: on timeout or preemption submitit requeues it, and run_cell resumes."""

    def __call__(self, job: CellJob) -> CellOutcome:
        return run_cell_job(job)


# ----------------------------------------------------------------------------------------
# Executors


def run_jobs(executor: str, jobs: list[CellJob], n: int | None, slurm: SlurmOptions | None,
             grid_dir: Path) -> Iterator[CellOutcome]:
    """Run ``jobs`` on ``executor`` with at most ``n`` at once; yield each cell's events.

    Close the iterator when done (``contextlib.closing``): closing it early, e.g. on Ctrl-C,
    stops every worker it started.
    """
    if not jobs:
        return (outcome for outcome in ())  # a generator: it can be closed like the others
    if executor == "sequential":
        return _worker_pool(jobs, 1, lambda slot: {})
    if executor == "local":
        n = n or max(1, len(visible_gpus()))
        gpus, cores = visible_gpus(), _cores()
        # The most expensive cells start first (longest-processing-time-first), so that no
        # long cell is left running alone at the end while the other workers idle.
        jobs = sorted(jobs, key=lambda job: relative_cost(job.params), reverse=True)
        device = "cuda" if gpus else "cpu"
        stage1 = {job.cell_id: shared_stage1(job.params, device) for job in jobs}
        return _worker_pool(jobs, n, lambda slot: worker_env(slot, n, gpus, cores), stage1)
    cluster = "slurm" if executor == "slurm" else "local"
    return _submitit(jobs, n, slurm or SlurmOptions(), grid_dir / ".submitit", cluster)


def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else all CUDA devices."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [d.strip() for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    if sys.platform.startswith("linux") and not glob.glob("/dev/nvidia[0-9]*"):
        return []  # no NVIDIA device at all: no need to import torch (seconds) to learn that
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _threads_env(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def worker_env(slot: int, n: int, gpus: list[str], cores: int) -> dict[str, str]:
    """Environment of worker ``slot`` of ``n``: one GPU round-robin, else cores // n threads."""
    if gpus:
        return {"CUDA_VISIBLE_DEVICES": gpus[slot % len(gpus)]}
    return _threads_env(max(1, cores // n))


# Rough relative cost of a cell, used only to order the local pool's queue: pixel-space UNets
# work on 16x more positions than 8x8 latents, bigger presets cost more per step, small
# training sets cap the batch, controls train nothing, and a 3D step costs about 4x a 2D one
# (40x for the autoencoder) at the dims preset's sizes. Only the order matters, not the numbers.
_MODEL_COST = {"ldm": 1.0, "pixel_dm": 3.5, "gan": 0.8, "autoencoder": 0.0,
               "control_positive": 0.0, "control_negative": 0.0}
_PRESET_COST = {"XS": 0.5, "S": 1.0, "M": 1.7, "L": 5.0}
_DIMS_COST = {2: (1.0, 1.0), 3: (4.0, 40.0)}  # (diffusion step, autoencoder step) against 2D


def relative_cost(params: dict[str, Any]) -> float:
    """Estimated cost of a cell from its parameters (RunConfig defaults where absent)."""
    from ..config import RunConfig

    cfg = RunConfig.from_params(params)
    images = cfg.dataset_size // (cfg.slices_per_patient if cfg.spatial_dims == 3 else 1)
    batch = min(cfg.batch_size, images)  # a 3D cell trains on one volume per patient
    unet, ae = _DIMS_COST[cfg.spatial_dims]
    steps = cfg.train_steps * _MODEL_COST.get(cfg.model, 1.0) * _PRESET_COST[cfg.unet_preset]
    return unet * steps * (0.5 + batch / 16) + ae * 0.3 * cfg.ae_steps


def shared_stage1(params: dict[str, Any], device: str = "cpu") -> str | None:
    """The cache file of the shared stage-1 autoencoder a cell loads, or trains first if it is
    missing (``autoencoder: shared``); ``None`` for a cell that needs none."""
    from ..config import RunConfig

    cfg = RunConfig.from_params(params)
    if not cfg.loads_shared_stage1:
        return None
    from ..models.shared import shared_key
    from ..runio import cache_file

    return str(cache_file("autoencoder", shared_key(cfg, device), ".pt"))


def _next_job(queue: deque, running_stage1: set[str], stage1: dict[str, str | None]) -> CellJob:
    """The first queued cell that can work now: not one whose shared autoencoder another worker
    is still training (it would hold a worker idle on the lock), unless every cell left waits."""
    for job in queue:
        path = stage1.get(job.cell_id)
        if path is None or path not in running_stage1 or Path(path).exists():
            queue.remove(job)
            return job
    return queue.popleft()


def _worker_pool(jobs: list[CellJob], n: int, slot_env,
                 stage1: dict[str, str | None] | None = None) -> Iterator[CellOutcome]:
    """Run ``jobs`` in order, ``n`` worker processes at a time, each holding one slot (the
    GPU or core share ``slot_env(slot)``) and its cell's run lock. ``stage1`` (cell id -> shared
    autoencoder file) lets a cell that would wait for another's autoencoder yield its turn."""
    queue, free, running, stage1 = deque(jobs), list(range(n)), [], stage1 or {}
    try:
        while queue or running:
            while queue and free:
                job = _next_job(queue, {stage1.get(w.job.cell_id) for w, _ in running}, stage1)
                try:
                    lock = acquire_lock(job.run_dir)
                except RunLocked as err:  # another runner has it: leave it to that one
                    yield CellOutcome(job.cell_id, "locked", describe_holder(err.holder))
                    continue
                if is_complete(job.run_dir):  # completed by another runner meanwhile
                    release_lock(job.run_dir, lock["token"])
                    yield CellOutcome(job.cell_id, "skipped")
                    continue
                slot = free.pop(0)
                env = {**job.env, **slot_env(slot), LOCK_ENV: lock["token"]}
                running.append((workers.start_worker(replace(job, env=env), slot), lock["token"]))
                yield CellOutcome(job.cell_id, "running")
            time.sleep(0.2)
            for item in [item for item in running if item[0].proc.poll() is not None]:
                running.remove(item)
                worker, token = item
                free.append(worker.slot)
                outcome = _worker_outcome(worker)
                release_lock(worker.job.run_dir, token)
                yield outcome
    finally:  # normal end: nothing left; Ctrl-C, SIGTERM or an error: stop what still runs
        workers.stop_workers([worker for worker, _ in running])
        for worker, token in running:
            release_lock(worker.job.run_dir, token)


def _worker_outcome(worker: workers.Worker) -> CellOutcome:
    """What a finished worker's exit status says; a worker that died fails its cell."""
    job, code = worker.job, worker.proc.returncode
    status = {v: k for k, v in workers.EXIT_CODES.items()}.get(code)
    if status == "failed" and (Path(job.run_dir) / "error.json").exists():
        return CellOutcome(job.cell_id, "failed", error_line(job.run_dir))
    if status in ("complete", "skipped", "locked"):
        return CellOutcome(job.cell_id, status)
    log = Path(job.run_dir) / workers.LOG_FILE
    return record_failure(job, WorkerDied(
        f"the worker process of this cell {workers.describe_exit(code)} after "
        f"{time.time() - worker.started:.0f} s. If nobody killed it, it probably ran out of "
        f"memory (see `dmesg`); its last output is in {log}. Run the grid again to resume it."))


def _submitit(jobs: list[CellJob], n: int | None, opts: SlurmOptions, folder: Path,
              cluster: str) -> Iterator[CellOutcome]:
    """One submitit job per cell (a Slurm job array); wait for all and yield their outcomes."""
    if cluster == "slurm":
        gpus, threads = opts.gpus_per_node, opts.cpus_per_task
    else:  # submitit's local cluster runs every job at once
        gpus, threads = min(opts.gpus_per_node, len(visible_gpus())), max(1, _cores() // len(jobs))
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    except RuntimeError as err:  # submitit found no srun: not a Slurm machine
        raise ConfigError(f"cannot submit to Slurm from here ({err}): run on the cluster's login "
                          "node, or use --executor local.") from None
    executor.update_parameters(
        name=f"memstudy-{folder.parent.name}", timeout_min=opts.time_min, gpus_per_node=gpus,
        cpus_per_task=opts.cpus_per_task, mem_gb=opts.mem_gb, slurm_partition=opts.partition,
        slurm_account=opts.account, slurm_array_parallelism=n or len(jobs))
    jobs = [replace(job, env=_threads_env(threads)) for job in jobs]
    submitted = executor.map_array(ResumableCellTask(), jobs)
    by_id = {s.job_id: job for s, job in zip(submitted, jobs)}
    array_id = submitted[0].job_id.split("_")[0]
    print(f"submitted {len(submitted)} {cluster} job(s) (first id {submitted[0].job_id}); logs in "
          f"{folder}. Ctrl-C stops waiting, not the jobs (Slurm: scancel {array_id}).",
          file=sys.stderr)
    for job in jobs:
        yield CellOutcome(job.cell_id, "running")  # queued or running: the cluster decides
    finished = set()
    try:
        for done in submitit.helpers.as_completed(submitted,
                                                  poll_frequency=1 if cluster == "local" else 30):
            finished.add(done.job_id)
            try:
                yield done.result()
            except Exception as err:  # the job itself failed (killed, out of time after requeues)
                yield record_failure(by_id[done.job_id], err)
    finally:
        if cluster == "local":  # local jobs are this machine's processes: stop them with us
            for s in submitted:
                if s.job_id not in finished:
                    s.cancel(check=False)

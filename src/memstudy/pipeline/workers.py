"""The processes a grid runner owns: one worker process per cell, each in a session of its own.

A cell runs as a papermill execution of the ablation notebook: a worker process plus the
Jupyter kernel it starts. The runner must be able to end both whatever state they are in, and
a worker that dies (out of memory, killed) must take down only its own cell. So:

- every cell gets a fresh worker, started in a new session (its own process group): the
  runner signals exactly that group, a Ctrl-C in the terminal reaches only the runner (which
  then stops every worker itself), and a dead worker is simply not reused;
- a worker watches its runner: on Linux the kernel sends it SIGTERM the moment the runner
  dies (``prctl(PR_SET_PDEATHSIG)``), and a thread also polls the parent pid (other
  systems); so even a SIGKILL of the runner leaves nothing running;
- on SIGTERM a worker kills its Jupyter kernel's process group before it exits; and the
  kernel watches its worker too (ipykernel's parent poller), in case the worker was SIGKILLed.

The worker is ``python -m memstudy.pipeline.workers``; it reads one :class:`CellJob` as JSON
on stdin and reports the outcome as its exit status (:data:`EXIT_CODES`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # executors imports this module: no import at run time
    from .executors import CellJob

PARENT_ENV = "MEMSTUDY_RUNNER_PID"  # the runner a worker must not outlive
LOG_FILE = "worker.log"  # a worker's stderr (and its kernel's), in the cell's run folder
EXIT_CODES = {"complete": 0, "failed": 1, "skipped": 3, "locked": 4}
STOP_GRACE_S = 5.0  # after SIGTERM, how long a worker may take before SIGKILL

_kernel_pids: list[int] = []  # kernels this worker started (each leads its own process group)


@dataclass
class Worker:
    """One running cell as the runner sees it."""

    job: CellJob
    proc: subprocess.Popen
    slot: int  # which GPU / share of the cores it holds
    started: float  # time.time() at launch


def start_worker(job: CellJob, slot: int) -> Worker:
    """Start the worker process of ``job`` in a new session; its stderr goes to worker.log."""
    run_dir = Path(job.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **job.env, PARENT_ENV: str(os.getpid())}
    with open(run_dir / LOG_FILE, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "memstudy.pipeline.workers"],
                                stdin=subprocess.PIPE, stdout=log, stderr=log, env=env,
                                start_new_session=True)
    try:
        proc.stdin.write(json.dumps(asdict(job)).encode())
        proc.stdin.close()
    except BrokenPipeError:
        pass  # it died at start: its exit status and worker.log say why
    return Worker(job, proc, slot, time.time())


def stop_workers(workers: list[Worker], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM every worker's process group, wait up to ``grace_s``, then SIGKILL the rest."""
    for w in workers:
        _signal_group(w.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for w in workers:
        try:
            w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(w.proc.pid, signal.SIGKILL)
            w.proc.wait()


def describe_exit(returncode: int) -> str:
    """``was killed by SIGKILL (signal 9)`` or ``exited with status 2``, for a worker's status."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "an unknown signal"
        return f"was killed by {name} (signal {-returncode})"
    return f"exited with status {returncode}"


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # already gone


# ----------------------------------------------------------------------------------------
# Inside the worker


def watch_parent(parent_pid: int) -> None:
    """End this process (by SIGTERM to itself) as soon as ``parent_pid`` is gone."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl: the polling thread below still works
    if os.getppid() != parent_pid:  # died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)

    def poll() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=poll, name="watch-runner", daemon=True).start()


def _terminate(signum, frame) -> None:
    """Kill the kernels this worker started, then exit at once (no cleanup: the cell resumes
    from its last checkpoint next time, and every file in it was written atomically)."""
    for pid in _kernel_pids:
        _signal_group(pid, signal.SIGKILL)
    os._exit(128 + signum)


def _tracking_kernel_manager():
    """jupyter_client's kernel manager, remembering the pid of the kernel it starts."""
    from jupyter_client.manager import AsyncKernelManager

    class TrackedKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kwargs):  # noqa: D401 - same contract as the parent's
            await super().start_kernel(**kwargs)
            pid = getattr(self.provisioner, "pid", None)
            if pid:
                _kernel_pids.append(pid)

    return TrackedKernelManager


def main() -> int:
    """Run one cell (a CellJob as JSON on stdin); the outcome is the exit status."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _terminate)
    watch_parent(int(os.environ.get(PARENT_ENV, os.getppid())))
    from .executors import CellJob, run_cell_job

    job = CellJob(**json.loads(sys.stdin.read()))
    outcome = run_cell_job(job, kernel_manager_class=_tracking_kernel_manager())
    return EXIT_CODES[outcome.status]


if __name__ == "__main__":
    sys.exit(main())

"""The grid runner owns its processes: stopping or killing it ends every worker and kernel it
started, a dead worker fails only its own cell, a running cell's folder is locked so two
runners share a grid instead of running cells twice, and a person can see what runs."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import closing

import nbformat
import pandas as pd
import psutil
import pytest

from memstudy.analysis.report import CELL_METRICS, METRIC_COLUMNS, collect
from memstudy.pipeline.executors import CellJob, CellOutcome, run_cell_job, run_jobs
from memstudy.pipeline.grid import load_spec
from memstudy.pipeline.progress import GridProgress
from memstudy.pipeline.runner import GridInterrupted, GridSummary, _raise_on_signals, run_grid
from memstudy.pipeline.workers import PARENT_ENV
from memstudy.runio import (LOCK_ENV, LOCK_FILE, RunLocked, acquire_lock, lock_holder, read_json,
                            release_lock, run_lock, write_progress)


@pytest.fixture(autouse=True)
def one_thread_per_kernel(monkeypatch):
    """Kernels inherit the environment: one thread each keeps 2 shared cores usable."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------------------------------------------
# The run lock (no cells run)


def test_lock_is_exclusive_and_names_its_holder(tmp_path):
    info = acquire_lock(tmp_path / "cell")
    assert info["pid"] == os.getpid() and info["host"] and info["started"]
    with pytest.raises(RunLocked, match=rf"is being run by pid {os.getpid()} on .* since "):
        acquire_lock(tmp_path / "cell")
    assert lock_holder(tmp_path / "cell")["token"] == info["token"]
    release_lock(tmp_path / "cell", "someone else's token")  # never removes another's lock
    assert lock_holder(tmp_path / "cell") is not None
    release_lock(tmp_path / "cell", info["token"])
    assert lock_holder(tmp_path / "cell") is None
    assert acquire_lock(tmp_path / "cell")["token"] != info["token"]


def test_a_dead_or_reused_pid_leaves_a_stale_lock_another_host_does_not(tmp_path):
    mine = acquire_lock(tmp_path / "a")
    lock = tmp_path / "a" / LOCK_FILE
    for holder in ({**mine, "pid": dead_pid()},  # the process is gone
                   {**mine, "pid_start": -1}):  # the pid now belongs to a newer process
        lock.write_text(json.dumps(holder))
        assert lock_holder(tmp_path / "a") is None
        assert acquire_lock(tmp_path / "a")["pid"] == os.getpid()
    lock.write_text(json.dumps({**mine, "pid": dead_pid(), "host": "elsewhere"}))
    with pytest.raises(RunLocked, match="on elsewhere"):  # cannot check: assume it runs
        acquire_lock(tmp_path / "a")


def test_run_lock_goes_ahead_only_for_the_process_it_was_taken_for(tmp_path, monkeypatch):
    held = acquire_lock(tmp_path / "cell")  # as the runner does before starting a worker
    with pytest.raises(RunLocked):
        with run_lock(tmp_path / "cell"):
            pass
    monkeypatch.setenv(LOCK_ENV, held["token"])  # what the runner hands its worker
    with run_lock(tmp_path / "cell") as inside:
        assert inside["token"] == held["token"]
    assert lock_holder(tmp_path / "cell")["token"] == held["token"]  # still the runner's


def test_run_lock_leaves_no_folder_when_nothing_was_written(tmp_path):
    with pytest.raises(ValueError):
        with run_lock(tmp_path / "new"):
            raise ValueError("bad input, found before any work")
    assert not (tmp_path / "new").exists()
    with run_lock(tmp_path / "kept"):
        (tmp_path / "kept" / "config.json").write_text("{}")
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["config.json"]


def test_progress_is_written_at_stage_changes_and_at_most_once_a_second(tmp_path):
    path = tmp_path / "progress.json"
    write_progress(tmp_path, "diffusion", 1, 100)
    first = path.stat().st_mtime_ns
    for step in range(2, 50):
        write_progress(tmp_path, "diffusion", step, 100)
    assert path.stat().st_mtime_ns == first and read_json(path)["step"] == 1
    write_progress(tmp_path, "diffusion", 100, 100)  # a stage's last step is always written
    assert read_json(path)["step"] == 100
    write_progress(tmp_path, "evaluate", 100, 100)
    assert read_json(path)["stage"] == "evaluate"


# ----------------------------------------------------------------------------------------
# What a person sees


def test_the_view_names_running_cells_their_stage_and_the_counts(tmp_path):
    jobs = [CellJob(c, {"train_steps": 100, "ae_steps": 30}, str(tmp_path / c), "nb")
            for c in ("a", "b", "c")]
    out = io.StringIO()
    with GridProgress("g", jobs, live=False, stream=out) as view:
        view.update(CellOutcome("a", "running"))
        view.update(CellOutcome("b", "running"))
        write_progress(tmp_path / "b", "autoencoder")  # stage 1 logs its steps to stats.jsonl
        (tmp_path / "b" / "stats.jsonl").write_text('{"stage": "autoencoder", "step": 26}\n{"st')
        assert "b  autoencoder 26/30" in view._cell_text("b")
        write_progress(tmp_path / "a", "diffusion", 40, 100)
        assert "a  diffusion 40/100" in view._cell_text("a")
        total, done = view._work()
        assert done == pytest.approx(0.4 * total / 3)  # equal costs: 40 % of one of 3 cells
        view.update(CellOutcome("a", "complete"))
        view.update(CellOutcome("b", "failed", "ValueError: no"))
        view.update(CellOutcome("c", "locked", "pid 1 on h since t"))
    text = out.getvalue()
    assert "started b  (0 done, 0 failed, 2 running, 1 left of 3)" in text
    assert "failed b after 0 s: ValueError: no" in text
    assert "(1 done, 1 failed, 1 run by another runner, 0 running, 0 left of 3)" in text

    live = io.StringIO()
    with GridProgress("g", jobs, live=True, stream=live) as view:
        view.update(CellOutcome("a", "running"))
        write_progress(tmp_path / "a", "gan", 50, 100)
        view._redraw()
    assert "grid g: 0 done, 0 failed, 1 running, 2 left of 3" in live.getvalue()
    assert "a  gan 50/100" in live.getvalue()


def test_summary_reports_cells_left_to_another_runner_and_stopped_ones(tmp_path):
    summary = GridSummary("g", tmp_path, ["a", "b", "c"], complete=["a"],
                          locked={"b": "pid 7 on h since t"}, stopped=["c"])
    text = summary.format()
    assert "left to another runner (folder locked): 1\n    b: run by pid 7 on h since t" in text
    assert "stopped while running: 1  c" in text and "resume" in text


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_stop_signals_become_one_exception_and_the_old_handlers_come_back(sig):
    before = signal.getsignal(sig)
    with pytest.raises(GridInterrupted) as stop:
        with _raise_on_signals():
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the handler raises here, at once
    assert stop.value.signum == sig and isinstance(stop.value, KeyboardInterrupt)
    assert signal.getsignal(sig) is before


# ----------------------------------------------------------------------------------------
# Processes (tiny notebooks: seconds)


def tiny_notebook(path, code: str) -> str:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('run_dir = ""')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)
    return str(path)


def owned_by(runner_pid: int) -> list[psutil.Process]:
    """Every live process that a runner started, at any depth: workers and kernels inherit
    the runner's pid in their environment, even once re-parented to init."""
    found = []
    for proc in psutil.process_iter():
        try:
            if (proc.status() != psutil.STATUS_ZOMBIE
                    and proc.environ().get(PARENT_ENV) == str(runner_pid)):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.1)
    return value


def test_a_dead_worker_fails_only_its_own_cell(tmp_path):
    sleeper = tiny_notebook(tmp_path / "sleep.ipynb", "import time\ntime.sleep(300)")
    writer = tiny_notebook(tmp_path / "ok.ipynb",
                           "open(run_dir + '/metrics.json', 'w').write('{}')")
    jobs = [CellJob("dies", {}, str(tmp_path / "dies"), sleeper),
            CellJob("ok", {}, str(tmp_path / "ok"), writer)]
    outcomes = {}
    with closing(run_jobs("sequential", jobs, 1, None, tmp_path)) as events:
        for event in events:
            outcomes[event.cell_id] = event
            if event == CellOutcome("dies", "running"):
                assert (tmp_path / "dies" / LOCK_FILE).exists()  # held while it runs
                worker = psutil.Process().children()[-1]
                kernel = wait_for(lambda: worker.children(), 60, "the kernel to start")[0]
                worker.kill()  # as the out-of-memory killer would
    assert outcomes["ok"].status == "complete"
    assert "without encryption" not in (tmp_path / "ok" / "worker.log").read_text()  # silenced
    assert outcomes["dies"].status == "failed"
    assert outcomes["dies"].error.startswith("WorkerDied: the worker process of this cell was "
                                             "killed by SIGKILL (signal 9)")
    assert read_json(tmp_path / "dies" / "error.json")["error_type"] == "WorkerDied"
    assert not (tmp_path / "dies" / LOCK_FILE).exists()
    assert psutil.wait_procs([kernel], timeout=10)[1] == []  # its kernel went with it


def test_a_cell_that_finds_its_folder_locked_is_left_alone_not_failed(tmp_path):
    """The Slurm path: no runner lock, so the cell's own run_lock meets the other holder."""
    locking = tiny_notebook(tmp_path / "lock.ipynb", "from memstudy.runio import run_lock\n"
                            "with run_lock(run_dir):\n    pass")
    holder = acquire_lock(tmp_path / "cell")
    outcome = run_cell_job(CellJob("cell", {}, str(tmp_path / "cell"), locking))
    assert outcome.status == "locked" and f"pid {os.getpid()}" in outcome.error
    assert not (tmp_path / "cell" / "error.json").exists()
    assert lock_holder(tmp_path / "cell")["token"] == holder["token"]


def test_a_grid_with_nothing_left_to_run_returns_at_once(tmp_path):
    assert run_jobs("local", [], 2, None, tmp_path).close() is None


def test_dry_run_names_the_process_running_a_cell(tmp_path, capsys):
    cid = load_spec("smoke").cells()[0].id
    acquire_lock(tmp_path / "smoke" / cid)
    run_grid("smoke", results_dir=tmp_path, dry_run=True)
    assert f"{cid}  [incomplete, running: pid {os.getpid()} on " in capsys.readouterr().out


def test_stopping_the_runner_stops_its_workers_and_kernels(tmp_path):
    sleeper = tiny_notebook(tmp_path / "sleep.ipynb", "import time\ntime.sleep(300)")
    jobs = [CellJob(c, {}, str(tmp_path / c), sleeper) for c in ("a", "b")]
    events = run_jobs("local", jobs, 2, None, tmp_path)
    assert [next(events).status, next(events).status] == ["running", "running"]
    wait_for(lambda: len(psutil.Process().children(recursive=True)) >= 4, 60, "two kernels")
    started = owned_by(os.getpid())
    assert len(started) == 4  # two workers, two kernels
    events.close()  # what Ctrl-C or SIGTERM does to the runner's loop
    assert psutil.wait_procs(started, timeout=10)[1] == []
    assert not any((tmp_path / c / LOCK_FILE).exists() for c in ("a", "b"))
    assert not any((tmp_path / c / "error.json").exists() for c in ("a", "b"))  # resumable


# ----------------------------------------------------------------------------------------
# The command line: import cost, kill tests, two runners (real cells)


@pytest.mark.parametrize("argv", [["grid", "run", "quick", "--dry-run"], ["grid", "list"]])
def test_listing_and_planning_do_not_import_torch_or_monai(argv):
    code = ("import sys\nfrom memstudy.cli import main\nmain(%r)\n"
            "print('HEAVY', sorted(m for m in ('torch', 'monai', 'papermill') if m in sys.modules))"
            % argv)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120).stdout
    assert out.strip().splitlines()[-1] == "HEAVY []"


def grid_command(results, *extra):
    return [sys.executable, "-m", "memstudy.cli", "grid", "run", "smoke", "--results", str(results),
            "--no-progress", *extra]


@pytest.mark.slow
def test_killed_runner_leaves_no_process_and_the_rerun_gives_the_same_table(tmp_path):
    ids = [c.id for c in load_spec("smoke").cells()]
    reference = subprocess.Popen(grid_command(tmp_path / "uninterrupted"),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    grid = tmp_path / "killed" / "smoke"

    def kernel_running(runner) -> bool:
        for proc in psutil.Process(runner.pid).children(recursive=True):
            try:
                if "ipykernel" in " ".join(proc.cmdline()):
                    return True
            except psutil.NoSuchProcess:
                continue
        return False

    def started_cells():
        return [c for c in ids if (grid / c / "config.json").exists()
                and not (grid / c / "metrics.json").exists()]

    # SIGTERM while two cells run; then SIGKILL (no cleanup possible) once one is done and
    # another still runs.
    for sig, ready in ((signal.SIGTERM, lambda r: len(started_cells()) == 2),
                       (signal.SIGKILL, lambda r: (any((grid / c / "metrics.json").exists()
                                                       for c in ids) and kernel_running(r)))):
        runner = subprocess.Popen(grid_command(tmp_path / "killed", "--jobs", "2"),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: runner.poll() is not None or ready(runner), 600, "cells to start")
        assert runner.poll() is None, "the grid ended before the test could stop it"
        started = owned_by(runner.pid)
        assert any("ipykernel" in " ".join(p.cmdline()) for p in started)
        runner.send_signal(sig)
        assert runner.wait(timeout=30) == (143 if sig == signal.SIGTERM else -9)
        left = psutil.wait_procs(started, timeout=10)[1] + owned_by(runner.pid)
        assert left == [], f"{len(left)} processes outlived the runner's {sig.name}"
    finished = {c: (grid / c / "metrics.json").stat() for c in ids
                if (grid / c / "metrics.json").exists()}
    assert 0 < len(finished) < len(ids)

    subprocess.run(grid_command(tmp_path / "killed", "--jobs", "2"), check=True, timeout=900,
                   capture_output=True)

    for cid, before in finished.items():  # not redone
        after = (grid / cid / "metrics.json").stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), cid
    assert reference.wait(timeout=900) == 0
    columns = ["cell", "status", *METRIC_COLUMNS, *CELL_METRICS]
    pd.testing.assert_frame_equal(collect(grid)[columns],
                                  collect(tmp_path / "uninterrupted" / "smoke")[columns])


@pytest.mark.slow
def test_two_runners_on_one_folder_run_each_cell_once(tmp_path):
    spec = tmp_path / "pair.yaml"
    spec.write_text("name: pair\nfixed: {train_steps: 10, ae_steps: 10, encoder_steps: 10, "
                    "num_gen: 8, device: cpu}\naxes: {augmentation: [none, flip_rotate]}\n")
    code = ("import json, sys\nfrom memstudy.pipeline.runner import run_grid\n"
            f"s = run_grid({str(spec)!r}, results_dir={str(tmp_path)!r}, progress=False)\n"
            "print(json.dumps({'complete': s.complete, 'skipped': s.skipped, "
            "'locked': list(s.locked), 'failed': s.failed}))")
    runners = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    results = [json.loads(r.communicate(timeout=900)[0].strip().splitlines()[-1])
               for r in runners]
    ran = [cid for r in results for cid in r["complete"]]
    assert sorted(ran) == ["aug-flip_rotate_seed-0", "aug-none_seed-0"]  # each exactly once
    assert not any(r["failed"] for r in results)
    # They met: one runner found a cell locked (or complete) and left it to the other.
    assert sum(len(r["locked"]) + len(r["skipped"]) for r in results) == 2
    assert set(collect(tmp_path / "pair")["status"]) == {"complete"}


def test_a_cell_waiting_for_a_shared_autoencoder_in_training_yields_its_turn(tmp_path):
    """While a worker trains a shared stage 1, the next worker starts a cell that can work now
    rather than one that would wait on the lock; when every cell left waits, it takes the first."""
    from collections import deque
    from pathlib import Path

    from memstudy.pipeline.executors import CellJob, _next_job, relative_cost

    volume_ae, slice_ae = str(tmp_path / "ae3d.pt"), str(tmp_path / "ae2d.pt")
    jobs = [CellJob(c, {}, str(tmp_path / c), "nb") for c in ("3d_a", "3d_b", "2d_a")]
    stage1 = {"3d_a": volume_ae, "3d_b": volume_ae, "2d_a": slice_ae}
    queue = deque(jobs[1:])
    assert _next_job(queue, {volume_ae}, stage1).cell_id == "2d_a"  # 3d_b would only wait
    assert _next_job(queue, {volume_ae}, stage1).cell_id == "3d_b"  # nothing else left
    Path(volume_ae).write_bytes(b"trained")  # once the file is there, nobody waits
    assert _next_job(deque(jobs[1:]), {volume_ae}, stage1).cell_id == "3d_b"
    # and the ordering puts volume cells (and their autoencoder) before slice cells, controls last
    base = dict(autoencoder="shared", ae_steps=300, train_steps=2000, dataset_size=8,
                detectors="pixel")
    costs = [relative_cost({**base, **p}) for p in (
        {"spatial_dims": 3}, {"spatial_dims": 2}, {"spatial_dims": 2, "model": "control_positive"})]
    assert costs == sorted(costs, reverse=True)


@pytest.mark.parametrize("model, autoencoder, loads", [
    ("ldm", "shared", True), ("control_positive", "shared", True), ("ldm", "per_cell", False),
    ("gan", "shared", False), ("pixel_dm", "shared", False), ("autoencoder", "shared", False)])
def test_the_pool_waits_on_a_shared_autoencoder_only_for_cells_that_load_one(
        model, autoencoder, loads, tmp_path, monkeypatch):
    from memstudy.pipeline.executors import shared_stage1

    monkeypatch.setenv("MEMSTUDY_CACHE", str(tmp_path))
    path = shared_stage1({"model": model, "autoencoder": autoencoder})
    assert (path is not None) == loads
    if loads:  # the file the training loop writes, in the cache
        assert path.startswith(str(tmp_path)) and path.endswith(".pt")

"""The grid: specs expand into the right cells, bad specs fail before any run, and running
fails cell by cell (interrupting it: tests/test_runner.py)."""

import pytest

from memstudy.config import ConfigError, RunConfig
from memstudy.pipeline.executors import SlurmOptions, worker_env
from memstudy.pipeline.grid import GridSpec, SpecError, cell_id, load_spec
from memstudy.pipeline.runner import run_grid
from memstudy.analysis.report import collect
from memstudy.runio import read_json, write_json_atomic

# Cells of a few seconds: the end-to-end tests only check plumbing, not memorization.
TINY = {"train_steps": 10, "ae_steps": 10, "encoder_steps": 10, "num_gen": 8, "device": "cpu"}


@pytest.fixture(autouse=True)
def one_thread_per_kernel(monkeypatch):
    """Notebook kernels inherit the environment; one thread each keeps a shared 2-core
    machine from being oversubscribed (torch's threads then wait on each other)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")


def tiny_spec(name, **axes):
    return GridSpec.from_dict({"name": name, "fixed": TINY, "axes": axes})


# ----------------------------------------------------------------------------------------
# Expansion (no training)


def test_packaged_presets_expand():
    smoke, quick, full = (load_spec(n).cells() for n in ("smoke", "quick", "full"))
    assert [c.id for c in smoke] == ["aug-none_size-XS_seed-0", "aug-flip_rotate_size-XS_seed-0",
                                     "aug-none_size-S_seed-0"]
    star = load_spec("quick")  # its levels and budgets get tuned: check its shape only
    assert star.design == "star" and len(star.seeds) >= 3  # replicates on new patients
    assert len(quick) == len(star.seeds) * (1 + sum(len(levels) - 1 for levels in star.axes.values()))
    assert {"control_positive", "control_negative"} <= set(star.axes["model"])  # controls in every grid
    assert quick[0].id == cell_id({**star.base, "seed": star.seeds[0]})
    assert all(c.config.device == "cpu" and len(c.config.checkpoints) > 1 for c in quick)
    assert len(full) >= 108 and len({c.id for c in full}) == len(full)
    assert {(c.config.augmentation, c.config.unet_preset, c.config.dataset_size, c.config.seed)
            for c in full} == {(a, u, n, s) for a in ("none", "flip_rotate", "strong")
                               for u in ("S", "M", "L") for n in (64, 256, 1024, 4096)
                               for s in (0, 1, 2, 3, 4)}
    assert all(c.config.device == "cuda" and len(c.config.eval_steps) == 4 for c in full)


def test_full_design_is_the_product_times_seeds():
    spec = GridSpec.from_dict({"name": "g", "design": "full", "seeds": [0, 1],
                               "axes": {"augmentation": ["none", "strong"],
                                        "dataset_size": [8, 16, 32]}})
    cells = spec.cells()
    assert len(cells) == 2 * 3 * 2
    assert cells[0].id == "aug-none_n-8_seed-0" and cells[-1].id == "aug-strong_n-32_seed-1"
    assert cells[-1].config == RunConfig(augmentation="strong", dataset_size=32, seed=1)


def test_star_design_varies_one_axis_at_a_time():
    spec = GridSpec.from_dict({"name": "g", "design": "star",
                               "axes": {"augmentation": ["none", "flip_rotate", "strong"],
                                        "unet_preset": ["S", "M"]},
                               "base": {"augmentation": "flip_rotate", "unet_preset": "S"}})
    assert [c.id for c in spec.cells()] == [
        "aug-flip_rotate_size-S_seed-0", "aug-none_size-S_seed-0", "aug-strong_size-S_seed-0",
        "aug-flip_rotate_size-M_seed-0"]


def test_cell_ids_are_short_and_readable():
    assert cell_id({"augmentation": "none", "unet_preset": "S", "dataset_size": 64,
                    "seed": 0}) == "aug-none_size-S_n-64_seed-0"
    assert cell_id({"ae_channels": [16, 32], "lr": 0.001, "seed": 1}) == "ae_channels-16-32_lr-0.001_seed-1"


@pytest.mark.parametrize("change, message", [
    ({"axis": {}}, r"unknown key\(s\) \['axis'\]"),
    ({"name": "a/b"}, "folder-safe"),
    ({"design": "random"}, "design 'random' is not one of"),
    ({"fixed": {"trainsteps": 5}}, "'trainsteps' is not a RunConfig field"),
    ({"fixed": {"seed": 1}}, "top-level `seeds`"),
    ({"axes": {"augmentation": ["none", "heavy"]}},
     "cell aug-heavy_seed-0: augmentation='heavy' is not one of"),
    ({"axes": {"dataset_size": [8, 10]}}, "cell n-10_seed-0: dataset_size 10 must be a multiple"),
    ({"axes": {"train_steps": [10, 20]}}, "training length is not an axis"),
    ({"axes": {"augmentation": "none"}}, "non-empty list of levels"),
    ({"axes": {"augmentation": ["none", "none"]}}, "lists a level twice"),
    ({"axes": {"device": ["cpu"]}, "fixed": {"device": "cpu"}}, "both in `fixed` and in `axes`"),
    ({"design": "star", "axes": {"augmentation": ["none"]}}, "needs `base`"),
    ({"design": "star", "axes": {"augmentation": ["none"]}, "base": {"augmentation": "strong"}},
     "is not one of the axis levels"),
    ({"seeds": [0, 0]}, "distinct integers"),
])
def test_bad_specs_say_what_to_fix(change, message):
    with pytest.raises(SpecError, match=message):
        GridSpec.from_dict({"name": "bad", **change}).cells()


def test_bad_spec_fails_before_any_cell_runs(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\naxes:\n  augmentation: [none, heavy]\n")
    with pytest.raises(SpecError, match="augmentation='heavy'"):
        run_grid(path, results_dir=tmp_path / "results")
    assert not (tmp_path / "results").exists()


def test_specs_load_by_path_and_name(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nfixed: {train_steps: 20}\naxes: {seed_like: [1]}\n")
    with pytest.raises(SpecError, match="'seed_like' is not a RunConfig field"):
        load_spec(path)
    path.write_text("name: mine\nfixed: {train_steps: 20}\n")
    assert [c.id for c in load_spec(path).cells()] == ["seed-0"]
    path.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)
    with pytest.raises(SpecError, match="packaged specs are .*quick.*smoke"):
        load_spec("nosuch")


def test_dry_run_lists_every_cell_and_writes_nothing(tmp_path, capsys):
    summary = run_grid("full", results_dir=tmp_path / "results", dry_run=True)
    out = capsys.readouterr().out
    assert len(summary.planned) == 180
    assert all(f"{cid}  [pending]" in out for cid in summary.planned)
    assert "train_steps=40000 checkpoints=5000,10000,20000,40000" in out
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SpecError, match="no cell named nope"):
        run_grid("smoke", results_dir=tmp_path, dry_run=True, only=["nope"])
    with pytest.raises(ConfigError, match="use executor 'local'"):
        run_grid("smoke", results_dir=tmp_path, jobs=2)
    assert list(tmp_path.iterdir()) == []


def test_local_workers_get_one_gpu_each_or_a_share_of_the_cores():
    assert [worker_env(s, 3, ["0", "1"], 16) for s in range(3)] == [
        {"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}, {"CUDA_VISIBLE_DEVICES": "0"}]
    assert worker_env(1, 2, [], 2) == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    assert worker_env(0, 4, [], 2)["OMP_NUM_THREADS"] == "1"


# ----------------------------------------------------------------------------------------
# Running (each cell is a papermill run of the ablation notebook: seconds on a CPU)


@pytest.mark.slow
def test_failing_cell_is_recorded_and_the_others_complete(tmp_path):
    spec = tiny_spec("failing", augmentation=["none", "flip_rotate"])
    good, bad = (tmp_path / "failing" / cid for cid in ("aug-none_seed-0", "aug-flip_rotate_seed-0"))
    # A folder holding another experiment makes run_cell raise inside the notebook.
    write_json_atomic(bad / "config.json", RunConfig(seed=99).to_dict())
    write_json_atomic(good / "error.json", {"error_type": "Stale", "message": "from before"})

    summary = run_grid(spec, results_dir=tmp_path, progress=False)

    assert summary.complete == ["aug-none_seed-0"]
    assert list(summary.failed) == ["aug-flip_rotate_seed-0"]
    assert summary.failed["aug-flip_rotate_seed-0"].startswith("ConfigError: ")
    assert (good / "metrics.json").exists() and not (good / "error.json").exists()
    error = read_json(bad / "error.json")
    assert error["error_type"] == "ConfigError" and "different config" in error["message"]
    assert "claim_run_dir" in error["traceback"] and error["time"]
    assert (bad / "notebook.ipynb").exists()
    assert [c["id"] for c in read_json(tmp_path / "failing" / "grid.json")["cells"]] == [
        "aug-none_seed-0", "aug-flip_rotate_seed-0"]

    again = run_grid(spec, results_dir=tmp_path, retry_failed=False, progress=False)
    assert again.skipped == ["aug-none_seed-0"] and again.complete == []
    assert again.failed["aug-flip_rotate_seed-0"].startswith("(not retried) ConfigError")
    table = collect(tmp_path / "failing")
    failed = table[table["status"] == "failed"]
    assert len(failed) == 1 and failed["mem_rate"].isna().all()


@pytest.mark.slow
def test_submitit_local_executor_completes_a_grid(tmp_path):
    spec = tiny_spec("two", augmentation=["none", "flip_rotate"])
    summary = run_grid(spec, results_dir=tmp_path, executor="submitit-local",
                       slurm=SlurmOptions(time_min=15), progress=False)
    assert summary.ok and sorted(summary.complete) == ["aug-flip_rotate_seed-0", "aug-none_seed-0"]
    assert (tmp_path / "two" / ".submitit").is_dir()
    assert set(collect(tmp_path / "two")["status"]) == {"complete"}


# Stopping and killing a running grid, and two runners on one folder: tests/test_runner.py.

"""Test-session settings: one shared cache, results never written into the checkout."""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_results(tmp_path_factory):
    # The in-domain feature encoder (memstudy.quality) is cached by content: train it once
    # per test session rather than once per test.
    os.environ.setdefault("MEMSTUDY_CACHE", str(tmp_path_factory.mktemp("cache")))
    os.environ.setdefault("MEMSTUDY_RESULTS", str(tmp_path_factory.mktemp("results")))
    yield


def kill_after_first_checkpoint_then_resume(cfg, run_dir, monkeypatch) -> dict:
    """Run a cell that dies right after its first checkpoint, check that it does not look
    complete, run it again, and return the resumed run's metrics."""
    import memstudy.pipeline.cell as cell

    real = cell.evaluate_checkpoint

    def killed_after_first(cfg, step, *args, **kwargs):
        real(cfg, step, *args, **kwargs)
        raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(cell, "evaluate_checkpoint", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        cell.run_cell(cfg, run_dir, progress=False)
    assert not cell.is_complete(run_dir)  # a killed cell never looks complete
    monkeypatch.setattr(cell, "evaluate_checkpoint", real)
    return cell.run_cell(cfg, run_dir, progress=False)

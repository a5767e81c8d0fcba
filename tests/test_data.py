"""Reading a local MedMNIST file: the same Sets as the cohort, or a clear error first."""

import json
from pathlib import Path

import numpy as np
import pytest

from memstudy.pipeline.cell import run_cell
from memstudy.config import ConfigError, RunConfig
from memstudy.data.sets import load_sets


@pytest.fixture
def medmnist(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "toymnist_28.npz",
             train_images=rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
             val_images=rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
             test_images=rng.integers(0, 256, (40, 28, 28), dtype=np.uint8))  # null: test half
    monkeypatch.setenv("MEMSTUDY_DATA", str(tmp_path))
    return RunConfig(dataset="medmnist:toymnist_28", dataset_size=8, holdout_size=16)


def test_medmnist_file_becomes_train_and_holdout_sets(medmnist):
    sets = load_sets(medmnist)
    assert sets.train.images.shape == (8, 1, 32, 32) and sets.holdout.images.shape == (16, 1, 32, 32)
    assert 0 <= sets.train.images.min() and sets.train.images.max() <= 1
    assert not set(sets.train.patient_id) & set(sets.holdout.patient_id)


def test_a_missing_file_says_where_it_looked(medmnist, monkeypatch, tmp_path):
    monkeypatch.setenv("MEMSTUDY_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="nowhere/toymnist_28.npz does not exist"):
        run_cell(medmnist, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_bad_dataset_name_fails_at_config_time():
    with pytest.raises(ConfigError, match="medmnist:<flag>"):
        RunConfig(dataset="brats")


def test_a_cell_runs_on_a_medmnist_file(medmnist, tmp_path):
    metrics = run_cell(medmnist.replace(train_steps=10, ae_steps=5, encoder_steps=5, ddim_steps=5,
                                        detectors=("contrastive", "pixel", "trusted"),
                                        trusted_steps=2),
                       tmp_path / "run", progress=False)
    # the trusted encoder learns from the file's own reference share (half of its test images)
    assert {r["detector"] for r in metrics["rows"]} == {"contrastive", "pixel", "trusted"}
    key = json.loads(Path(metrics["trusted_encoder_file"]).with_suffix(".json").read_text())
    assert key["dataset"] == "medmnist:toymnist_28" and len(key["pool"]) == 16

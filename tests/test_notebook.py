"""The ablation notebook under papermill: the thin front door of one cell."""

import json
from pathlib import Path

import papermill as pm
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "ablation.ipynb"


def test_notebook_runs_a_smoke_cell_with_parameters(tmp_path):
    run_dir = tmp_path / "run"
    pm.execute_notebook(str(NOTEBOOK), str(tmp_path / "out.ipynb"), progress_bar=False,
                        parameters={"train_steps": 10, "ae_steps": 5, "encoder_steps": 5,
                                    "ddim_steps": 5, "augmentation": "flip_rotate",
                                    "run_dir": str(run_dir)})
    config = json.loads((run_dir / "config.json").read_text())
    assert config["augmentation"] == "flip_rotate" and config["train_steps"] == 10
    assert (run_dir / "metrics.json").exists()
    assert (run_dir / "figures" / "hist_step000010_contrastive.png").exists()


def test_an_unknown_parameter_stops_the_notebook_before_training(tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match="Unknown config key.*datset_size"):
        pm.execute_notebook(str(NOTEBOOK), str(tmp_path / "out.ipynb"), progress_bar=False,
                            parameters={"datset_size": 32, "run_dir": str(tmp_path / "run")})
    assert not (tmp_path / "run").exists()

"""The run config: one typed place for every default, and errors that say what to do."""

import json

import nbformat
import pytest

from memstudy.config import ConfigError, RunConfig


def test_json_round_trip_is_exact():
    cfg = RunConfig(dataset_size=64, augmentation="strong", checkpoints=(10, 20), train_steps=30)
    again = RunConfig.from_json(cfg.to_json())
    assert again == cfg and again.digest() == cfg.digest()
    assert json.loads(cfg.to_json())["checkpoints"] == [10, 20]


def test_papermill_strings_are_coerced():
    cfg = RunConfig.from_params({"checkpoints": "10, 20", "ae_channels": "16,32,32",
                                 "dataset_size": "64", "lr": "2e-4", "detectors": "pixel"})
    assert cfg.checkpoints == (10, 20) and cfg.ae_channels == (16, 32, 32)
    assert cfg.dataset_size == 64 and cfg.lr == 2e-4 and cfg.detectors == ("pixel",)
    assert cfg.eval_steps == (10, 20, 30)


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="Unknown config key.*datset_size.*dataset_size"):
        RunConfig.from_params({"datset_size": 64})


@pytest.mark.parametrize("params, message", [
    ({"dataset_size": -4}, "dataset_size must be a positive"),
    ({"augmentation": "heavy"}, "augmentation='heavy' is not one of"),
    ({"unet_preset": "XL"}, "unet_preset='XL'"),
    ({"image_size": 30}, "divisible by 16"),
    ({"dataset_size": 10}, "multiple of slices_per_patient"),
    ({"checkpoints": "5,99"}, r"checkpoints \[99\]"),
    ({"dataset_size": 2000}, "raise it to at least"),
    ({"lr": 0}, "lr must be positive"),
    ({"dataset_size": 2.5}, "cannot be read"),
    ({"detectors": "pixel,clip"}, "detectors='clip'"),
])
def test_invalid_values_fail_before_any_work(params, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_params(params)


def test_notebook_parameter_defaults_equal_the_config_defaults():
    """The notebook repeats the defaults as literals (papermill needs them there): keep them equal."""
    nb = nbformat.read("notebooks/ablation.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    namespace: dict = {}
    exec(cell.source, namespace)
    params = {k: v for k, v in namespace.items() if not k.startswith("__")}
    assert params.pop("run_dir") == ""
    assert params.pop("data_root") == ""  # "where", like run_dir: not a config field
    assert RunConfig.from_params(params) == RunConfig()
    assert set(params) == set(RunConfig.field_names())

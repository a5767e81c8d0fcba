"""Every bad input stops a cell before training, with a message naming the file and the fix,
and leaves no run folder behind (issue 11: a NaN used to surface after training, in sklearn)."""

import gzip
import json
import re

import numpy as np
import pytest
from PIL import Image

import data_fixtures as fx
from memstudy.config import RunConfig
from memstudy.data.readers import DataError
from memstudy.data.sets import SPLIT_FILE
from memstudy.pipeline.cell import run_cell


def refused(dataset, root, tmp_path, monkeypatch, *patterns, **cfg):
    """Run a cell on ``root``; it must raise DataError matching every pattern, and leave no folder."""
    monkeypatch.setenv("MEMSTUDY_DATA", str(root))
    run_dir = tmp_path / "run"
    params = {"dataset_size": 8, "holdout_size": 8, "num_gen": 4, **cfg}
    with pytest.raises(DataError) as err:
        run_cell(RunConfig(dataset=dataset, **params), run_dir, progress=False)
    for pattern in patterns:
        assert re.search(pattern, str(err.value)), (pattern, str(err.value))
    assert not run_dir.exists()  # not started, not complete: nothing at all
    return str(err.value)


def only_in_train(root, keys, holdout, test=()):
    """A split file putting exactly ``keys`` in train, so every one of them is read."""
    (root / SPLIT_FILE).write_text(json.dumps({"train": keys, "holdout": holdout, "test": list(test)}))


def png_keys(root):
    return [f"img:{p.name}" for p in sorted(root.glob("*.png"))]


def test_missing_root(tmp_path, monkeypatch):
    refused("brats2021", tmp_path / "nowhere", tmp_path, monkeypatch,
            r"nowhere does not exist", r"set MEMSTUDY_DATA")


def test_empty_root(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    refused("chest_xray", tmp_path / "empty", tmp_path, monkeypatch, r"empty is empty", "unpack")


def test_a_layout_matching_no_known_data_set_says_what_was_expected_and_found(tmp_path, monkeypatch):
    root = fx.write_chest_xray(tmp_path / "data")
    message = refused("brats2021", root, tmp_path, monkeypatch, r"does not hold the 'brats2021' layout",
                      r"BraTS2021_XXXXX/", r"found \d+ \.jpeg", r"looks like the 'chest_xray' layout")
    assert "nih_cxr14: Data_Entry_2017.csv" in message  # every known layout is listed
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "notes.txt").write_text("no images here")
    refused("nih_cxr14", tmp_path / "odd", tmp_path, monkeypatch, r"found 1 \.txt", r"Known layouts")


def test_a_truncated_nifti(tmp_path, monkeypatch):
    root = fx.write_brats(tmp_path / "data")
    for path in root.glob("*/*_flair.nii.gz"):
        path.write_bytes(path.read_bytes()[:300])
    refused("brats2021", root, tmp_path, monkeypatch, r"_flair\.nii\.gz could not be read as NIfTI",
            "truncated or corrupt", "re-download")


def test_a_nii_gz_that_is_not_gzip(tmp_path, monkeypatch):
    root = fx.write_brats(tmp_path / "data")
    for path in root.glob("*/*_flair.nii.gz"):
        path.write_bytes(gzip.decompress(path.read_bytes()))  # an uncompressed NIfTI, misnamed
    refused("brats2021", root, tmp_path, monkeypatch, r"_flair\.nii\.gz ends in \.gz but is not "
            "gzip-compressed", r"rename it to \.nii")


def test_a_4d_volume_where_3d_is_expected(tmp_path, monkeypatch):
    root = fx.write_brats(tmp_path / "data")
    for path in root.glob("*/*_flair.nii.gz"):
        fx.write_nifti(path, np.stack([fx.head(0)] * 2, axis=-1))
    refused("brats2021", root, tmp_path, monkeypatch, r"_flair\.nii\.gz has shape \(32, 32, 12, 2\), "
            "expected a 3D volume", "pick one channel")


def test_the_wrong_channel_count(tmp_path, monkeypatch):
    root = fx.write_decathlon(tmp_path / "data")
    for path in (root / "Task01_BrainTumour" / "imagesTr").glob("BRATS_*.nii.gz"):
        fx.write_nifti(path, np.stack([fx.head(0)] * 3, axis=-1))
    refused("decathlon_brain", root, tmp_path, monkeypatch, r"BRATS_\d+\.nii\.gz has shape "
            r"\(32, 32, 12, 3\), expected a 4D volume with 4 channels")


def test_a_subject_missing_a_modality(tmp_path, monkeypatch):
    root = fx.write_brats(tmp_path / "data")
    (root / "BraTS2021_00003" / "BraTS2021_00003_t1ce.nii.gz").unlink()
    refused("brats2021", root, tmp_path, monkeypatch, r"BraTS2021_00003: subject BraTS2021_00003 "
            r"lacks its t1ce image \(expected BraTS2021_00003_t1ce\.nii\.gz\)", "restore the file")


def test_nan_in_volumes(tmp_path, monkeypatch):
    root = fx.write_brats(tmp_path / "data")
    for path in root.glob("*/*_flair.nii.gz"):
        volume = fx.head(0)
        volume[3, 3, 3] = np.nan
        fx.write_nifti(path, volume)
    refused("brats2021", root, tmp_path, monkeypatch, r"_flair\.nii\.gz: the volume holds 1 NaN",
            "fix or re-export")


def test_a_constant_volume(tmp_path, monkeypatch):
    root = fx.write_nifti_folder(tmp_path / "data")
    for path in root.glob("*.nii.gz"):
        fx.write_nifti(path, np.full(fx.SHAPE, 7.0, np.float32))
    refused("folder", root, tmp_path, monkeypatch, r"subject_\d+\.nii\.gz: the volume is constant",
            "remove it")


def test_the_issue_case_a_float_medmnist_file_with_nan(tmp_path, monkeypatch):
    x = np.random.default_rng(0).random((40, 28, 28)).astype(np.float32)
    x[17, 3, 3] = np.nan
    np.savez(tmp_path / "bad_28.npz", train_images=x, val_images=x[:20], test_images=x[:20])
    refused("medmnist:bad_28", tmp_path, tmp_path, monkeypatch,
            r"bad_28\.npz train_images row 17: the image holds 1 NaN")


def test_infinite_and_constant_images(tmp_path, monkeypatch):
    x = np.random.default_rng(0).random((40, 28, 28)).astype(np.float32)
    x[5, 0, 0] = np.inf
    np.savez(tmp_path / "inf_28.npz", train_images=x, val_images=x[20:], test_images=x[20:])
    refused("medmnist:inf_28", tmp_path, tmp_path, monkeypatch, r"row 5: the image holds 0 NaN and "
            "1 infinite")
    root = fx.write_png_folder(tmp_path / "pngs", n=24)
    Image.fromarray(np.full((40, 36), 90, np.uint8)).save(root / "scan_000.png")
    keys = png_keys(root)
    only_in_train(root, keys[:8], keys[8:16], keys[16:])
    refused("folder", root, tmp_path, monkeypatch, r"scan_000\.png: the image is constant")


def test_float_images_outside_the_expected_range(tmp_path, monkeypatch):
    x = 3 * np.random.default_rng(0).random((40, 28, 28)).astype(np.float32)
    np.savez(tmp_path / "hot_28.npz", train_images=x, val_images=x[:20], test_images=x[:20])
    refused("medmnist:hot_28", tmp_path, tmp_path, monkeypatch, r"hot_28\.npz train_images: float "
            r"images must lie in \[0, 1\], found values from \S+ to 2\.99", "save them as uint8")


def test_8_and_16_bit_images_mixed_in_one_folder_are_refused(tmp_path, monkeypatch):
    root = fx.write_png_folder(tmp_path / "pngs", n=24)
    Image.fromarray((fx.xray(3).astype(np.uint16) * 257)).save(root / "scan_001.png")
    keys = png_keys(root)
    only_in_train(root, keys[:8], keys[8:16], keys[16:])
    refused("folder", root, tmp_path, monkeypatch, r"mixes 8-bit images \(e\.g\. .*scan_\d+\.png\) "
            r"and 16-bit images \(e\.g\. .*scan_001\.png\)", "convert all of them to one bit depth")


def test_colour_images_and_mixed_sizes_are_converted_and_said(tmp_path):
    from memstudy.data.sets import load_sets

    root = fx.write_png_folder(tmp_path / "pngs", n=24)
    Image.fromarray(np.stack([fx.xray(1)] * 3, axis=-1)).save(root / "scan_000.png")  # colour
    Image.fromarray(fx.xray(2, size=(64, 50))).save(root / "scan_001.png")  # another size
    keys = png_keys(root)
    only_in_train(root, keys[:8], keys[8:16], keys[16:])
    sets = load_sets(RunConfig(dataset="folder", dataset_size=8, holdout_size=8, num_gen=4), root=root)
    assert sets.train.images.shape == (8, 1, 32, 32)
    assert any(n.endswith("scan_000.png: colour image converted to grey") for n in sets.info["notes"])


def test_a_file_with_an_image_extension_that_is_not_an_image(tmp_path, monkeypatch):
    root = fx.write_png_folder(tmp_path / "pngs", n=24)
    (root / "scan_002.png").write_text("<html>404 Not Found</html>")
    keys = png_keys(root)
    only_in_train(root, keys[:8], keys[8:16], keys[16:])
    refused("folder", root, tmp_path, monkeypatch, r"scan_002\.png has an image extension but is not "
            "an image", "remove it from the folder")


def test_a_split_file_naming_patients_that_do_not_exist(tmp_path, monkeypatch):
    root = fx.write_brats(tmp_path / "data")
    only_in_train(root, ["BraTS2021_00000", "BraTS2021_09999"], ["BraTS2021_00001"])
    refused("brats2021", root, tmp_path, monkeypatch, rf"{SPLIT_FILE} names 1 patient\(s\) that the "
            r"data set does not hold, e\.g\. \['BraTS2021_09999'\]", "fix the ids")


def test_a_patient_in_two_splits(tmp_path, monkeypatch):
    root = fx.write_brats(tmp_path / "data")
    only_in_train(root, ["BraTS2021_00000", "BraTS2021_00001"], ["BraTS2021_00001"])
    refused("brats2021", root, tmp_path, monkeypatch, r"patient 'BraTS2021_00001' is in both 'train' "
            "and 'holdout'", "keep it in one")


def test_fewer_training_images_than_dataset_size(tmp_path, monkeypatch):
    root = fx.write_brats(tmp_path / "data")
    refused("brats2021", root, tmp_path, monkeypatch, r"the train share \(5 patients, at most "
            r"slices_per_patient=4 images each.*holds 20 images but the run needs 32",
            "lower dataset_size", dataset_size=32)


def test_a_volume_with_too_few_foreground_slices(tmp_path, monkeypatch):
    root = fx.write_brats(tmp_path / "data")
    refused("brats2021", root, tmp_path, monkeypatch, r"_flair\.nii\.gz: only \d+ axial slices have at "
            r"least 15% foreground, too few for slices_per_patient=12 with slice_spacing=0",
            "lower either",
            dataset_size=12, holdout_size=12, slices_per_patient=12)


def test_too_few_never_seen_images_for_the_null(tmp_path, monkeypatch):
    root = fx.write_brats(tmp_path / "data")  # 10 subjects: 2 in the test share, 8 slices
    refused("brats2021", root, tmp_path, monkeypatch, r"the test share \(2 patients, never-seen "
            r"images for the null of every rate\) holds 8 images but the run needs 16", "lower num_gen",
            num_gen=16)


def test_the_notebook_reads_data_root_and_stops_before_any_run_folder(tmp_path):
    import papermill as pm
    from pathlib import Path

    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "ablation.ipynb"
    with pytest.raises(pm.PapermillExecutionError, match=r"nowhere does not exist"):
        pm.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"), progress_bar=False,
                            parameters={"dataset": "brats2021", "data_root": str(tmp_path / "nowhere"),
                                        "run_dir": str(tmp_path / "run")})
    assert not (tmp_path / "run").exists()


def test_a_grid_on_bad_data_stops_once_before_any_cell(tmp_path, monkeypatch, capsys):
    from memstudy.cli import main

    monkeypatch.setenv("MEMSTUDY_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("MEMSTUDY_DATA", str(fx.write_chest_xray(tmp_path / "data")))
    assert main(["grid", "run", "smoke", "--set", "dataset=brats2021", "--no-progress"]) == 2
    assert "does not hold the 'brats2021' layout" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()  # no cell folder, no error.json

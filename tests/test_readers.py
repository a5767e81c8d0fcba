"""Every real-data layout, as tiny fixture trees: the same Sets the generated cohort gives."""

import json

import numpy as np
import pytest

import data_fixtures as fx
from memstudy.config import SPLITS, RunConfig
from memstudy.data.readers import LAYOUTS, DataError, read_pool
from memstudy.data.readers.volumes import MIN_FOREGROUND, foreground
from memstudy.data.sets import SPLIT_FILE, load_sets

LAYOUT_FIXTURES = {
    "brats2021": lambda r: fx.write_brats(r, 2021),
    "brats2020:t1ce": lambda r: fx.write_brats(r, 2020, ext=".nii"),
    "decathlon_brain:t2": fx.write_decathlon,
    "chest_xray": fx.write_chest_xray,
    "medmnist:toymnist_28": fx.write_medmnist,
    "medmnist:toymnist_64": lambda r: fx.write_medmnist(r, "toymnist_64", size=64, colour=True),
    "medmnist:organmnist3d": lambda r: fx.write_medmnist(r, "organmnist3d", volumes=True),
    "nih_cxr14": fx.write_nih,
    "folder": fx.write_png_folder,
    "folder:nifti": fx.write_nifti_folder,
}


def cfg_for(dataset: str, **kw) -> RunConfig:
    return RunConfig(dataset=dataset.replace(":nifti", ""), dataset_size=8, holdout_size=8, num_gen=4,
                     **kw)


@pytest.mark.parametrize("dataset", list(LAYOUT_FIXTURES))
def test_every_layout_gives_cohort_like_sets_split_by_patient(dataset, tmp_path):
    root = LAYOUT_FIXTURES[dataset](tmp_path / "data")
    sets = load_sets(cfg_for(dataset), root=root)
    for part in (sets.train, sets.holdout):
        assert part.images.shape == (8, 1, 32, 32) and part.images.dtype == np.float32
        assert 0 <= part.images.min() and part.images.max() <= 1 and part.images.std() > 0
        assert len(part.slice_index) == len(part.has_lesion) == 8
    # patient level: the four shares are disjoint, and train/holdout images come from their share
    shares = [set(sets.split[s].tolist()) for s in SPLITS]
    assert sum(map(len, shares)) == len(set().union(*shares)) == sets.info["n_patients"]
    assert set(sets.train.patient_id) <= shares[0] and set(sets.holdout.patient_id) <= shares[1]
    assert sets.info["train_files"] and sets.info["patient_ids"]


def test_patient_ids_are_the_data_sets_own_where_it_has_them(tmp_path):
    sets = load_sets(cfg_for("nih_cxr14"), root=fx.write_nih(tmp_path))
    keys = sets.info["patient_keys"]
    assert sets.info["has_patient_ids"] and keys[sets.train.patient_id[0]].isdigit()
    # several films of one patient are used together: 3 per patient, up to slices_per_patient
    assert np.bincount(sets.train.patient_id).max() == 3
    assert any("not on disk" in n for n in sets.info["notes"])  # the partial download is said
    chest = load_sets(cfg_for("chest_xray"), root=fx.write_chest_xray(tmp_path / "cx"))
    assert not chest.info["has_patient_ids"] and "each normal image is its own" in chest.info["patient_ids"]


def test_a_person_in_two_shipped_folders_stays_one_patient(tmp_path):
    root = fx.write_chest_xray(tmp_path)
    src = root / "chest_xray" / "train" / "PNEUMONIA" / "person1_bacteria_0.jpeg"
    (root / "chest_xray" / "test" / "PNEUMONIA").mkdir(parents=True, exist_ok=True)
    src.rename(root / "chest_xray" / "test" / "PNEUMONIA" / src.name)
    pool = read_pool("chest_xray", root)
    assert len([p for p in pool.patients if p.key == "person1"][0].items) == 2


def test_slices_follow_the_cohorts_spacing_rule_within_the_foreground(tmp_path):
    root = fx.write_brats(tmp_path, n=10)
    coverage = foreground(fx.head(0)).mean(axis=(0, 1))
    kept = np.flatnonzero(coverage >= MIN_FOREGROUND)
    assert 0 < kept.size < len(coverage)  # the rule has slices to drop
    for spacing, gaps in ((0.05, {1}), (0.0, None)):
        sets = load_sets(cfg_for("brats2021", slice_spacing=spacing), root=root)
        for pid in np.unique(sets.train.patient_id):
            index = sets.train.slice_index[sets.train.patient_id == pid]
            assert np.all(coverage[index] >= MIN_FOREGROUND)
            if gaps:  # slice_spacing > 0: neighbours, as consecutive slices of a scan
                assert set(np.diff(index)) == gaps
            else:  # 0: spread over the kept range, first and last kept slice included
                assert index[0] == kept[0] and index[-1] == kept[-1]
    assert sets.train.has_lesion.any() and not sets.train.has_lesion.all()  # from the seg file


def test_a_users_split_file_decides_the_shares(tmp_path):
    root = fx.write_brats(tmp_path, n=10)
    names = [f"BraTS2021_{i:05d}" for i in range(10)]
    (root / SPLIT_FILE).write_text(json.dumps({"train": names[:2], "holdout": names[2:4],
                                               "test": names[4:]}))
    sets = load_sets(cfg_for("brats2021"), root=root)
    keys = sets.info["patient_keys"]
    assert sorted(keys[i] for i in set(sets.train.patient_id)) == names[:2]
    assert sorted(keys[i] for i in set(sets.holdout.patient_id)) == names[2:4]
    assert sets.info["split_from"] == f"the split file {SPLIT_FILE}"


def test_replicates_draw_other_patients_and_training_sets_nest(tmp_path):
    root = fx.write_nih(tmp_path, patients=30)
    small = load_sets(cfg_for("nih_cxr14", slices_per_patient=2), root=root)
    large = load_sets(cfg_for("nih_cxr14", slices_per_patient=2).replace(dataset_size=16), root=root)
    other = load_sets(cfg_for("nih_cxr14", slices_per_patient=2, seed=1), root=root)
    assert np.array_equal(large.train.patient_id[:8], small.train.patient_id)
    assert set(other.train.patient_id) != set(small.train.patient_id)


def test_a_tree_under_spaces_and_non_ascii_characters_works(tmp_path):
    root = fx.write_brats(tmp_path / "mes données" / "BraTS 2021 – copie", n=10)
    assert load_sets(cfg_for("brats2021"), root=root).train.images.shape == (8, 1, 32, 32)


def test_the_data_root_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMSTUDY_DATA", str(fx.write_decathlon(tmp_path)))
    assert len(load_sets(cfg_for("decathlon_brain")).train) == 8


def test_every_layout_is_documented_in_the_book_with_its_command():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    page = (root / "book" / "data.md").read_text()
    assert "file: book/data" in (root / "_toc.yml").read_text()
    for name, layout in LAYOUTS.items():
        value = "medmnist:organamnist_64" if name == "medmnist" else name
        assert f"memstudy grid run quick --set dataset={value} --jobs 2" in page, name
        assert layout.split(" ")[0].split("/")[0] in page, layout  # e.g. BraTS2021_XXXXX

SMOKE = {"dataset_size": 8, "holdout_size": 8, "train_steps": 2, "ae_steps": 2, "encoder_steps": 2,
         "ddim_steps": 2, "num_gen": 8, "image_size": 32}


@pytest.mark.slow
def test_a_real_data_grid_runs_through_the_notebook_and_its_book_shows_no_patient_pixels(
        tmp_path, monkeypatch):
    """Papermill smoke run on a fixture data set, then a one-page book built from it: without
    show_patient_images no gallery or training example exists, in the run folder or the HTML.
    (The opt-in side is tested below, without a book build: about 2 minutes saved.)"""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from bs4 import BeautifulSoup

    from memstudy.analysis import book
    from memstudy.analysis.report import write_report
    from memstudy.pipeline.grid import GridSpec
    from memstudy.pipeline.runner import run_grid

    monkeypatch.setenv("MEMSTUDY_DATA", str(fx.write_png_folder(tmp_path / "données réelles", n=96)))
    results = tmp_path / "results"
    spec = GridSpec.from_dict({"name": "realdata", "fixed": {"dataset": "folder", **SMOKE}})
    summary = run_grid(spec, results_dir=results, progress=False)
    assert not summary.failed, summary.failed
    [hidden] = book.complete_cells(results / "realdata")
    assert not book.patient_images_allowed(hidden)
    assert (hidden / "figures" / "training_curve.png").exists()  # figures were drawn, but
    assert not [p for g in ("gallery_*.png", "train_examples.png")  # none of patients
                for p in (hidden / "figures").glob(g)]
    rows = json.loads((hidden / "metrics.json").read_text())["rows"]
    assert all("excess_mia_auc" in r and any(k.startswith("null_") for k in r) for r in rows)  # nulls
    split = json.loads((hidden / "split.json").read_text())
    assert set(split["null_used"]) <= set(split["test"])  # from the data set's own test share
    data = json.loads((hidden / "data.json").read_text())
    assert data["has_patient_ids"] is False and "each image is its own patient" in data["patient_ids"]
    write_report(results / "realdata")

    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "mini_book"
    src.mkdir()
    shutil.copy(root / "_config.yml", src)
    shutil.copy(root / "book" / "results_cell.md", src)
    (src / "_toc.yml").write_text("format: jb-book\nroot: results_cell\n")
    env = {**os.environ, "MEMSTUDY_RESULTS": str(results), "MEMSTUDY_BOOK_PRESET": "realdata"}
    out = subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", str(src),
                          "--path-output", str(tmp_path / "out")], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    page = BeautifulSoup((tmp_path / "out" / "_build" / "html" / "results_cell.html").read_text(),
                         "html.parser").find("article")
    assert "Not shown: this figure would show images of real patients" in page.get_text()
    assert "each image is its own patient" in page.get_text()
    # what is left: one histogram per detector and the training curve, no patient pixels
    assert len(page.find_all("img")) == len(RunConfig().detectors) + 1


def test_the_quick_grid_is_pointed_at_a_data_set_with_one_flag(capsys, tmp_path, monkeypatch):
    from memstudy.cli import main

    monkeypatch.setenv("MEMSTUDY_RESULTS", str(tmp_path))
    assert main(["grid", "run", "quick", "--set", "dataset=medmnist:organamnist_64", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "grid quick-medmnist_organamnist_64 " in out and "dataset=medmnist:organamnist_64" in out


def test_figures_of_real_patients_need_the_opt_in(tmp_path, monkeypatch):
    """The book helper shows a run's gallery for the cohort or with show_patient_images, and a
    notice (no image) otherwise; the cell draws such figures under the same rule."""
    import IPython.display
    from PIL import Image as PILImage

    from memstudy.analysis import book

    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    for dataset, opt_in, expect_image in [("folder", False, False), ("folder", True, True),
                                          ("cohort", False, True)]:
        cfg = RunConfig(dataset=dataset, show_patient_images=opt_in)
        assert cfg.may_show_patient_images is expect_image
        run = tmp_path / f"{dataset}-{opt_in}"
        (run / "figures").mkdir(parents=True)
        (run / "config.json").write_text(cfg.to_json())
        fx_png = run / "figures" / "gallery_step000002_pixel.png"
        PILImage.fromarray(fx.xray(0)).save(fx_png)
        shown.clear()
        book.figure(fx_png, "gallery")
        kinds = [type(x).__name__ for x in shown]
        assert ("Image" in kinds) is expect_image, (dataset, opt_in, kinds)
        if not expect_image:
            assert "would show images of real patients" in shown[0].data


def test_test_and_reference_shares_feed_nulls_and_rulers_without_overlap(tmp_path):
    from memstudy.data.sets import share_slices

    root = fx.write_png_folder(tmp_path, n=120)  # one image per patient
    cfg = cfg_for("folder")
    sets = load_sets(cfg, root=root)
    null = share_slices(cfg, "test", 8, salt=7, root=root)
    negative = share_slices(cfg, "test", 8, salt=7, skip=2, root=root)  # skips 2 x 4 images' patients
    assert len(null) == len(negative) == 8 and null.images.shape[1:] == (1, 32, 32)
    assert not set(null.patient_id) & set(negative.patient_id)
    assert set(null.patient_id) <= set(sets.split["test"].tolist())
    ruler = share_slices(cfg, "reference", 8, by_seed=False, root=root)
    assert set(ruler.patient_id) <= set(sets.split["reference"].tolist())
    again = share_slices(cfg.replace(seed=5), "reference", 8, by_seed=False, root=root)
    assert np.array_equal(ruler.patient_id, again.patient_id)  # a shared ruler ignores the seed
    with pytest.raises(DataError, match=r"the test share \(18 patients left.*lower num_gen"):
        share_slices(cfg, "test", 64, root=root)

"""The detector benchmark: its truth labels are right by construction, its metrics are right on
hand-built numbers, and one small run writes every file."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from memstudy.validation.planted import (CHANGES, KINDS, NOVEL, PATIENT, build_sets, detector_metrics, main, run_benchmark)

SMALL = dict(image_size=32, n_train=16, n_holdout=16, n_per_change=8, n_novel=16, seed=3)


@pytest.fixture(scope="module")
def sets():
    return build_sets(**SMALL)


def test_every_kind_is_present_with_the_asked_sizes(sets):
    counts = {k: int((sets.kind == k).sum()) for k in KINDS}
    assert counts == {**{k: 8 for k in CHANGES}, PATIENT: 8, NOVEL: 16}
    assert len(sets.queries) == len(sets.kind) == len(sets.source) == len(sets.patient_id)
    assert len(sets.train) == 16 and len(sets.holdout) == 16


def test_exact_queries_equal_their_source_training_slice(sets):
    exact = np.flatnonzero(sets.kind == "exact")
    train = torch.from_numpy(sets.train.images)
    assert torch.equal(sets.queries[exact], train[sets.source[exact]])


def test_changed_copies_differ_from_but_stay_close_to_their_source(sets):
    train = torch.from_numpy(sets.train.images)
    for change in CHANGES[1:]:
        rows = np.flatnonzero(sets.kind == change)
        q, src = sets.queries[rows], train[sets.source[rows]]
        diff = (q - src).abs().flatten(1).mean(1)
        assert (diff > 0).all(), f"{change} left a copy unchanged"
        assert (diff < 0.1).all(), f"{change} changed a copy beyond recognition"
        assert (sets.patient_id[rows] == sets.train.patient_id[sets.source[rows]]).all()


def test_novel_queries_come_from_test_split_patients_only(sets):
    novel = sets.patient_id[sets.kind == NOVEL]
    assert np.isin(novel, sets.split["test"]).all()
    assert not np.isin(novel, sets.train.patient_id).any()
    assert not np.isin(novel, sets.holdout.patient_id).any()
    assert np.isin(sets.train.patient_id, sets.split["train"]).all()
    assert np.isin(sets.holdout.patient_id, sets.split["holdout"]).all()
    assert (sets.source[sets.kind == NOVEL] == -1).all()


def test_same_patient_queries_are_unseen_slices_of_training_patients(sets):
    rows = np.flatnonzero(sets.kind == PATIENT)
    assert (sets.source[rows] == -1).all()
    for q in rows:
        pid, sidx = sets.patient_id[q], sets.slice_index[q]
        mine = sets.train.patient_id == pid
        assert mine.any(), "the patient is a training patient"
        assert sidx not in sets.train.slice_index[mine], "but this slice was not trained on"
        same = (torch.from_numpy(sets.train.images) == sets.queries[q]).flatten(1).all(1)
        assert not same.any()


def test_sets_are_reproducible_from_the_seed(sets):
    again = build_sets(**SMALL)
    assert torch.equal(again.queries, sets.queries)
    assert (again.kind == sets.kind).all() and (again.source == sets.source).all()


def test_detector_metrics_on_hand_built_numbers():
    kind = np.array(["exact", "exact", "noise", "noise", PATIENT, PATIENT, NOVEL, NOVEL, NOVEL,
                     NOVEL])
    sim = np.array([1.0, 0.99, 0.95, 0.5, 0.97, 0.4, 0.9, 0.3, 0.2, 0.1])
    m = detector_metrics(sim, tau=0.8, kind=kind)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["recall_exact"] == 1.0 and m["recall_noise"] == 0.5
    assert m["recall_same_patient"] == 0.5
    assert m["fpr_novel"] == pytest.approx(1 / 4)
    assert m["precision"] == pytest.approx(3 / 4)  # 3 copies + 1 novel above tau
    assert m["precision_patient"] == pytest.approx(4 / 5)
    # AUC: copies (1, .99, .95, .5) vs novel (.9, .3, .2, .1): 15 of 16 pairs ordered right
    assert m["auc"] == pytest.approx(15 / 16)
    assert m["prevalence"] == pytest.approx(0.5)


def test_a_small_run_writes_every_file(tmp_path):
    out = tmp_path / "validation"
    table = run_benchmark(32, 16, seed=1, detectors=("pixel", "nn_ratio", "ssim", "contrastive"),
                          out_dir=out, n_holdout=16, n_per_change=8, n_novel=16,
                          encoder_steps=3, encoder_dim=16, progress=False)
    for name in ("validation.csv", "validation.parquet", "scores.csv", "scores.parquet",
                 "roc.png", "recall_by_change.png", "examples.png", "benchmark.json"):
        assert (out / name).stat().st_size > 0, name
    assert list(table.detector) == ["pixel", "nn_ratio", "ssim", "contrastive"]
    assert pd.read_parquet(out / "validation.parquet").equals(table)
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 4 * (6 * 8 + 8 + 16)
    for det in ("pixel", "nn_ratio", "ssim"):  # exact copies are found and matched by all three
        row = table.set_index("detector").loc[det]
        assert row.recall_exact == 1.0
        exact = scores[(scores.detector == det) & (scores.kind == "exact")]
        assert exact.nn_is_source.all()
    assert table.set_index("detector").loc["nn_ratio", "tau_rule"] == "fixed"
    meta = json.loads((out / "benchmark.json").read_text())
    assert meta["params"]["encoder_steps"] == 3 and meta["n_queries"][NOVEL] == 16


def test_command_line_help_and_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "planted copies" in capsys.readouterr().out
    assert main(["--detectors", "nope", "--out-dir", str(tmp_path)]) == 2
    assert "unknown detector" in capsys.readouterr().err


def test_module_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "memstudy.validation.planted", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--encoder-steps" in done.stdout

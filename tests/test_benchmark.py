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
from memstudy.validation.summary import auc_by_change, summarize

SMALL = dict(image_size=32, n_train=16, n_holdout=16, n_per_change=8, n_novel=16, seed=3,
             decode_steps=2)


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


def test_every_listed_change_is_planted():
    for change in ("flip", "blur", "decoded", "combined", "shift", "rotate", "intensity",
                   "noise", "elastic"):
        assert change in CHANGES


def test_flips_mirror_and_blur_smooths_their_source(sets):
    train = torch.from_numpy(sets.train.images)
    flip = np.flatnonzero(sets.kind == "flip")
    assert torch.equal(sets.queries[flip], torch.flip(train[sets.source[flip]], (-1,)))
    blur = np.flatnonzero(sets.kind == "blur")
    q, src = sets.queries[blur], train[sets.source[blur]]
    grad = lambda x: (x[..., 1:] - x[..., :-1]).abs().mean()  # noqa: E731
    assert grad(q) < 0.8 * grad(src)  # a blurred copy has weaker edges
    assert abs(q.mean() - src.mean()) < 0.01  # and the same brightness


def test_combined_copies_carry_several_changes_at_once(sets):
    train = torch.from_numpy(sets.train.images)
    rows = np.flatnonzero(sets.kind == "combined")
    q, src = sets.queries[rows], train[sets.source[rows]]
    # shifted and rotated: no longer aligned with the source; noisy: rough where it was flat
    assert ((q - src).abs().flatten(1).mean(1) > 0.01).all()
    background = src < 1e-3
    assert (q[background] > 0).float().mean() > 0.2


def test_decoded_copies_are_the_round_trip_of_an_autoencoder(sets):
    rows = np.flatnonzero(sets.kind == "decoded")
    assert len(rows) == 8 and type(sets.queries) is torch.Tensor  # no MONAI metadata
    again = build_sets(**SMALL)  # cached autoencoder: the same decoded copies
    assert torch.equal(again.queries[rows], sets.queries[rows])


def test_one_pool_for_every_seed_changes_only_the_patients_drawn():
    a = build_sets(**{**SMALL, "seed": 0}, data_seed=5)
    b = build_sets(**{**SMALL, "seed": 1}, data_seed=5)
    assert all(np.array_equal(a.split[k], b.split[k]) for k in a.split)
    assert not np.array_equal(a.train.patient_id, b.train.patient_id)
    assert np.isin(a.patient_id[a.kind == NOVEL], a.split["test"]).all()


def test_another_contrast_renders_the_same_patients_and_queries_in_another_look(sets):
    other = build_sets(**SMALL, contrast="t1")
    for name in ("kind", "source", "patient_id", "slice_index"):  # the same draw, label by label
        assert np.array_equal(getattr(sets, name), getattr(other, name)), name
    assert np.array_equal(sets.train.patient_id, other.train.patient_id)
    exact = sets.kind == "exact"
    assert torch.equal(other.queries[exact],  # exact copies are still their (t1) sources
                       torch.from_numpy(other.train.images[other.source[exact]]))
    # T1 inverts the CSF / white-matter order: the same slice correlates 0.73-0.83 with its T2
    r = np.corrcoef(sets.train.images.reshape(len(sets.train.images), -1)[0],
                    other.train.images.reshape(len(other.train.images), -1)[0])[0, 1]
    assert r < 0.9
    with pytest.raises(ValueError, match="contrast='pd' is not one of"):
        run_benchmark(32, 16, contrast="pd", out_dir="unused")


def test_changed_copies_differ_from_but_stay_close_to_their_source(sets):
    train = torch.from_numpy(sets.train.images)
    # a flip moves every pixel; an autoencoder of 2 steps (SMALL) decodes noise
    for change in [c for c in CHANGES[1:] if c not in ("flip", "decoded")]:
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


def test_summary_intervals_and_paired_test_on_hand_built_scores():
    """Two seeds x 40 patients: detector A flags every copy and no novel slice, B half of the
    copies; the paired test must find A better, with intervals that hold the true rates."""
    rng = np.random.default_rng(0)
    rows = []
    for seed in (0, 1):
        for p in range(40):
            for kind in ("shift", "flip", NOVEL):
                for det, flag in (("a", kind != NOVEL), ("b", kind != NOVEL and p % 2 == 0)):
                    rows.append({"detector": det, "seed": seed, "query": len(rows) // 2,
                                 "kind": kind, "patient_id": p, "flagged": flag, "tau": 0.5,
                                 "sim": float(flag) + 0.1 * rng.random()})
    table, recall, paired = summarize(pd.DataFrame(rows), nominal_fpr=0.05, reference="a",
                                      n_boot=300)
    a, b = table.set_index("detector").loc["a"], table.set_index("detector").loc["b"]
    assert a.recall == 1 and a.fpr_novel == 0 and a.auc == 1 and a.min_recall_change == 1
    assert b.recall == pytest.approx(0.5) and b.recall_lo < 0.5 < b.recall_hi
    assert b.recall_hi - b.recall_lo < 0.3  # 80 patient clusters: a useful interval
    assert a.fpr_excess == pytest.approx(-0.05)
    rec = paired[(paired.detector == "b") & (paired.metric == "recall")].iloc[0]
    assert rec["diff"] == pytest.approx(0.5) and rec.lo > 0 and rec.p < 0.01
    assert set(recall.kind) == {"shift", "flip", NOVEL}


def test_auc_by_change_separates_each_kind_from_novel_on_its_own():
    """Shifted copies score above every novel slice, flipped ones like novel slices, decoded
    ones below: AUCs 1, about 0.5 and 0, each kind judged alone against the same novel slices."""
    rng = np.random.default_rng(0)
    level = {"shift": 2.0, "flip": 1.0, "decoded": 0.0, NOVEL: 1.0}
    rows = [{"detector": "a", "seed": seed, "query": i, "kind": kind, "patient_id": p,
             "sim": level[kind] + 0.5 * rng.random()}
            for seed in (0, 1) for p in range(30) for i, kind in enumerate(level)]
    got = auc_by_change(pd.DataFrame(rows), n_boot=300).set_index("kind")
    assert list(got.index) == ["shift", "flip", "decoded"]  # novel is the negative, not a row
    assert got.loc["shift", "auc"] == 1 and got.loc["decoded", "auc"] == 0
    flip = got.loc["flip"]
    assert 0.35 < flip.auc < 0.65 and flip.lo < 0.5 < flip.hi


def test_a_small_run_writes_every_file(tmp_path):
    out = tmp_path / "validation"
    table = run_benchmark(32, 16, seeds=(1, 2), detectors=("pixel", "nn_ratio", "ssim", "contrastive"),
                          out_dir=out, n_holdout=16, n_per_change=8, n_novel=16,
                          encoder_steps=3, encoder_dim=16, decode_steps=2, n_boot=100,
                          tau_draws=3, progress=False)
    for name in ("validation.csv", "validation.parquet", "scores.csv", "scores.parquet",
                 "recall.parquet", "paired.parquet", "per_seed.parquet", "tau_rule.parquet",
                 "roc.png", "recall_by_change.png", "examples.png", "benchmark.json"):
        assert (out / name).stat().st_size > 0, name
    assert list(table.detector) == ["pixel", "nn_ratio", "ssim", "contrastive"]
    assert pd.read_parquet(out / "validation.parquet").equals(table)
    assert (table.auc_lo <= table.auc).all() and (table.auc <= table.auc_hi).all()
    assert (table.n_seeds == 2).all()
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 2 * 4 * (len(CHANGES) * 8 + 8 + 16)
    paired = pd.read_parquet(out / "paired.parquet")
    assert set(paired.reference) == {"pixel"} and len(paired) == 3 * 3
    for det in ("pixel", "nn_ratio", "ssim"):  # exact copies are found and matched by all three
        row = table.set_index("detector").loc[det]
        assert row.recall_exact == 1.0
        exact = scores[(scores.detector == det) & (scores.kind == "exact")]
        assert exact.nn_is_source.all()
    assert table.set_index("detector").loc["nn_ratio", "tau_rule"] == "fixed"
    draws = pd.read_parquet(out / "tau_rule.parquet")  # Dar et al.'s encoder is not redrawn
    assert set(draws.detector) == {"pixel", "nn_ratio", "ssim"} and len(draws) == 3 * 3
    by = table.set_index("detector")
    assert by.loc[["pixel", "ssim", "nn_ratio"], "rule_draws"].eq(3).all()
    assert by.loc["nn_ratio", "fpr_rule"] == 0  # its fixed tau of 2/3 flagged no novel slice here
    assert np.isnan(by.loc["contrastive", "fpr_rule"])
    meta = json.loads((out / "benchmark.json").read_text())
    assert meta["params"]["encoder_steps"] == 3 and meta["n_queries"][NOVEL] == 2 * 16


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


def test_the_tau_rule_draws_recompute_tau_and_count_novel_slices_above_it():
    from memstudy.validation.planted import draw_patients
    from memstudy.validation.tau_rule import FIRST_DRAW, rule_draws

    params = dict(image_size=32, n_train=16, n_holdout=16, n_novel=16, slices_per_patient=4,
                  cohort_patients=600, data_seed=0, percentile=95.0, encoder_dim=8,
                  encoder_steps=1, trusted_steps=1, trusted_backbone="small")
    rows = rule_draws(params, ("pixel", "contrastive"), draws=2, progress=False)
    assert list(rows.detector) == ["pixel", "pixel"] and list(rows.draw) == [FIRST_DRAW, FIRST_DRAW + 1]
    sets = draw_patients(32, 16, 16, 16, 4, 600, seed=FIRST_DRAW + 1, data_seed=0)
    flat = {k: sets[k].images.reshape(len(sets[k].images), -1) for k in ("train", "holdout", "novel")}

    def max_r(q, r):  # Pearson's r of every pair, by hand
        return np.corrcoef(q, r)[:len(q), len(q):].max(1)

    tau = np.percentile(max_r(flat["train"], flat["holdout"]), 95)
    row = rows.iloc[1]
    assert row.tau == pytest.approx(tau, abs=1e-5)
    assert row.fpr_novel == pytest.approx((max_r(flat["novel"], flat["train"]) > tau).mean())


def test_the_tau_rule_summary_on_known_draws():
    from memstudy.validation.tau_rule import summarize_draws

    rows = pd.DataFrame({"detector": "a", "draw": [0, 1, 2], "tau": [0.9, 0.8, 0.7],
                         "fpr_novel": [0.05, 0.10, 0.15], "fp_floor": 0.05})
    got = summarize_draws(rows, 0.05, n_boot=200).iloc[0]
    assert got.fpr_rule == pytest.approx(0.10) and got.excess == pytest.approx(0.05)
    assert got.share_over_2pt == pytest.approx(2 / 3) and got.fpr_rule_lo <= 0.10 <= got.fpr_rule_hi
    assert got.tau_sd == pytest.approx(0.1)


def test_benchmarks_that_differ_in_detectors_and_draws_combine(tmp_path):
    from memstudy.validation.planted import combine_benchmarks

    small = dict(n_holdout=16, n_per_change=4, n_novel=16, decode_steps=2, n_boot=50,
                 progress=False)
    run_benchmark(32, 16, seeds=(1,), detectors=("pixel",), out_dir=tmp_path / "a",
                  tau_draws=2, **small)
    run_benchmark(32, 16, seeds=(1,), detectors=("pixel", "ssim"), out_dir=tmp_path / "b",
                  tau_draws=3, **small)
    table = combine_benchmarks([tmp_path / "a", tmp_path / "b"], tmp_path / "both")
    draws = pd.read_parquet(tmp_path / "both" / "tau_rule.parquet")
    assert not draws.duplicated(["detector", "draw"]).any()  # pixel's first draws: counted once
    assert table.set_index("detector").rule_draws.to_dict() == {"pixel": 3, "ssim": 3}
    with pytest.raises(ValueError, match="differ in more than their detectors"):
        run_benchmark(32, 16, seeds=(2,), detectors=("ssim",), out_dir=tmp_path / "c",
                      tau_draws=0, **small)
        combine_benchmarks([tmp_path / "a", tmp_path / "c"], tmp_path / "bad")

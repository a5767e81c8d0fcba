"""Intervals, nulls and the verdict procedure on toy data with known answers."""

import numpy as np
import pytest
from scipy.stats import permutation_test

from memstudy.analysis import stats
from memstudy.metrics import intervals
from memstudy.metrics.evidence import membership_evidence


def test_binomial_interval_is_exact_clopper_pearson():
    lo, hi = intervals.binomial_interval(0, 64)
    assert lo == 0 and hi == pytest.approx(1 - 0.025 ** (1 / 64), rel=1e-6)
    lo, hi = intervals.binomial_interval(32, 64)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(0.25, abs=0.02)


def test_cluster_counts_draw_whole_patients_with_their_sizes():
    groups = np.repeat([10, 11, 12, 13], [1, 2, 3, 4])
    counts = intervals.cluster_counts(groups, n_boot=500, seed=1)
    assert counts.shape == (500, 10)
    # stage 2 keeps each drawn patient's size, so a resample has between 4 and 16 slices
    assert counts.sum(1).min() >= 4 and counts.sum(1).max() <= 16


def test_cluster_bootstrap_is_wider_than_iid_when_slices_are_alike():
    # 16 patients x 4 identical slices: the honest interval is that of 16 draws, not 64
    rng = np.random.default_rng(0)
    hits = np.repeat(rng.random(16) < 0.5, 4).astype(float)
    groups = np.repeat(np.arange(16), 4)
    clustered = intervals.rate_with_interval(hits, groups)
    iid = intervals.rate_with_interval(hits)
    assert (clustered["hi"] - clustered["lo"]) > 1.5 * (iid["hi"] - iid["lo"])


def test_auc_interval_matches_sklearn_and_covers_chance_for_new_patients():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    m, h = rng.normal(1, 1, 40), rng.normal(0, 1, 60)
    found = intervals.auc_with_interval(m, h, np.arange(40), np.arange(60))
    assert found["auc"] == pytest.approx(roc_auc_score(np.r_[np.ones(40), np.zeros(60)], np.r_[m, h]))
    assert found["lo"] < found["auc"] < found["hi"]
    null = intervals.auc_with_interval(rng.normal(size=50), rng.normal(size=50), np.arange(50), np.arange(50))
    assert null["lo"] < 0.5 < null["hi"]


def test_low_fpr_point_is_named_by_what_the_sample_allows():
    assert intervals.low_fpr_point(64) == 0.1
    assert intervals.low_fpr_point(256) == 0.01
    assert intervals.low_fpr_point(4096) == 0.001


def test_membership_evidence_finds_members_and_its_null_sits_at_chance():
    rng = np.random.default_rng(0)
    pid = lambda n: np.repeat(np.arange(n // 4), 4)
    found = membership_evidence(rng.normal(0.5, 0.2, 64), rng.normal(1, 0.2, 64),
                                rng.normal(1, 0.2, 192), pid(64), pid(64) + 100, pid(192) + 200)
    assert found["mia_auc"] > 0.9 and found["excess_mia_auc_lo"] > 0.3
    assert found["null_mia_auc_lo"] < 0.5 < found["null_mia_auc_hi"]
    assert found["mia_low_fpr"] == 0.01 and found["mia_n_nonmembers"] == 256


def test_trend_test_matches_scipy_and_is_vectorised():
    rng = np.random.default_rng(3)
    levels = [rng.normal(size=(4, 3)) for _ in range(3)]
    found = stats.trend_test(levels)
    for g in range(4):
        one = [lv[g] for lv in levels]
        less = permutation_test(one, stats._slope, permutation_type="independent",
                                vectorized=True, alternative="less", axis=-1).pvalue
        assert found["p_down"][g] == pytest.approx(less)
        assert stats.trend_test(one)["p_up"] == pytest.approx(found["p_up"][g])


def test_outcomes_need_the_test_and_the_interval():
    assert stats.outcome(0.01, -0.1, -0.3, -0.1, "down") == "holds"
    assert stats.outcome(0.01, -0.1, -0.3, 0.05, "down") == "inconclusive"  # interval spans 0
    assert stats.outcome(0.20, -0.1, -0.3, -0.1, "down") == "inconclusive"  # test does not reject
    assert stats.outcome(0.01, 0.2, 0.1, 0.3, "down") == "opposite"


def test_a_clear_trend_holds_and_noise_does_not():
    clear = [np.array([0.0, 0.02, 0.01]), np.array([0.3, 0.32, 0.31]), np.array([0.6, 0.62, 0.61])]
    t = stats.trend_test(clear)
    ch = stats.change_interval(clear)
    assert stats.outcome(t["p"], t["slope"], ch["lo"], ch["hi"], "up") == "holds"
    assert stats.outcome(t["p"], t["slope"], ch["lo"], ch["hi"], "down") == "opposite"


def test_null_calibration_false_holds_at_most_5_percent():
    """The acceptance test: on 400 simulated null grids the procedure says "holds" <= 5 %."""
    for method in ("glm", "permutation"):
        for n_levels, n_reps in [(3, 3), (2, 5), (4, 3), (2, 3)]:
            rate = stats.simulate_false_holds(n_grids=400, n_levels=n_levels, n_replicates=n_reps,
                                              seed=n_levels + n_reps, method=method)
            assert rate <= 0.05, (method, n_levels, n_reps, rate)


def test_glm_trend_test_is_paired_by_replicate():
    # replicate effects far larger than the trend: only a paired test sees the trend
    rep = np.array([0.0, 0.5, 1.0])
    levels = [rep + 0.00 + [0.001, -0.001, 0.0], rep + 0.05 + [0.0, 0.001, -0.001], rep + 0.10]
    paired = stats.glm_trend_test(levels, [np.arange(3)] * 3)
    unpaired = stats.glm_trend_test(levels)
    assert paired["slope"] == pytest.approx(0.05, abs=1e-3)
    assert paired["p_up"] < 1e-4 < unpaired["p_up"]


def test_power_on_a_large_effect_is_high():
    assert stats.power(0.5, n_grids=100, n_replicates=3) >= 0.8
    assert stats.power(0.5, n_grids=100, n_replicates=3) > stats.power(0.1, n_grids=100, n_replicates=3)


def test_holm_keeps_nans():
    out = stats.holm([0.01, np.nan, 0.04])
    assert np.isnan(out[1]) and out[0] == pytest.approx(0.02) and out[2] == pytest.approx(0.04)


def test_patient_audit_names_the_worst_patient_and_pools_membership_over_slices():
    from memstudy.metrics.patient import patient_audit

    audit = patient_audit(np.repeat([3, 1, 2], 2), np.array([.9, .95, .5, .6, .99, .7]), 0.92,
                          np.array([1, 1, 2, 2, .5, .5]), np.array([1.5, 1.5, 2.5, .2]))
    assert audit.patient_id.tolist() == [2, 3, 1]  # worst copy margin first
    assert audit.copied.tolist() == [True, True, False]
    assert audit.membership_score.tolist() == [0.75, 0.75, 0.25]


def test_loss_settled_step_finds_where_most_of_the_decrease_is_done(tmp_path):
    import json

    from memstudy.analysis.report import loss_settled_step

    steps = np.arange(25, 1001, 25)
    loss = 0.02 + 0.5 * np.exp(-steps / 100)  # 90 % of the drop is done near step 230
    (tmp_path / "stats.jsonl").write_text("".join(
        json.dumps({"stage": "diffusion", "step": int(s), "loss": float(v)}) + "\n"
        for s, v in zip(steps, loss)))
    assert 200 <= loss_settled_step(tmp_path, window=1) <= 275
    assert loss_settled_step(tmp_path, stage="gan") is None

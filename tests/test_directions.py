"""Verdicts from the report table: a fake star grid with replicates and controls."""

import numpy as np
import pandas as pd
import pytest

from memstudy.analysis import directions
from memstudy.analysis.directions import control_table, headline, ordered_levels, primary_detector, verdicts

BASE = {"augmentation": "none", "dataset_size": 8, "model": "ldm"}


def _plan(axes):
    return {"name": "fake", "spec": {"design": "star", "base": BASE, "axes": axes,
                                     "fixed": {"detectors": "pixel,contrastive"}}}


def _row(cell, seed, det, step, excess, **levels):
    lv = {**BASE, **levels}
    return {**lv, "cell": cell, "seed": seed, "status": "complete", "detector": det, "step": step,
            "epochs": step * 8 / lv["dataset_size"],
            **{f"{p}{r}": v for r in ("copy_rate", "mem_rate")
               for p, v in (("", 0.05 + excess), ("null_", 0.05), ("excess_", excess))},
            **{f"excess_{r}_{s}": excess + d for r in ("copy_rate", "mem_rate")
               for s, d in (("lo", -0.05), ("hi", 0.05))}}


def _grid(aug_effect, n_effect, seeds=range(5), controls=True, rng=np.random.default_rng(0)):
    rows = []
    for seed in seeds:
        for det in ("pixel", "contrastive"):
            noise = lambda: rng.normal(0, 0.02)
            for step, frac in ((100, 0.0), (150, 0.5), (200, 1.0)):
                rows.append(_row(f"base{seed}", seed, det, step, 0.5 * frac + noise()))
            for i, aug in enumerate(["flip_rotate", "strong"]):
                rows.append(_row(f"aug{i}{seed}", seed, det, 200, 0.5 - (i + 1) / 2 * aug_effect + noise(),
                                 augmentation=aug))
            for i, n in enumerate([32, 128]):
                rows.append(_row(f"n{i}{seed}", seed, det, 200, 0.5 - (i + 1) / 2 * n_effect + noise(),
                                 dataset_size=n))
            if controls:
                pos = _row(f"pos{seed}", seed, det, 30, 0.95, model="control_positive")
                pos["copy_rate"] = 1.0 if det == "pixel" else 0.2  # contrastive misses copies
                rows.append(pos)
                rows.append(_row(f"neg{seed}", seed, det, 30, 0.0, model="control_negative"))
    return pd.DataFrame(rows)


AXES = {"augmentation": ["none", "flip_rotate", "strong"], "dataset_size": [8, 32, 128],
        "model": ["ldm", "control_positive", "control_negative"]}


def test_levels_follow_the_claims_order():
    assert ordered_levels("unet_preset", ["M", "XS", "S"]) == ["XS", "S", "M"]
    assert ordered_levels("augmentation", ["strong", "none"]) == ["none", "strong"]
    assert ordered_levels("dataset_size", [128, 8, 32]) == [8, 32, 128]


def test_clear_effects_hold_and_absent_ones_are_inconclusive():
    table = verdicts(_grid(aug_effect=0.4, n_effect=0.0), _plan(AXES))
    prim = table[table.primary].set_index("claim")
    assert prim.loc["more augmentation → less memorization", "verdict"] == "holds"
    assert prim.loc["more training data → less memorization", "verdict"] == "inconclusive"
    assert prim.loc["longer training → more memorization", "verdict"] == "holds"
    # the controls never enter a claim: they are their own model level
    assert "model" not in set(table.axis)
    # no "holds" where the change's interval includes zero
    held = table[table.verdict == "holds"]
    assert ((held.change_lo > 0) | (held.change_hi < 0)).all()


def test_an_effect_against_the_claim_is_opposite():
    table = verdicts(_grid(aug_effect=-0.4, n_effect=0.0), _plan(AXES))
    prim = table[table.primary].set_index("claim")
    assert prim.loc["more augmentation → less memorization", "verdict"] == "opposite"


def test_permutation_p_has_a_floor_the_glm_does_not():
    # 2 levels x 3 replicates: 6 cells, the smallest two-sided permutation p is 2/20 = 0.1;
    # the GLM with replicate effects can still see a clear, consistent change
    df = _grid(aug_effect=0.4, n_effect=0.4, seeds=range(3))
    df = df[~df.augmentation.eq("flip_rotate") & ~df.dataset_size.eq(32)]
    table = verdicts(df, _plan(AXES))
    two_level = table[table.axis.isin(["augmentation", "dataset_size"]) & table.metric.eq("copy_rate")
                      & ~table.claim.str.contains("matched")]
    assert len(two_level) == 4 and (two_level.p_perm >= 0.1).all() and (two_level.p < 0.01).all()


def test_pure_noise_is_inconclusive():
    table = verdicts(_grid(aug_effect=0.0, n_effect=0.0, rng=np.random.default_rng(5)), _plan(AXES))
    # (the matched-passes claim compares the fixture's checkpoints, which do differ)
    noise = table[table.axis.isin(["augmentation", "dataset_size"]) & ~table.claim.str.contains("matched")]
    assert len(noise) == 8 and set(noise.verdict) == {"inconclusive"}


def test_primary_view_is_the_first_listed_detector_that_passes_its_controls():
    df = _grid(0.4, 0.0)
    assert primary_detector(df, _plan(AXES)) == "pixel"
    ctrl = control_table(df)
    assert not ctrl[(ctrl.model == "control_positive") & (ctrl.detector == "contrastive")].passes.any()
    assert ctrl[ctrl.model == "control_negative"].passes.all()
    # without control cells the first listed detector is primary
    assert primary_detector(_grid(0.4, 0.0, controls=False), _plan(AXES)) == "pixel"
    # if pixel fails too, no primary view
    bad = df.copy()
    bad.loc[bad.model == "control_positive", "copy_rate"] = 0.1
    assert primary_detector(bad, _plan(AXES)) is None


def test_headline_is_generated_from_the_primary_verdicts():
    table = verdicts(_grid(aug_effect=0.4, n_effect=0.0), _plan(AXES))
    text = headline(table, "fake")
    n_hold = int((table[table.primary].verdict == "holds").sum())
    assert f"{n_hold} of {int(table.primary.sum())} published directions hold" in text
    assert "more augmentation → less memorization" in text


def test_matched_passes_compares_levels_at_equal_epochs():
    df = _grid(0.0, 0.0)
    rows = directions._claim_rows(df[df.status == "complete"], _plan(AXES),
                                  directions.CLAIMS[3], "pixel")
    # dataset 8 reaches 200 passes, 32 reaches 50 and 128 reaches 12.5 (at step 200): the base
    # cell's checkpoints are 100, 150 and 200 (100 to 200 passes), so size 8 is taken at step 100
    got = rows.groupby("dataset_size").epochs.first().to_dict()
    assert got == {8: 100.0, 32: 50.0, 128: 12.5}


def test_label_shuffles_within_replicate_rarely_hold():
    from memstudy.analysis.directions import CLAIMS, shuffle_check

    df = _grid(aug_effect=0.4, n_effect=0.0)
    rate = shuffle_check(df, _plan(AXES), CLAIMS[0], "pixel", "copy_rate", n_tests=16, n_shuffles=100)
    assert rate is not None and rate <= 0.05
    assert shuffle_check(df, _plan(AXES), CLAIMS[1], "pixel", "copy_rate", n_tests=16) is None  # no size axis

"""The reader's run beside the reference: replicates against the reference's prediction
interval (same preset), verdicts side by side (another preset)."""

import numpy as np
import pandas as pd

from memstudy.analysis.compare import (prediction_interval, replicate_points, same_preset,
                                       side_by_side)


def _grid(values: dict, name: str, size: int = 64):
    """A star grid on augmentation, one row per (level, seed) at one checkpoint."""
    rows = [{"cell": f"{aug}-{seed}", "status": "complete", "detector": "pixel", "step": 100,
             "seed": seed, "augmentation": aug, "model": "ldm", "excess_copy_rate": v,
             "excess_copy_rate_lo": v - 0.1, "excess_copy_rate_hi": v + 0.1}
            for aug, vs in values.items() for seed, v in enumerate(vs)]
    plan = {"name": name, "spec": {"design": "star", "axes": {"augmentation": list(values)},
                                   "base": {"augmentation": "none"}, "fixed": {"image_size": size}}}
    return pd.DataFrame(rows), plan


def test_a_replicate_is_judged_against_where_a_new_reference_replicate_falls():
    lo, hi = prediction_interval([0.4, 0.5, 0.6, 0.5, 0.5])
    # mean 0.5, sd 0.0707, t(0.975, 4) = 2.776, sqrt(1 + 1/5): half-width 0.215
    assert np.isclose(lo, 0.5 - 0.2150, atol=1e-3) and np.isclose(hi, 0.5 + 0.2150, atol=1e-3)
    assert all(np.isnan(prediction_interval([0.5])))  # one replicate: no interval

    ref, ref_plan = _grid({"none": [0.4, 0.5, 0.6, 0.5, 0.5], "strong": [0.0, 0.1, 0.0, 0.1, 0.05]},
                          "reference")
    mine, my_plan = _grid({"none": [0.45, 0.0], "strong": [0.05, 0.9]}, "reference")
    assert same_preset(ref_plan, my_plan)
    pts = replicate_points(ref, ref_plan, mine, my_plan, "pixel")
    assert list(pts.level) == ["none", "none", "strong", "strong"]  # the claim's order
    assert list(pts.inside) == [True, False, True, False]
    assert (pts.ref_n == 5).all()


def test_another_preset_compares_verdicts_not_rates():
    _, ref_plan = _grid({"none": [0.5]}, "reference", 64)
    _, quick_plan = _grid({"none": [0.5]}, "quick", 32)
    assert not same_preset(ref_plan, quick_plan)

    def long(verdict, change, claims=("more augmentation → less memorization",)):
        return pd.DataFrame([{"claim": c, "primary": True, "verdict": verdict, "change": change,
                              "change_lo": change - 0.1, "change_hi": change + 0.1,
                              "levels": "none → strong"} for c in claims])

    both = side_by_side(long("holds", -0.5), long("inconclusive", -0.2, claims=(
        "more augmentation → less memorization", "longer training → more memorization")))
    assert list(both.claim) == ["more augmentation → less memorization",
                                "longer training → more memorization"]
    assert both["reference"][0] == "holds: -50% [-60%, -40%] along none → strong"
    assert list(both["same verdict"]) == ["no", "—"]  # the second: not tested on the reference
    assert both["reference"][1] == "not tested"

import pandas as pd
import pytest

from memstudy.analysis.directions import direction_table, ordered_levels, verdict


@pytest.mark.parametrize("values, expect, result", [
    ([0.5, 0.3, 0.1], "down", "holds"), ([0.5, 0.5, 0.1], "down", "holds"),
    ([0.1, 0.1], "down", "flat"), ([0.1, 0.4], "down", "opposite"),
    ([0.5, 0.1, 0.3], "down", "mixed"), ([0.1, 0.2, 0.9], "up", "holds"),
])
def test_verdict(values, expect, result):
    assert verdict(values, expect) == result


def test_levels_follow_the_claims_order():
    assert ordered_levels("unet_preset", ["M", "XS", "S"]) == ["XS", "S", "M"]
    assert ordered_levels("augmentation", ["strong", "none"]) == ["none", "strong"]
    assert ordered_levels("dataset_size", [128, 8, 32]) == [8, 32, 128]


def test_direction_table_on_a_fake_star_grid():
    base = {"augmentation": "none", "unet_preset": "S", "dataset_size": 8, "model": "ldm"}
    plan = {"spec": {"design": "star", "base": base,
                     "axes": {"augmentation": ["none", "strong"], "dataset_size": [8, 64]}}}
    rows = []
    for cell, levels, rates in [("base", {}, [0.2, 0.6]), ("aug", {"augmentation": "strong"}, [0.0, 0.1]),
                                ("n", {"dataset_size": 64}, [0.1, 0.7])]:
        for step, rate in zip([100, 200], rates):
            rows.append({**base, **levels, "cell": cell, "status": "complete", "detector": "pixel",
                         "step": step, "copy_rate": rate})
    table = direction_table(pd.DataFrame(rows), plan, detector="pixel").set_index("axis")
    assert table.loc["augmentation", "verdict"] == "holds"  # 0.6 -> 0.1 at the last step
    assert table.loc["dataset_size", "verdict"] == "opposite"  # 0.6 -> 0.7
    assert table.loc["step", "verdict"] == "holds"  # base cell: 0.2 -> 0.6
    assert table.loc["step", "values"] == "20% → 60%"

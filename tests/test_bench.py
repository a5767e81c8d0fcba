"""`memstudy bench --smoke`: every part runs and prints its figures (no speed is asserted)."""

import json

from memstudy.cli import main as cli_main


def test_bench_smoke_runs_every_part_and_writes_json(tmp_path, capsys):
    assert cli_main(["bench", "--smoke", "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    print(table)  # the figures, for whoever reads the test log
    found = json.loads((tmp_path / "bench.json").read_text())
    assert {r["model"] for r in found["step"]} == {"ldm", "pixel_dm"}
    for r in found["step"]:
        assert r["stock_img_s"] > 0 and r["memstudy_img_s"] > 0
    assert found["stacked"]["models"] == 2 and found["stacked"]["stacked_img_s"] > 0
    assert {r["model"] for r in found["sampling"]} == {"ldm", "pixel_dm"}
    assert found["neighbors"][0]["seconds"] > 0
    cold, warm = (found["cell"][k]["cpu"] for k in ("cold_cache_s", "warm_cache_s"))
    for part in ("stage1", "quality_ruler", "train_steps", "sample", "total"):
        assert part in cold and part in warm, part
    for line in ("step ", "stacked ", "sampling ", "nn ", "cell "):
        assert line in table

"""What the planted-copy benchmark writes: tables, figures and benchmark.json, from the scores
of every detector and seed; and one benchmark combined from runs that scored different
detectors on the same planted sets."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..runio import read_json, save_atomic, write_json_atomic
from .changes import KINDS
from .summary import summarize


def _write_table(df: pd.DataFrame, stem: Path) -> None:
    save_atomic(lambda p: df.to_csv(p, index=False), stem.with_suffix(".csv"))
    save_atomic(lambda p: df.to_parquet(p, index=False), stem.with_suffix(".parquet"))


def _source(params: dict) -> str:
    text = (f"memstudy validate seeds={','.join(map(str, params['seeds']))} "
            f"{params['image_size']}px n_train={params['n_train']} "
            f"trusted_steps={params['trusted_steps']}")
    if params.get("contrast", "t2") != "t2":  # settings older runs lack, named when not default
        text += f" contrast={params['contrast']}"
    if params.get("trusted_random_contrast", 0.0):
        text += f" trusted_random_contrast={params['trusted_random_contrast']}"
    return text


def _write_results(out: Path, params: dict, per_seed: pd.DataFrame, per_sample: pd.DataFrame,
                   wall_s: float, env: dict, draws: pd.DataFrame | None = None) -> pd.DataFrame:
    """Summarize the scores of every detector and seed (and the tau rule's draws, when made);
    write the tables, figures and json."""
    from ..viz import figures
    from .figures import recall_figure, roc_figure
    from .tau_rule import summarize_draws

    nominal = 1 - params["percentile"] / 100
    table, recall, paired = summarize(per_sample, nominal, n_boot=params["n_boot"])
    rule = per_seed.groupby("detector", sort=False).tau_rule.first()
    table.insert(2, "tau_rule", table.detector.map(rule))
    table["seconds"] = table.detector.map(per_seed.groupby("detector").seconds.sum())
    tables = [(table, "validation"), (recall, "recall"), (paired, "paired"),
              (per_seed, "per_seed"), (per_sample, "scores")]
    if draws is not None and len(draws):
        found = (summarize_draws(draws, nominal, params["n_boot"]).set_index("detector")
                 .rename(columns={"draws": "rule_draws", "share_over_2pt": "rule_share_over_2pt"}))
        for name in ("fpr_rule", "fpr_rule_lo", "fpr_rule_hi", "rule_draws",
                     "rule_share_over_2pt", "tau_sd"):
            table[name] = table.detector.map(found[name])
        tables.append((draws, "tau_rule"))
    for df, name in tables:
        _write_table(df, out / name)
    figures.save(roc_figure(per_sample, table, _source(params)), out / "roc.png")
    figures.save(recall_figure(table, recall, _source(params)), out / "recall_by_change.png")
    n_det = per_sample.detector.nunique()
    write_json_atomic(out / "benchmark.json", {
        "params": params, "seconds": per_seed.groupby("detector").seconds.sum().to_dict(),
        "wall_s": wall_s, "nominal_fpr": nominal,
        "n_queries": {k: int((per_sample.kind == k).sum() // n_det) for k in KINDS},
        "environment": env})
    return table


def combine_benchmarks(folders: list[str | Path], out_dir: str | Path) -> pd.DataFrame:
    """One benchmark from runs that scored different detectors on the same planted sets.

    Scoring a new detector (e.g. the trusted one once its encoder is trained) then costs only
    that detector. The runs must agree on every parameter but the detectors, so that their
    queries are the same (same seeds, sizes, pool and decoded-copy autoencoder).
    """
    import shutil

    metas = [read_json(Path(f) / "benchmark.json") for f in folders]
    keep = lambda p: {k: v for k, v in p.items()  # noqa: E731 (the planted sets' parameters)
                      if k not in ("detectors", "device", "tau_draws")}
    if any(keep(m["params"]) != keep(metas[0]["params"]) for m in metas):
        raise ValueError(f"the benchmarks in {folders} differ in more than their detectors: "
                         "their planted sets are not the same")
    per_seed = pd.concat([pd.read_parquet(Path(f) / "per_seed.parquet") for f in folders])
    per_sample = pd.concat([pd.read_parquet(Path(f) / "scores.parquet") for f in folders],
                           ignore_index=True)
    params = {**metas[0]["params"], "detectors": list(dict.fromkeys(per_sample.detector)),
              "combined_from": [str(f) for f in folders]}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(folders[0]) / "examples.png", out / "examples.png")
    found = [pd.read_parquet(Path(f) / "tau_rule.parquet") for f in folders
             if (Path(f) / "tau_rule.parquet").exists()]
    return _write_results(out, params, per_seed.reset_index(drop=True), per_sample,
                          sum(m["wall_s"] for m in metas), metas[0]["environment"],
                          pd.concat(found, ignore_index=True).drop_duplicates(["detector", "draw"])
                          if found else None)

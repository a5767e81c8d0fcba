"""The release filter: drop every synthetic sample a detector flags, before sharing the set.

EchoNet-Synthetic shares synthetic echocardiograms only after removing every sample whose
nearest training video is above a similarity threshold. Here the same rule is applied to one
checkpoint of a run, with any detector the run scored, and the result is audited:

- the filter's **own error**, measured on planted copies (:mod:`memstudy.validation.planted`)
  at the run's image size: its *sensitivity* (the share of planted copies it drops, so its
  miss rate is one minus it) and its *specificity* (the share of never-seen patients' slices
  it keeps), each with a 95 % patient-bootstrap interval across the benchmark's seeds;
- the *residual* copy rate of the kept samples under every **other** detector, with an exact
  binomial interval, because a filter is only as good as the detector it trusts.

Reads (written by :mod:`memstudy.pipeline.cell` and ``memstudy validate``)::

    run_dir/samples/step_XXXXXX.npz           images, float16 (N, 1, H, W)
    run_dir/eval/step_XXXXXX.json             one row per detector, with its "tau"
    run_dir/eval/step_XXXXXX_<detector>.npz   sim_gen_train, nn_gen_train, ... per sample
    $MEMSTUDY_RESULTS/validation*/            planted-copy benchmarks (recall.parquet)

Writes, atomically (default ``run_dir/release/``)::

    released.npz          images (float16) and source_index (row in the samples file) of kept ones
    release_report.json   counts, tau, detector, step, the filter's measured error, residual
                          copy rates by the other detectors, and every sample's id and hash
    release_report.md     the same on one page for a person: no pixels, ids and hashes only
    release_hist.png      similarity to the nearest training image, kept vs dropped, tau marked
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..metrics.intervals import binomial_interval
from ..runio import read_json, results_root, save_atomic, write_bytes_atomic, write_json_atomic

_STEP = re.compile(r"^step_(\d+)\.npz$")


def available_steps(run_dir: str | Path) -> list[int]:
    """Checkpoint steps that have a synthetic set under ``run_dir/samples``, ascending."""
    folder = Path(run_dir) / "samples"
    steps = [int(m.group(1)) for p in folder.glob("step_*.npz") if (m := _STEP.match(p.name))]
    return sorted(steps)


def _tau(rows: list[dict], detector: str, path: Path) -> float:
    for row in rows:
        if row.get("detector") == detector:
            return float(row["tau"])
    names = sorted(str(r.get("detector")) for r in rows)
    raise KeyError(f"{path} has no row for detector {detector!r} (it has {names})")


def filter_error(detector: str, image_size: int,
                 validation_root: str | Path | None = None) -> dict:
    """The filter's error measured on planted copies: sensitivity and specificity, intervals.

    Looks for the planted-copy benchmark (``memstudy validate``) that scored ``detector`` at
    ``image_size`` under ``validation_root`` (default ``$MEMSTUDY_RESULTS``, folders named
    ``validation*``), preferring the one with the most seeds. The filter drops a sample exactly
    when the benchmark flags a query, so its sensitivity is the benchmark's recall over all
    changed copies and its specificity one minus the false-positive rate on novel slices.

    Returns
    -------
    dict
        ``measured`` (bool); when measured: ``sensitivity``, ``specificity``, ``miss_rate``
        (each with ``_lo`` / ``_hi``), ``by_change`` (sensitivity per kind of change), ``seeds``
        and ``source``; otherwise ``how`` (the command that measures it).
    """
    root = Path(validation_root) if validation_root is not None else results_root()
    found = []
    for meta_path in sorted(root.glob("validation*/**/benchmark.json")):
        params = read_json(meta_path)["params"]
        folder = meta_path.parent
        if (params.get("image_size") == image_size and detector in params.get("detectors", [])
                and (folder / "validation.parquet").exists() and (folder / "recall.parquet").exists()):
            found.append((len(params.get("seeds") or [params.get("seed")]), str(folder), params))
    if not found:
        return {"measured": False, "how": (
            f"memstudy validate --image-size {image_size} --seeds 0,1,2 --detectors {detector} "
            f"--out-dir {root / f'validation_{image_size}px'}")}
    _, folder, params = max(found, key=lambda f: f[0])
    row = pd.read_parquet(Path(folder) / "validation.parquet").set_index("detector").loc[detector]
    recall = pd.read_parquet(Path(folder) / "recall.parquet")
    changes = recall[(recall.detector == detector) & ~recall.kind.isin(["novel", "same_patient"])]
    return {"measured": True, "source": folder, "seeds": params.get("seeds") or [params["seed"]],
            "sensitivity": float(row.recall), "sensitivity_lo": float(row.recall_lo),
            "sensitivity_hi": float(row.recall_hi),
            "miss_rate": float(1 - row.recall), "miss_rate_lo": float(1 - row.recall_hi),
            "miss_rate_hi": float(1 - row.recall_lo),
            "specificity": float(1 - row.fpr_novel), "specificity_lo": float(1 - row.fpr_novel_hi),
            "specificity_hi": float(1 - row.fpr_novel_lo),
            "by_change": {k: {"sensitivity": float(r), "lo": float(lo), "hi": float(hi)}
                          for k, r, lo, hi in zip(changes.kind, changes.rate, changes.lo, changes.hi)}}


def sample_hash(image: np.ndarray) -> str:
    """A short content hash of one sample (sha256 of its float16 bytes): an id without pixels."""
    return hashlib.sha256(np.ascontiguousarray(image, dtype=np.float16).tobytes()).hexdigest()[:16]


def filter_release(run_dir: str | Path, step: int | None = None, detector: str = "contrastive",
                   out_dir: str | Path | None = None,
                   validation_root: str | Path | None = None) -> dict:
    """Drop the samples ``detector`` flags as copies (``sim_gen_train > tau``) and audit the rest.

    Parameters
    ----------
    run_dir : a run folder written by :func:`memstudy.run_cell`.
    step : the checkpoint; ``None`` = the last one (largest step with a synthetic set).
    detector : whose similarities and tau decide what is dropped.
    out_dir : where to write; default ``run_dir/release``.
    validation_root : where to look for the planted-copy benchmark that measured the filter's
        error (see :func:`filter_error`); default ``$MEMSTUDY_RESULTS``.

    Returns
    -------
    dict
        The report also written to ``release_report.json``: ``n_before``, ``n_dropped``,
        ``n_kept``, ``tau``, ``detector``, ``step``, the detector's own ``holdout_copy_rate``
        (the share of genuinely new images it would drop, when the run recorded it) and
        ``residual``: for every other detector scored at this step, its tau and copy rate
        before filtering and among the kept samples (with a 95 % exact interval);
        ``filter_error``: the filter's sensitivity and specificity on planted copies
        (:func:`filter_error`); ``samples``: each sample's index, hash, similarity and fate.
    """
    run_dir = Path(run_dir)
    steps = available_steps(run_dir)
    if not steps:
        raise FileNotFoundError(f"no synthetic set under {run_dir / 'samples'}: is {run_dir} a "
                                "run folder with at least one evaluated checkpoint?")
    step = steps[-1] if step is None else int(step)
    if step not in steps:
        raise FileNotFoundError(f"no synthetic set for step {step} in {run_dir / 'samples'} "
                                f"(steps available: {steps})")
    tag = f"step_{step:06d}"
    eval_dir = run_dir / "eval"
    rows_path = eval_dir / f"{tag}.json"
    if not rows_path.exists():
        raise FileNotFoundError(f"{rows_path} is missing: checkpoint {step} was not evaluated")
    rows = read_json(rows_path)
    sims_path = eval_dir / f"{tag}_{detector}.npz"
    if not sims_path.exists():
        have = sorted(p.name[len(tag) + 1:-4] for p in eval_dir.glob(f"{tag}_*.npz"))
        raise FileNotFoundError(f"{sims_path} is missing: detector {detector!r} was not scored "
                                f"at step {step} (scored: {have})")

    with np.load(run_dir / "samples" / f"{tag}.npz") as f:
        images = f["images"]
    with np.load(sims_path) as f:
        sim = f["sim_gen_train"].astype(np.float64)
        sim_holdout = f["sim_holdout_train"] if "sim_holdout_train" in f.files else None
    if len(sim) != len(images):
        raise ValueError(f"{sims_path} scores {len(sim)} samples but the synthetic set has "
                         f"{len(images)}: the files come from different runs")
    tau = _tau(rows, detector, rows_path)
    dropped = sim > tau  # strictly above tau, the same rule as the copy rate
    keep = ~dropped

    residual = {}
    for other_path in sorted(eval_dir.glob(f"{tag}_*.npz")):
        other = other_path.name[len(tag) + 1:-4]
        if other == detector:
            continue
        try:
            other_tau = _tau(rows, other, rows_path)
        except KeyError:  # an npz without its row: nothing to compare against
            continue
        with np.load(other_path) as f:
            other_sim = f["sim_gen_train"].astype(np.float64)
        flagged = other_sim > other_tau
        lo, hi = binomial_interval(int(flagged[keep].sum()), int(keep.sum()))
        residual[other] = {
            "tau": other_tau,
            "copy_rate_before": float(flagged.mean()),
            "n_residual_copies": int(flagged[keep].sum()),
            # None when nothing is kept: a rate over zero samples is undefined, not zero
            "residual_copy_rate": float(flagged[keep].mean()) if keep.any() else None,
            "residual_lo": lo if keep.any() else None,
            "residual_hi": hi if keep.any() else None,
        }

    own = next(r for r in rows if r.get("detector") == detector)
    with np.load(sims_path) as f:
        nn = f["nn_gen_train"] if "nn_gen_train" in f.files else np.full(len(sim), -1)
    samples = [{"index": i, "hash": sample_hash(images[i]), "sim": float(sim[i]),
                "nearest_train_index": int(nn[i]), "kept": bool(keep[i])}
               for i in range(len(images))]
    report = {"run": run_dir.name, "step": step, "detector": detector, "tau": tau,
              "n_before": int(len(images)), "n_dropped": int(dropped.sum()),
              "n_kept": int(keep.sum()), "holdout_copy_rate": own.get("holdout_copy_rate"),
              "residual": residual,
              "filter_error": filter_error(detector, int(images.shape[-1]), validation_root),
              "samples": samples}
    out = Path(out_dir) if out_dir is not None else run_dir / "release"
    save_atomic(lambda p: np.savez_compressed(p, images=images[keep].astype(np.float16),
                                              source_index=np.flatnonzero(keep)),
                out / "released.npz")
    from ..viz import figures
    from ..viz.release import release_histogram

    figures.save(release_histogram(sim, tau, keep, sim_holdout, detector,
                                   f"run {run_dir.name}, step {step}"),
                 out / "release_hist.png")
    write_bytes_atomic(out / "release_report.md", release_page(report).encode())
    write_json_atomic(out / "release_report.json", report)  # last: the release is complete
    return report


def _pct(v, lo=None, hi=None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.1%}" + (f" [{lo:.1%}, {hi:.1%}]" if lo is not None and hi is not None else "")


def release_page(report: dict) -> str:
    """The release report on one page (Markdown): what was removed, what may remain, what the
    filter is known to miss. Ids and hashes only, never pixels."""
    err = report["filter_error"]
    lines = [f"# Release report: run {report['run']}, step {report['step']}", "",
             f"Filter: drop every sample whose similarity to its nearest training image is above "
             f"τ = {report['tau']:.4f} under the `{report['detector']}` detector.", "",
             f"- samples before: {report['n_before']}; **dropped: {report['n_dropped']}**; "
             f"released: {report['n_kept']}",
             f"- share of never-seen images this τ drops by construction (holdout): "
             f"{_pct(report['holdout_copy_rate'])}", "", "## The filter's measured error", ""]
    if err["measured"]:
        lines += [f"On planted copies (seeds {', '.join(map(str, err['seeds']))}; "
                  f"`{err['source']}`), 95 % patient-bootstrap intervals:", "",
                  f"- sensitivity (planted copies dropped): {_pct(err['sensitivity'], err['sensitivity_lo'], err['sensitivity_hi'])}",
                  f"- **miss rate (copies released)**: {_pct(err['miss_rate'], err['miss_rate_lo'], err['miss_rate_hi'])}",
                  f"- specificity (new patients' images kept): {_pct(err['specificity'], err['specificity_lo'], err['specificity_hi'])}",
                  "", "| change | sensitivity |", "|---|---|"]
        lines += [f"| {k} | {_pct(v['sensitivity'], v['lo'], v['hi'])} |"
                  for k, v in err["by_change"].items()]
    else:
        lines += ["Not measured at this image size: the miss rate of this filter is unknown. "
                  f"Measure it with `{err['how']}`."]
    lines += ["", "## Residual copies by the other detectors (released samples)", ""]
    if report["residual"]:
        lines += ["| detector | τ | copy rate before | residual copies | residual rate [95 %] |",
                  "|---|---|---|---|---|"]
        lines += [f"| {d} | {r['tau']:.4f} | {_pct(r['copy_rate_before'])} | "
                  f"{r['n_residual_copies']} | {_pct(r['residual_copy_rate'], r['residual_lo'], r['residual_hi'])} |"
                  for d, r in report["residual"].items()]
    else:
        lines.append("No other detector scored this checkpoint: nothing audits this filter.")
    dropped = [s for s in report["samples"] if not s["kept"]]
    lines += ["", "## Removed samples (index, sha256 of float16 bytes, similarity, nearest "
              "training slice)", ""]
    lines += [f"- {s['index']} `{s['hash']}` {s['sim']:.4f} → train[{s['nearest_train_index']}]"
              for s in dropped] or ["- none"]
    lines += ["", f"Released samples: {report['n_kept']}, listed with their hashes in "
              "`release_report.json` (`samples`)."]
    return "\n".join(lines) + "\n"

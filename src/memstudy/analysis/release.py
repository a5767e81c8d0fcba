"""The release filter: drop every synthetic sample a detector flags, before sharing the set.

EchoNet-Synthetic shares synthetic echocardiograms only after removing every sample whose
nearest training video is above a similarity threshold. Here the same rule is applied to one
checkpoint of a run, with any detector the run scored, and the result is audited: the report
gives the *residual* copy rate of the kept samples under every **other** detector, because a
filter is only as good as the detector it trusts. It also costs: a genuinely new sample is
dropped with the probability the holdout reference shows (``holdout_copy_rate``).

Reads (written by :mod:`memstudy.pipeline.cell`)::

    run_dir/samples/step_XXXXXX.npz           images, float16 (N, 1, H, W)
    run_dir/eval/step_XXXXXX.json             one row per detector, with its "tau"
    run_dir/eval/step_XXXXXX_<detector>.npz   sim_gen_train, nn_gen_train, ... per sample

Writes, atomically (default ``run_dir/release/``)::

    released.npz          images (float16) and source_index (row in the samples file) of kept ones
    release_report.json   counts, tau, detector, step, residual copy rates by the other detectors
    release_hist.png      similarity to the nearest training image, kept vs dropped, tau marked
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..runio import read_json, save_atomic, write_json_atomic

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


def filter_release(run_dir: str | Path, step: int | None = None, detector: str = "contrastive",
                   out_dir: str | Path | None = None) -> dict:
    """Drop the samples ``detector`` flags as copies (``sim_gen_train > tau``) and audit the rest.

    Parameters
    ----------
    run_dir : a run folder written by :func:`memstudy.run_cell`.
    step : the checkpoint; ``None`` = the last one (largest step with a synthetic set).
    detector : whose similarities and tau decide what is dropped.
    out_dir : where to write; default ``run_dir/release``.

    Returns
    -------
    dict
        The report also written to ``release_report.json``: ``n_before``, ``n_dropped``,
        ``n_kept``, ``tau``, ``detector``, ``step``, the detector's own ``holdout_copy_rate``
        (the share of genuinely new images it would drop, when the run recorded it) and
        ``residual``: for every other detector scored at this step, its tau and copy rate
        before filtering and among the kept samples.
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
        residual[other] = {
            "tau": other_tau,
            "copy_rate_before": float(flagged.mean()),
            "n_residual_copies": int(flagged[keep].sum()),
            # None when nothing is kept: a rate over zero samples is undefined, not zero
            "residual_copy_rate": float(flagged[keep].mean()) if keep.any() else None,
        }

    own = next(r for r in rows if r.get("detector") == detector)
    report = {"run": run_dir.name, "step": step, "detector": detector, "tau": tau,
              "n_before": int(len(images)), "n_dropped": int(dropped.sum()),
              "n_kept": int(keep.sum()), "holdout_copy_rate": own.get("holdout_copy_rate"),
              "residual": residual}
    out = Path(out_dir) if out_dir is not None else run_dir / "release"
    save_atomic(lambda p: np.savez_compressed(p, images=images[keep].astype(np.float16),
                                              source_index=np.flatnonzero(keep)),
                out / "released.npz")
    from ..viz import figures
    from ..viz.release import release_histogram

    figures.save(release_histogram(sim, tau, keep, sim_holdout, detector,
                                   f"run {run_dir.name}, step {step}"),
                 out / "release_hist.png")
    write_json_atomic(out / "release_report.json", report)  # last: the release is complete
    return report

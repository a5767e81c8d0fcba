"""Validate the copy detectors against planted copies whose truth is known by construction.

A detector is only as good as its error rates, and the generated cohort makes them measurable:
we *make* copies of training slices, change them the way a generative model might (noise, a
1-2 pixel shift, a small rotation, an intensity change, a mild elastic warp), and mix them with
slices of patients that no detector or model ever saw (the *test* split, never train or
holdout). A good detector puts every copy above its threshold tau and almost no new slice.

One more kind of query is labelled separately, ``same_patient``: an *unseen* slice of a
training patient (a neighbouring height of the same head). It is not a copy of any training
image, but it reveals the patient; the table reports it apart and counts it both ways.

Run it from the command line (``memstudy validate --help``) or call
:func:`run_benchmark`; the book's detector chapter reads the files it writes.

Output folder (``$MEMSTUDY_RESULTS/validation/`` by default), every file written atomically::

    validation.csv / .parquet   one row per detector: AUC, precision/recall at tau, FPR, recall
                                per change type
    scores.csv / .parquet       one row per detector and query: kind, similarity, nearest
                                training slice, flagged
    roc.png                     ROC curve of each detector, copies vs novel, tau marked
    recall_by_change.png        fraction flagged, detector x kind of query
    examples.png                one query of each kind next to its training source
    benchmark.json              parameters, timings and environment (written last: complete)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from ..data.cohort import Cohort, make_cohort

from ..config import SPLIT_FRACTIONS
from ..data.splits import split_patients
from ..detect.external import EXTERNAL_ENV
from ..detect.factory import ALL_DETECTORS, make_detector
from ..metrics.scoring import score
from ..runio import environment, results_root, save_atomic, write_json_atomic

# Changes applied to copies of training slices ("exact" = none).
CHANGES = ("exact", "noise", "shift", "rotate", "intensity", "elastic")
PATIENT = "same_patient"  # an unseen slice of a training patient: a patient-level copy
NOVEL = "novel"  # a slice of a test-split patient: genuinely new
KINDS = CHANGES + (PATIENT, NOVEL)


def default_detectors() -> tuple[str, ...]:
    """Every detector that can run here: ``external`` only when its encoder file is set."""
    return tuple(d for d in ALL_DETECTORS if d != "external" or os.environ.get(EXTERNAL_ENV))


# --------------------------------------------------------------------------------------------
# The changes a copy may undergo (each seeded by an explicit generator)
# --------------------------------------------------------------------------------------------


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _sign(gen: torch.Generator, n: int) -> torch.Tensor:
    return torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)


def add_noise(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Gaussian noise with a standard deviation of 2-5 % of the intensity range."""
    std = _uniform(gen, len(x), 0.02, 0.05).view(-1, 1, 1, 1)
    return (x + std * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by 1 or 2 whole pixels up, down, left or right, filling with 0."""
    out = torch.empty_like(x)
    h, w = x.shape[-2:]
    amount = torch.randint(1, 3, (len(x),), generator=gen) * _sign(gen, len(x)).long()
    vertical = torch.rand(len(x), generator=gen) < 0.5
    for i in range(len(x)):
        dy, dx = (int(amount[i]), 0) if vertical[i] else (0, int(amount[i]))
        padded = F.pad(x[i], (2, 2, 2, 2))  # a zero border, so that nothing wraps around
        out[i] = padded[:, 2 - dy:2 - dy + h, 2 - dx:2 - dx + w]
    return out


def rotate(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Rotate each image about its centre by 1-5 degrees either way (bilinear, zero fill)."""
    from monai.networks.layers import AffineTransform

    angle = torch.deg2rad(_uniform(gen, len(x), 1.0, 5.0) * _sign(gen, len(x)))
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros(len(x))
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    warp = AffineTransform(normalized=True, padding_mode="zeros", align_corners=False)
    return warp(x, theta).clamp(0, 1)


def change_intensity(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Another scanner's contrast: gamma in [0.8, 1.25], gain 0.85-1.15, offset +-0.05."""
    n, shape = len(x), (-1, 1, 1, 1)
    gamma = torch.exp(_uniform(gen, n, math.log(0.8), math.log(1.25))).view(shape)
    gain = _uniform(gen, n, 0.85, 1.15).view(shape)
    offset = _uniform(gen, n, -0.05, 0.05).view(shape)
    return (gain * x.clamp_min(0) ** gamma + offset).clamp(0, 1)


def elastic(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A mild elastic warp (MONAI ``Rand2DElastic``): about 1 pixel on average at 32 px.

    Control points every 3/16 of the image, displacements drawn in 0.5-1 pixel per 32 pixels of
    image size (measured at 32 px: mean 0.8, at most ~3 pixels).
    """
    from monai.transforms import Rand2DElastic

    size = x.shape[-1]
    warp = Rand2DElastic(spacing=max(4, round(size * 3 / 16)),
                         magnitude_range=(0.5 * size / 32, 1.0 * size / 32), prob=1.0,
                         padding_mode="zeros")
    warp.set_random_state(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    return torch.stack([torch.as_tensor(warp(img)) for img in x]).float().clamp(0, 1)


TRANSFORMS = {"exact": lambda x, gen: x.clone(), "noise": add_noise, "shift": shift,
              "rotate": rotate, "intensity": change_intensity, "elastic": elastic}


# --------------------------------------------------------------------------------------------
# The sets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkSets:
    """A training set, a holdout set that calibrates tau, and labelled queries.

    ``source[q]`` is the training slice that copy ``q`` was made from (-1 for ``same_patient``
    and ``novel`` queries); ``patient_id`` and ``slice_index`` describe the query itself.
    """

    train: Cohort
    holdout: Cohort
    queries: torch.Tensor  # (Nq, 1, H, W)
    kind: np.ndarray  # (Nq,) one of KINDS
    source: np.ndarray  # (Nq,) index into train, or -1
    patient_id: np.ndarray  # (Nq,)
    slice_index: np.ndarray  # (Nq,)
    split: dict[str, np.ndarray]

    @property
    def is_copy(self) -> np.ndarray:
        """Image-level truth: the query is a (changed) copy of one training slice."""
        return np.isin(self.kind, CHANGES)

    @property
    def is_patient_copy(self) -> np.ndarray:
        """Patient-level truth: the query shows a training patient (copies + same_patient)."""
        return self.kind != NOVEL


def _patients(ids: np.ndarray, image_size: int, slices: int, seed: int) -> Cohort:
    """Slices of whole patients; each patient has ``2 * slices`` heights (see build_sets)."""
    parts = [make_cohort(1, image_size, 2 * slices, seed=seed, first_patient=int(p)) for p in ids]
    return Cohort(*(np.concatenate([getattr(c, f) for c in parts])
                    for f in ("images", "patient_id", "slice_index", "has_lesion")))


def build_sets(image_size: int = 32, n_train: int = 64, n_holdout: int = 64,
               n_per_change: int = 32, n_novel: int = 128, slices_per_patient: int = 4,
               cohort_patients: int = 600, seed: int = 0) -> BenchmarkSets:
    """Draw the patients, plant the copies, and label every query.

    Each patient is generated at ``2 * slices_per_patient`` heights. Training, holdout and novel
    slices are the even heights; the odd heights of *training* patients are never in the
    training set and become the ``same_patient`` queries. Patients come from the cohort's
    patient-level split with ``seed``: training and holdout from their own splits, novel
    slices from the *test* split only.
    """
    spp = slices_per_patient
    for name, n in (("n_train", n_train), ("n_holdout", n_holdout), ("n_novel", n_novel)):
        if n < spp or n % spp:
            raise ValueError(f"{name}={n} must be a positive multiple of slices_per_patient={spp}")
    split = split_patients(np.arange(cohort_patients), SPLIT_FRACTIONS, seed=seed)
    rng = np.random.default_rng(seed)
    need = {"train": n_train // spp, "holdout": n_holdout // spp, "test": n_novel // spp}
    ids = {}
    for part, n in need.items():
        if n > len(split[part]):
            raise ValueError(f"{n} {part} patients asked but the {part} split of "
                             f"cohort_patients={cohort_patients} has {len(split[part])}")
        ids[part] = rng.permutation(split[part])[:n]

    def even_odd(c: Cohort) -> tuple[Cohort, Cohort]:
        return c.subset(c.slice_index % 2 == 0), c.subset(c.slice_index % 2 == 1)

    train, unseen = even_odd(_patients(ids["train"], image_size, spp, seed))
    holdout, _ = even_odd(_patients(ids["holdout"], image_size, spp, seed))
    novel, _ = even_odd(_patients(ids["test"], image_size, spp, seed))

    gen = torch.Generator().manual_seed(seed)
    images, kind, source, pid, sidx = [], [], [], [], []
    train_images = torch.from_numpy(train.images)
    for change in CHANGES:
        if n_per_change <= len(train):  # distinct sources
            src = torch.randperm(len(train), generator=gen)[:n_per_change].numpy()
        else:  # more copies than training slices: sources repeat
            src = torch.randint(0, len(train), (n_per_change,), generator=gen).numpy()
        images.append(TRANSFORMS[change](train_images[src], gen))
        kind += [change] * len(src)
        source.append(src)
        pid.append(train.patient_id[src])
        sidx.append(train.slice_index[src])
    pick = torch.randperm(len(unseen), generator=gen)[:min(n_per_change, len(unseen))].numpy()
    images.append(torch.from_numpy(unseen.images[pick]))
    kind += [PATIENT] * len(pick)
    source.append(np.full(len(pick), -1))
    pid.append(unseen.patient_id[pick])
    sidx.append(unseen.slice_index[pick])
    images.append(torch.from_numpy(novel.images))
    kind += [NOVEL] * len(novel)
    source.append(np.full(len(novel), -1))
    pid.append(novel.patient_id)
    sidx.append(novel.slice_index)
    return BenchmarkSets(train=train, holdout=holdout, queries=torch.cat(images).float(),
                         kind=np.array(kind), source=np.concatenate(source).astype(np.int64),
                         patient_id=np.concatenate(pid).astype(np.int64),
                         slice_index=np.concatenate(sidx).astype(np.int64), split=split)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _precision(flagged: np.ndarray, positive: np.ndarray) -> float:
    return float(positive[flagged].mean()) if flagged.any() else float("nan")


def detector_metrics(sim: np.ndarray, tau: float, kind: np.ndarray) -> dict[str, float]:
    """Error rates of one detector from its similarities, its tau and the query labels.

    ``auc``, ``precision`` and ``recall`` treat the changed copies as positives and novel
    slices as negatives, leaving ``same_patient`` out; the ``_patient`` variants count
    ``same_patient`` as positive. Precision depends on the share of copies among the queries
    (``prevalence``), AUC and the recalls do not.
    """
    copy, patient, novel = np.isin(kind, CHANGES), kind == PATIENT, kind == NOVEL
    flagged = sim > tau
    image_level = copy | novel
    patient_level = copy | patient | novel
    row = {
        "auc": float(roc_auc_score(copy[image_level], sim[image_level])),
        "precision": _precision(flagged[image_level], copy[image_level]),
        "recall": float(flagged[copy].mean()),
        "fpr_novel": float(flagged[novel].mean()),
        "auc_patient": float(roc_auc_score(~novel[patient_level], sim[patient_level])),
        "precision_patient": _precision(flagged[patient_level], ~novel[patient_level]),
        "recall_patient": float(flagged[copy | patient].mean()),
        "prevalence": float(copy[image_level].mean()),
    }
    for k in CHANGES + (PATIENT,):
        row[f"recall_{k}"] = float(flagged[kind == k].mean()) if (kind == k).any() else float("nan")
    return row


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def run_benchmark(image_size: int = 32, n_train: int = 64, seed: int = 0,
                  detectors: tuple[str, ...] | None = None, out_dir: str | Path | None = None,
                  *, n_holdout: int = 64, n_per_change: int = 32, n_novel: int = 128,
                  slices_per_patient: int = 4, encoder_steps: int = 300, encoder_dim: int = 128,
                  percentile: float = 95.0, device: str = "cpu",
                  external_path: str | None = None, progress: bool = True) -> pd.DataFrame:
    """Score every detector on planted copies and novel slices; write tables and figures.

    Parameters
    ----------
    image_size, n_train, seed : the cohort resolution, training slices and the one seed
        (patients, split, changes, encoder).
    detectors : names from :data:`memstudy.detect.factory.ALL_DETECTORS`; default
        :func:`default_detectors`.
    out_dir : output folder; default ``$MEMSTUDY_RESULTS/validation``.
    n_holdout, n_per_change, n_novel, slices_per_patient : sizes (see :func:`build_sets`).
    encoder_steps, encoder_dim : the contrastive encoder's training steps and embedding size;
        the steps dominate the run time (about 0.1-0.2 s each on one CPU core at 32 px).
    percentile : tau's percentile for detectors calibrated on holdout.
    device : "cpu", "cuda" or "auto".
    external_path : TorchScript file of the ``external`` detector (default: the env var).

    Returns
    -------
    pandas.DataFrame
        The validation table, one row per detector (also written to ``validation.csv``).
    """
    from ..models.train import resolve_device

    tic = time.perf_counter()
    detectors = tuple(detectors) if detectors else default_detectors()
    unknown = [d for d in detectors if d not in ALL_DETECTORS]
    if unknown:
        raise ValueError(f"unknown detector(s) {unknown}: choose from {', '.join(ALL_DETECTORS)}")
    out = Path(out_dir) if out_dir is not None else results_root() / "validation"
    device = resolve_device(device)
    params = dict(image_size=image_size, n_train=n_train, seed=seed, detectors=list(detectors),
                  n_holdout=n_holdout, n_per_change=n_per_change, n_novel=n_novel,
                  slices_per_patient=slices_per_patient, encoder_steps=encoder_steps,
                  encoder_dim=encoder_dim, percentile=percentile, device=device)
    sets = build_sets(image_size, n_train, n_holdout, n_per_change, n_novel, slices_per_patient,
                      seed=seed)
    train = torch.from_numpy(sets.train.images)
    holdout = torch.from_numpy(sets.holdout.images)
    rows, scores, timings = [], [], {}
    for name in detectors:
        t0 = time.perf_counter()
        det = make_detector(name, dim=encoder_dim, steps=encoder_steps, seed=seed, device=device,
                            external_path=external_path).fit(train)
        found = score(det, train, holdout, sets.queries, percentile)
        timings[name] = round(time.perf_counter() - t0, 2)
        sim, nn, tau = found.sim_gen_train, found.nn_gen_train, found.result.tau
        row = {"detector": name, "tau": tau,
               "tau_rule": "fixed" if det.fixed_tau is not None else f"holdout p{percentile:g}",
               **detector_metrics(sim, tau, sets.kind),
               "fp_floor": found.result.fp_floor,
               "holdout_copy_rate": found.result.holdout_copy_rate,
               "nn_is_source": float((nn == sets.source)[sets.is_copy].mean()),
               "seconds": timings[name]}
        rows.append(row)
        scores.append(pd.DataFrame({
            "detector": name, "query": np.arange(len(sim)), "kind": sets.kind, "sim": sim,
            "tau": tau, "flagged": sim > tau, "nn": nn, "source": sets.source,
            "nn_is_source": nn == sets.source, "patient_id": sets.patient_id,
            "slice_index": sets.slice_index,
            "nn_same_patient": sets.train.patient_id[nn] == sets.patient_id}))
        if progress:
            print(f"{name:>12}: AUC {row['auc']:.3f}, recall {row['recall']:.0%} at tau "
                  f"{tau:.3f}, FPR on novel {row['fpr_novel']:.0%} ({timings[name]:.1f} s)",
                  file=sys.stderr)
    table = pd.DataFrame(rows)
    per_sample = pd.concat(scores, ignore_index=True)
    source = (f"memstudy validate seed={seed} {image_size}px n_train={n_train} "
              f"encoder_steps={encoder_steps}")
    _write_table(table, out / "validation")
    _write_table(per_sample, out / "scores")
    from ..viz import figures
    from ..viz.validation import examples_figure, recall_figure, roc_figure

    figures.save(roc_figure(per_sample, table, source), out / "roc.png")
    figures.save(recall_figure(table, per_sample, source), out / "recall_by_change.png")
    figures.save(examples_figure(sets, source), out / "examples.png")
    write_json_atomic(out / "benchmark.json", {
        "params": params, "seconds": timings, "wall_s": round(time.perf_counter() - tic, 1),
        "n_queries": {k: int((sets.kind == k).sum()) for k in KINDS},
        "environment": environment(device)})
    return table


def _write_table(df: pd.DataFrame, stem: Path) -> None:
    save_atomic(lambda p: df.to_csv(p, index=False), stem.with_suffix(".csv"))
    save_atomic(lambda p: df.to_parquet(p, index=False), stem.with_suffix(".parquet"))



# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="memstudy validate",
        description="Validate the copy detectors against planted copies of training slices "
        "(exact, noise, shift, rotation, intensity, elastic; plus unseen slices of training "
        "patients) and novel slices of test-split patients. Writes validation.csv/.parquet, "
        "scores.csv/.parquet, roc.png, recall_by_change.png, examples.png and benchmark.json.",
        epilog="cost: about 1-2 minutes on 2 CPU cores with the defaults, dominated by "
        "--encoder-steps (the contrastive encoder's training).")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="output folder (default: $MEMSTUDY_RESULTS/validation)")
    parser.add_argument("--detectors", default=None,
                        help=f"comma-separated subset of {','.join(ALL_DETECTORS)} (default: all; "
                        f"external only when {EXTERNAL_ENV} is set)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--n-train", type=int, default=64, help="training slices")
    parser.add_argument("--n-holdout", type=int, default=64, help="holdout slices (calibrate tau)")
    parser.add_argument("--n-per-change", type=int, default=32, help="queries per change type")
    parser.add_argument("--n-novel", type=int, default=128, help="novel test-split slices")
    parser.add_argument("--encoder-steps", type=int, default=300,
                        help="contrastive encoder training steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--external-encoder", default=None,
                        help="TorchScript (or .pt2) file of the external detector "
                        f"(default: ${EXTERNAL_ENV})")
    args = parser.parse_args(argv)
    detectors = tuple(d for d in args.detectors.split(",") if d) if args.detectors else None
    try:
        table = run_benchmark(args.image_size, args.n_train, args.seed, detectors, args.out_dir,
                              n_holdout=args.n_holdout, n_per_change=args.n_per_change,
                              n_novel=args.n_novel, encoder_steps=args.encoder_steps,
                              device=args.device, external_path=args.external_encoder)
    except (ValueError, FileNotFoundError) as err:
        print(f"memstudy validate: error: {err}", file=sys.stderr)
        return 2
    cols = ["detector", "tau", "auc", "precision", "recall", "fpr_novel", "recall_patient"]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"written to {args.out_dir or results_root() / 'validation'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

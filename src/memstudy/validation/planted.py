"""Validate the copy detectors against planted copies whose truth is known by construction.

A detector is only as good as its error rates, and the generated cohort makes them measurable:
we *make* copies of training slices, change them the way a generative model might (see
:mod:`.changes`: noise, 1-2 pixel shifts, small rotations, intensity changes, elastic warps,
flips, blur, an autoencoder round trip, and several small changes at once), and mix them with
slices of patients that no detector or model ever saw (the *test* share, never train or
holdout). A good detector puts every copy above its threshold tau and almost no new slice.

One more kind of query is labelled separately, ``same_patient``: an *unseen* slice of a
training patient (a neighbouring height of the same head). It is not a copy of any training
image, but it reveals the patient; the table reports it apart and counts it both ways.

The benchmark runs over several seeds (new patients, new changes, a new per-seed encoder) and
reports every rate with a 95 % patient-level bootstrap interval, and each detector against the
trusted one with a *paired* bootstrap (:mod:`.summary`). Run it from the command line
(``memstudy validate --help``) or call :func:`run_benchmark`; the book's detector chapter
reads the files it writes.

Output folder (``$MEMSTUDY_RESULTS/validation/`` by default), every file written atomically::

    validation.csv / .parquet   one row per detector: AUC, recall at tau, FPR on novel slices,
                                each with its interval; recall per change type
    recall.csv / .parquet       one row per detector and kind of query: rate, interval, count
    paired.csv / .parquet       each detector against the trusted one: difference in AUC,
                                recall and FPR with a paired bootstrap interval and p-value
    per_seed.csv / .parquet     the same metrics for each seed alone (no intervals)
    tau_rule.csv / .parquet     tau and the novel false-positive rate on fresh draws of patients
                                (:mod:`.tau_rule`); summarised as ``fpr_rule`` in validation
    scores.csv / .parquet       one row per detector, seed and query: kind, similarity,
                                nearest training slice, flagged
    roc.png                     ROC curve of each detector, copies vs novel, tau marked
    recall_by_change.png        fraction flagged with its interval, detector x kind of query
    examples.png                one query of each kind next to its training source
    benchmark.json              parameters, timings and environment (written last: complete)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from ..config import SPLIT_FRACTIONS
from ..data.cohort import Cohort, make_cohort
from ..data.phantom import CONTRASTS
from ..data.splits import split_patients
from ..detect.external import EXTERNAL_ENV
from ..detect.factory import ALL_DETECTORS, make_detector
from ..detect.trusted import TrustedSpec, train_round_trip_autoencoder
from ..metrics.scoring import score
from ..runio import cache_file, environment, results_root
from .changes import CHANGES, KINDS, NOVEL, PATIENT, TRANSFORMS, decoder_transform  # noqa: F401
from .outputs import _source, _write_results, combine_benchmarks  # noqa: F401 (public here too)



def default_detectors() -> tuple[str, ...]:
    """Every 2D detector that can run here: ``external`` only when its encoder file is set."""
    return tuple(d for d in ALL_DETECTORS if d != "contrastive3d"
                 and (d != "external" or os.environ.get(EXTERNAL_ENV)))


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


def _patients(ids: np.ndarray, image_size: int, slices: int, seed: int,
              contrast: str = "t2") -> Cohort:
    """Slices of whole patients; each patient has ``2 * slices`` heights (see build_sets)."""
    parts = [make_cohort(1, image_size, 2 * slices, seed=seed, first_patient=int(p),
                         contrast=contrast) for p in ids]
    return Cohort(*(np.concatenate([getattr(c, f) for c in parts])
                    for f in ("images", "patient_id", "slice_index", "has_lesion")))


def draw_patients(image_size: int, n_train: int, n_holdout: int, n_novel: int,
                  slices_per_patient: int, cohort_patients: int, seed: int,
                  data_seed: int | None = None, contrast: str = "t2") -> dict:
    """The patients of one draw: training, holdout and novel slices (even heights), the
    unseen odd heights of the training patients, and the pool's split (see :func:`build_sets`)."""
    spp = slices_per_patient
    for name, n in (("n_train", n_train), ("n_holdout", n_holdout), ("n_novel", n_novel)):
        if n < spp or n % spp:
            raise ValueError(f"{name}={n} must be a positive multiple of slices_per_patient={spp}")
    pool = seed if data_seed is None else data_seed
    split = split_patients(np.arange(cohort_patients), SPLIT_FRACTIONS, seed=pool)
    rng = np.random.default_rng(seed if data_seed is None else [data_seed, seed])
    need = {"train": n_train // spp, "holdout": n_holdout // spp, "test": n_novel // spp}
    ids = {}
    for part, n in need.items():
        if n > len(split[part]):
            raise ValueError(f"{n} {part} patients asked but the {part} split of "
                             f"cohort_patients={cohort_patients} has {len(split[part])}")
        ids[part] = rng.permutation(split[part])[:n]

    def even_odd(c: Cohort) -> tuple[Cohort, Cohort]:
        return c.subset(c.slice_index % 2 == 0), c.subset(c.slice_index % 2 == 1)

    train, unseen = even_odd(_patients(ids["train"], image_size, spp, pool, contrast))
    holdout, _ = even_odd(_patients(ids["holdout"], image_size, spp, pool, contrast))
    novel, _ = even_odd(_patients(ids["test"], image_size, spp, pool, contrast))
    return {"train": train, "unseen": unseen, "holdout": holdout, "novel": novel, "split": split,
            "ids": ids}


def build_sets(image_size: int = 32, n_train: int = 64, n_holdout: int = 64,
               n_per_change: int = 32, n_novel: int = 128, slices_per_patient: int = 4,
               cohort_patients: int = 600, seed: int = 0, data_seed: int | None = None,
               decode_steps: int = 200, device: str = "cpu", contrast: str = "t2") -> BenchmarkSets:
    """Draw the patients, plant the copies, and label every query.

    Each patient is generated at ``2 * slices_per_patient`` heights. Training, holdout and novel
    slices are the even heights; the odd heights of *training* patients are never in the
    training set and become the ``same_patient`` queries. Patients come from the pool's
    patient-level split: training and holdout from their own shares, novel slices from the
    *test* share only (never the *reference* share, which the trusted encoder learns from).

    Parameters
    ----------
    seed : draws the patients of each share, the copies and their changes.
    data_seed : the pool (anatomy and split); ``None`` = ``seed``, a new pool per seed.
    decode_steps : steps of the autoencoder, trained on the training slices as a latent
        model's stage 1 is, whose round trip makes the ``decoded`` copies (cached).
    contrast : the look of every patient of the benchmark (:data:`memstudy.data.phantom.CONTRASTS`);
        the trusted encoder still learns from the study's pool, so another contrast asks how
        far that ruler carries to images unlike those it learned from.
    """
    spp = slices_per_patient
    pool = seed if data_seed is None else data_seed
    drawn = draw_patients(image_size, n_train, n_holdout, n_novel, spp, cohort_patients,
                          seed=seed, data_seed=data_seed, contrast=contrast)
    train, unseen, holdout, novel, split = (drawn[k] for k in (
        "train", "unseen", "holdout", "novel", "split"))
    ids = drawn["ids"]

    gen = torch.Generator().manual_seed(seed)
    images, kind, source, pid, sidx = [], [], [], [], []
    train_images = torch.from_numpy(train.images)
    key = {"pool": pool, "seed": seed, "image_size": image_size, "steps": decode_steps,
           "train_patients": ids["train"].tolist(), "slices": spp, "version": 2,
           **({"contrast": contrast} if contrast != "t2" else {})}  # t2 keeps its old files
    decode = train_round_trip_autoencoder(train_images, decode_steps, seed + 7919, device,
                                          cache=cache_file("planted_autoencoder", key))
    transforms = {**TRANSFORMS, "decoded": decoder_transform(decode)}
    for change in CHANGES:
        if n_per_change <= len(train):  # distinct sources
            src = torch.randperm(len(train), generator=gen)[:n_per_change].numpy()
        else:  # more copies than training slices: sources repeat
            src = torch.randint(0, len(train), (n_per_change,), generator=gen).numpy()
        images.append(transforms[change](train_images[src], gen))
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


def trusted_spec(params: dict, pool: int) -> TrustedSpec:
    """The trusted encoder a benchmark with ``params`` uses for patient pool ``pool``."""
    # a benchmark written before random_contrast existed used none
    return TrustedSpec.with_budget(
        params["trusted_steps"], image_size=params["image_size"], data_seed=pool,
        cohort_patients=params["cohort_patients"], backbone=params["trusted_backbone"],
        random_contrast=params.get("trusted_random_contrast", 0.0))


def _score_seed(sets: BenchmarkSets, detectors: tuple[str, ...], seed: int, params: dict,
                device: str, external_path: str | None, progress: bool):
    """Score every detector on one seed's sets: per-seed rows and per-query scores."""
    train = torch.from_numpy(sets.train.images)
    holdout = torch.from_numpy(sets.holdout.images)
    rows, scores = [], []
    for name in detectors:
        t0 = time.perf_counter()
        trusted = trusted_spec(params, seed if params["data_seed"] is None else params["data_seed"])
        det = make_detector(name, dim=params["encoder_dim"], steps=params["encoder_steps"],
                            seed=seed, device=device, external_path=external_path,
                            trusted=trusted).fit(train)
        found = score(det, train, holdout, sets.queries, params["percentile"])
        sim, nn, tau = found.sim_gen_train, found.nn_gen_train, found.result.tau
        row = {"detector": name, "seed": seed, "tau": tau,
               "tau_rule": "fixed" if det.fixed_tau is not None else f"holdout p{params['percentile']:g}",
               **detector_metrics(sim, tau, sets.kind),
               "fp_floor": found.result.fp_floor,
               "holdout_copy_rate": found.result.holdout_copy_rate,
               "nn_is_source": float((nn == sets.source)[sets.is_copy].mean()),
               "seconds": round(time.perf_counter() - t0, 2)}
        rows.append(row)
        scores.append(pd.DataFrame({
            "detector": name, "seed": seed, "query": np.arange(len(sim)), "kind": sets.kind,
            "sim": sim, "tau": tau, "flagged": sim > tau, "nn": nn, "source": sets.source,
            "nn_is_source": nn == sets.source, "patient_id": sets.patient_id,
            "slice_index": sets.slice_index,
            "nn_same_patient": sets.train.patient_id[nn] == sets.patient_id}))
        if progress:
            print(f"seed {seed} {name:>12}: AUC {row['auc']:.3f}, recall {row['recall']:.0%} at "
                  f"tau {tau:.3f}, FPR on novel {row['fpr_novel']:.0%} ({row['seconds']:.1f} s)",
                  file=sys.stderr)
    return rows, scores


def run_benchmark(image_size: int = 32, n_train: int = 64, seed: int = 0,
                  detectors: tuple[str, ...] | None = None, out_dir: str | Path | None = None,
                  *, seeds: tuple[int, ...] | None = None, data_seed: int | None = None,
                  n_holdout: int = 64, n_per_change: int = 32, n_novel: int = 128,
                  slices_per_patient: int = 4, cohort_patients: int = 600,
                  encoder_steps: int = 300, encoder_dim: int = 128, trusted_steps: int = 2000,
                  trusted_backbone: str = "small", decode_steps: int = 200,
                  percentile: float = 95.0, n_boot: int = 2000, device: str = "cpu",
                  external_path: str | None = None, tau_draws: int = 40,
                  contrast: str = "t2", progress: bool = True) -> pd.DataFrame:
    """Score every detector on planted copies and novel slices; write tables and figures.

    Parameters
    ----------
    image_size, n_train : the cohort resolution and the training slices.
    seed, seeds : one seed, or several (each draws new patients and changes and retrains the
        per-cell encoders); ``seeds`` wins when given.
    detectors : names from :data:`memstudy.detect.factory.ALL_DETECTORS`; default
        :func:`default_detectors`.
    out_dir : output folder; default ``$MEMSTUDY_RESULTS/validation``.
    data_seed : the patient pool; ``None`` = each seed its own pool (and its own trusted encoder,
        trained on that pool's reference share); a number = one pool and one trusted encoder
        for every seed, as in a grid, where the replicate seeds share the pool.
    n_holdout, n_per_change, n_novel, slices_per_patient, cohort_patients : sizes (see
        :func:`build_sets`).
    encoder_steps, encoder_dim : Dar et al.'s per-cell contrastive encoder.
    trusted_steps, trusted_backbone : the trusted encoder's budget and network (cached).
    decode_steps : the autoencoder that makes the ``decoded`` copies.
    percentile : tau's percentile for detectors calibrated on holdout.
    n_boot : bootstrap resamples of the intervals.
    device : "cpu", "cuda" or "auto".
    external_path : TorchScript file of the ``external`` detector (default: the env var).
    tau_draws : fresh draws of patients (no copies) on which the rule's tau is recomputed and
        its false-positive rate on novel slices measured (:mod:`.tau_rule`), in ``data_seed``'s
        pool (the first seed's when each seed has its own); 0 skips them.
    contrast : the benchmark patients' contrast (see :func:`build_sets`); ``t2`` is the study's.

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
    TrustedSpec(image_size=image_size, backbone=trusted_backbone)  # a bad choice fails now
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast={contrast!r} is not one of {', '.join(CONTRASTS)}")
    seeds = tuple(seeds) if seeds else (seed,)
    out = Path(out_dir) if out_dir is not None else results_root() / "validation"
    device = resolve_device(device)
    params = dict(image_size=image_size, n_train=n_train, seed=seeds[0], seeds=list(seeds),
                  data_seed=data_seed, detectors=list(detectors), n_holdout=n_holdout,
                  n_per_change=n_per_change, n_novel=n_novel,
                  slices_per_patient=slices_per_patient, cohort_patients=cohort_patients,
                  encoder_steps=encoder_steps, encoder_dim=encoder_dim,
                  trusted_steps=trusted_steps, trusted_backbone=trusted_backbone,
                  trusted_random_contrast=TrustedSpec().random_contrast,
                  decode_steps=decode_steps, percentile=percentile, n_boot=n_boot, device=device,
                  tau_draws=tau_draws, contrast=contrast)
    per_seed, scores, first = [], [], None
    for s in seeds:
        sets = build_sets(image_size, n_train, n_holdout, n_per_change, n_novel,
                          slices_per_patient, cohort_patients, seed=s, data_seed=data_seed,
                          decode_steps=decode_steps, device=device, contrast=contrast)
        first = first or sets
        rows, found = _score_seed(sets, detectors, s, params, device, external_path, progress)
        per_seed += rows
        scores += found
    from ..viz import figures
    from .figures import examples_figure
    from .tau_rule import rule_draws

    rule = (rule_draws(params, detectors, tau_draws, device, external_path, progress=progress)
            if tau_draws else None)
    source = _source(params)
    figures.save(examples_figure(first, source), out / "examples.png")
    return _write_results(out, params, pd.DataFrame(per_seed), pd.concat(scores, ignore_index=True),
                          round(time.perf_counter() - tic, 1), environment(device), rule)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="memstudy validate",
        description="Validate the copy detectors against planted copies of training slices "
        f"({', '.join(CHANGES)}; plus unseen slices of training patients) and novel slices of "
        "test-share patients, over one or more seeds, with 95 %% patient-bootstrap intervals "
        "and paired comparisons; then the tau rule's false-positive rate on fresh draws of "
        "patients. Writes validation, recall, paired, per_seed, scores and tau_rule tables "
        "(.csv/.parquet), roc.png, recall_by_change.png, examples.png, benchmark.json.",
        epilog="cost on 2 CPU cores at 32 px: about 2 minutes per seed and 2 minutes for the "
        "tau draws, plus the trusted encoder once per pool and size (about 21 CPU-minutes at the "
        "default --trusted-steps 2000, 32 or 64 px; cached after).")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="output folder (default: $MEMSTUDY_RESULTS/validation)")
    parser.add_argument("--detectors", default=None,
                        help=f"comma-separated subset of {','.join(ALL_DETECTORS)} (default: all "
                        f"2D ones; external only when {EXTERNAL_ENV} is set)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--n-train", type=int, default=64, help="training slices")
    parser.add_argument("--n-holdout", type=int, default=64, help="holdout slices (calibrate tau)")
    parser.add_argument("--n-per-change", type=int, default=32, help="queries per change type")
    parser.add_argument("--n-novel", type=int, default=128, help="novel test-share slices")
    parser.add_argument("--encoder-steps", type=int, default=300,
                        help="Dar et al.'s per-cell contrastive encoder's training steps")
    parser.add_argument("--trusted-steps", type=int, default=2000,
                        help="the trusted encoder's training steps (cached per pool and size)")
    parser.add_argument("--trusted-backbone", default="small",
                        help="the trusted encoder's network: small, resnet10 or resnet18")
    parser.add_argument("--decode-steps", type=int, default=200,
                        help="steps of the autoencoder that makes the decoded copies")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=_ints, default=None,
                        help="several seeds, e.g. 0,1,2 (overrides --seed)")
    parser.add_argument("--data-seed", type=int, default=None,
                        help="one patient pool for every seed (default: a pool per seed)")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--tau-draws", type=int, default=40,
                        help="fresh draws of patients on which tau is recomputed, to measure the "
                        "rule's false-positive rate on novel patients (0: skip; Dar et al.'s "
                        "per-cell encoder is not redrawn)")
    parser.add_argument("--contrast", default="t2", choices=CONTRASTS,
                        help="render the benchmark's patients in another contrast than the "
                        "study's t2 (the trusted encoder still learns from the study's pool): "
                        "how far does each ruler carry to images unlike its own?")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--external-encoder", default=None,
                        help="TorchScript (or .pt2) file of the external detector "
                        f"(default: ${EXTERNAL_ENV})")
    args = parser.parse_args(argv)
    detectors = tuple(d for d in args.detectors.split(",") if d) if args.detectors else None
    try:
        table = run_benchmark(args.image_size, args.n_train, args.seed, detectors, args.out_dir,
                              seeds=args.seeds, data_seed=args.data_seed,
                              n_holdout=args.n_holdout, n_per_change=args.n_per_change,
                              n_novel=args.n_novel, encoder_steps=args.encoder_steps,
                              trusted_steps=args.trusted_steps,
                              trusted_backbone=args.trusted_backbone,
                              decode_steps=args.decode_steps, n_boot=args.n_boot,
                              device=args.device, external_path=args.external_encoder,
                              tau_draws=args.tau_draws, contrast=args.contrast)
    except (ValueError, FileNotFoundError) as err:
        print(f"memstudy validate: error: {err}", file=sys.stderr)
        return 2
    cols = [c for c in ("detector", "auc", "auc_lo", "auc_hi", "recall", "fpr_novel",
                        "fpr_novel_lo", "fpr_novel_hi", "fpr_rule", "min_recall_change")
            if c in table]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"written to {args.out_dir or results_root() / 'validation'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

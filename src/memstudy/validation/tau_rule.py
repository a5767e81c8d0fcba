"""How often does the 95th-percentile rule's tau flag a genuinely new patient? Many draws.

Dar et al.'s tau is the 95th percentile of train -> holdout similarity, so "about 5 %" of new
images should sit above it. The planted-copy benchmark measures that false-positive rate on
novel patients with only a few seeds, and each seed has *one* tau, drawn from the held-out
slices of a few patients: the rate it reports mixes the detector with the luck of that one
tau. This module separates the two. It draws many fresh (training,
holdout, novel) sets of patients from the same pool, no copies, recomputes the rule's tau each
time, and records the share of novel slices above it. The mean over draws is the rate a cell
of that size should expect from the rule with that detector; its interval is over draws.

Why the rule overshoots its 5 % (measured for every calibrated detector alike, not a trait
of one): tau is an estimated percentile of a few dozen similarities from a few patients
(slices of one patient are alike), so it scatters from draw to draw, and the false-positive
rate is a convex function of tau in the upper tail: a tau too low by some amount costs more
than a tau too high by the same amount saves.

Detectors whose ``fit`` trains on the training set (Dar et al.'s ``contrastive``) would be
retrained for every draw; they are skipped unless asked for (their ``fpr_rule`` is empty).
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import torch

from ..detect.factory import make_detector
from ..metrics.intervals import cluster_means, percentile_interval
from ..metrics.scoring import score
from .planted import draw_patients, trusted_spec

RETRAINED_PER_CELL = ("contrastive", "contrastive3d")  # their encoder learns each training set
FIRST_DRAW = 1000  # draw seeds start here, apart from the benchmark's own seeds


def rule_draws(params: dict, detectors: tuple[str, ...], draws: int, device: str = "cpu",
               external_path: str | None = None, include_retrained: bool = False,
               progress: bool = True) -> pd.DataFrame:
    """One row per (detector, draw): the rule's tau and the share of novel slices above it.

    ``params`` are the benchmark's (sizes, pool, percentile, encoder settings; see
    :func:`memstudy.validation.planted.run_benchmark`).
    """
    # One pool for every seed (--data-seed), or a pool per seed: then the first seed's.
    pool = params["seeds"][0] if params["data_seed"] is None else params["data_seed"]
    names = [d for d in detectors if include_retrained or d not in RETRAINED_PER_CELL]
    trusted = trusted_spec(params, pool)
    built = {}
    rows = []
    for d in range(FIRST_DRAW, FIRST_DRAW + draws):
        sets = draw_patients(params["image_size"], params["n_train"], params["n_holdout"],
                             params["n_novel"], params["slices_per_patient"],
                             params["cohort_patients"], seed=d, data_seed=pool,
                             contrast=params.get("contrast", "t2"))  # older runs: the study's
        train, holdout, novel = (torch.from_numpy(sets[k].images) for k in
                                 ("train", "holdout", "novel"))
        for name in names:
            if name not in built or name in RETRAINED_PER_CELL:
                built[name] = make_detector(name, dim=params["encoder_dim"],
                                            steps=params["encoder_steps"], seed=d,
                                            device=device, external_path=external_path,
                                            trusted=trusted)
            det = built[name].fit(train)
            found = score(det, train, holdout, novel, params["percentile"])
            rows.append({"detector": name, "draw": d, "tau": found.result.tau,
                         "fpr_novel": float((found.sim_gen_train > found.result.tau).mean()),
                         "fp_floor": found.result.fp_floor})
        if progress and (d - FIRST_DRAW) % 10 == 9:
            print(f"tau rule: {d - FIRST_DRAW + 1}/{draws} draws", file=sys.stderr)
    return pd.DataFrame(rows)


def summarize_draws(rows: pd.DataFrame, nominal: float, n_boot: int = 2000) -> pd.DataFrame:
    """Per detector: mean false-positive rate over draws with a bootstrap interval (draws
    resampled), its excess over the nominal rate, the share of draws more than 2 points above
    nominal, and how much tau scatters between draws."""
    out = []
    for name, part in rows.groupby("detector", sort=False):
        fpr = part.fpr_novel.to_numpy()
        lo, hi = percentile_interval(cluster_means(fpr, np.arange(len(fpr)), n_boot))
        out.append({"detector": name, "draws": len(fpr), "fpr_rule": float(fpr.mean()),
                    "fpr_rule_lo": lo, "fpr_rule_hi": hi, "excess": float(fpr.mean() - nominal),
                    "share_over_2pt": float((fpr > nominal + 0.02).mean()),
                    "tau_sd": float(part.tau.std(ddof=1)) if len(part) > 1 else float("nan")})
    return pd.DataFrame(out)

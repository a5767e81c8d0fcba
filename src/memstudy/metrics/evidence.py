"""Every rate of one checkpoint beside its null, its excess over the null, and 95 % intervals.

The **null** of a rate is the same measurement made on images of patients no model and no
ruler has seen: slices of the pool's ``test`` share (``null_set``), as many as the synthetic
set, scored through the same detector, threshold and nearest-neighbour search as the
synthetic set. Whatever a rate shows above its null is evidence of memorization; whatever it
shows at its null is chance matching (neighbouring anatomy, a small training set, a tau
calibrated on 5 % of held-out matches).

Definitions used here (the book's methods chapter states them for readers):

- ``copy_rate`` = synthetic samples above tau / N_gen. Samples are independent draws from the
  model, so its interval is exact binomial. ``null_copy_rate`` = never-seen slices above tau,
  bootstrapped over their patients then slices.
- ``mem_rate`` = training slices whose nearest synthetic sample is above tau, with **N_gen =
  N_train** as in Dar et al.: only the first N_train synthetic samples (all of them if there
  are fewer) are searched, so the rate has no N_gen / N_train cap that changes with dataset
  size. Its null searches the same number of never-seen slices. Rate and null are measured on
  the same training slices, so the excess is bootstrapped as a paired difference over
  training patients, then slices.
- ``patients_matched_rate`` = training patients with a synthetic slice above the patient
  threshold / training patients; its null is the same count for never-seen slices, and the
  paired excess is bootstrapped over training patients.
- membership: AUC and TPR at the lowest FPR the number of non-members supports
  (:func:`memstudy.metrics.intervals.low_fpr_point`); non-members are the held-out *and* the
  never-seen slices. Its null is the same attack with held-out slices posing as members
  against never-seen ones: two sets of new patients, expected AUC 0.5.
"""

from __future__ import annotations

import numpy as np

from .intervals import (auc_with_interval, cluster_means, excess_interval, low_fpr_point,
                        percentile_interval, rate_with_interval, tpr_at)
from .patient import patient_level
from .scoring import Detection, score


def _columns(name: str, measured: dict, null: dict, excess: dict) -> dict[str, float]:
    """``name``, its interval, null (with interval) and excess (with interval) as flat columns."""
    return {name: measured["rate"], f"{name}_lo": measured["lo"], f"{name}_hi": measured["hi"],
            f"null_{name}": null["rate"], f"null_{name}_lo": null["lo"],
            f"null_{name}_hi": null["hi"], f"excess_{name}": excess["excess"],
            f"excess_{name}_lo": excess["lo"], f"excess_{name}_hi": excess["hi"]}


def _paired(hits: np.ndarray, null_hits: np.ndarray, groups: np.ndarray, seed: int) -> tuple:
    """Rate, null and paired excess of two 0/1 arrays over the same items grouped by patient."""
    measured = rate_with_interval(hits, groups, seed=seed)
    null = rate_with_interval(null_hits, groups, seed=seed + 1)
    diff = cluster_means(hits.astype(float) - null_hits.astype(float), groups, seed=seed + 2)
    lo, hi = percentile_interval(diff)
    return measured, null, {"excess": measured["rate"] - null["rate"], "lo": lo, "hi": hi}


def rate_evidence(found: Detection, null_found: Detection, train_pid: np.ndarray,
                  holdout_pid: np.ndarray, null_pid: np.ndarray, sim_train_gen_matched: np.ndarray,
                  sim_train_null_matched: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Copy, memorized and patient-level rates of one detector with nulls, excesses, intervals.

    Parameters
    ----------
    found : the detector's :class:`~memstudy.metrics.scoring.Detection` of the synthetic set.
    null_found : the same detector's Detection with the never-seen slices as the "synthetic"
        set (same training and holdout sets, hence the same tau).
    train_pid, holdout_pid, null_pid : patient id of every training, held-out, never-seen slice.
    sim_train_gen_matched, sim_train_null_matched : (N_train,) each training slice's nearest
        similarity among the first N_train synthetic / never-seen slices (N_gen = N_train).
    seed : seeds the bootstraps.
    """
    tau = found.result.tau
    copy = rate_with_interval(found.sim_gen_train > tau, seed=seed)
    copy_null = rate_with_interval(null_found.sim_gen_train > tau, null_pid, seed=seed + 1)
    row = _columns("copy_rate", copy, copy_null, excess_interval(copy, copy_null))

    mem = _paired(sim_train_gen_matched > tau, sim_train_null_matched > tau, train_pid, seed + 3)
    row |= _columns("mem_rate", *mem)
    row["n_mem"] = int((sim_train_gen_matched > tau).sum())

    def matched_patients(det: Detection) -> np.ndarray:
        found_patients = patient_level(det.sim_gen_train, det.nn_gen_train, train_pid,
                                       det.sim_holdout_train, holdout_pid)
        return np.isin(np.unique(train_pid), found_patients.patients_matched)

    patients = np.unique(train_pid)
    row |= _columns("patients_matched_rate",
                    *_paired(matched_patients(found), matched_patients(null_found), patients,
                             seed + 6))
    # Samples (slices or volumes) that match a training patient above what every held-out
    # patient reaches, beside never-seen samples over the same threshold (the 2D-vs-3D measure)
    threshold = patient_level(found.sim_gen_train, found.nn_gen_train, train_pid,
                              found.sim_holdout_train, holdout_pid).threshold
    match = rate_with_interval(found.sim_gen_train > threshold, seed=seed + 9)
    match_null = rate_with_interval(null_found.sim_gen_train > threshold, null_pid, seed=seed + 10)
    row |= _columns("patient_match_rate", match, match_null, excess_interval(match, match_null))
    return row


def membership_evidence(loss_train: np.ndarray, loss_holdout: np.ndarray, loss_null: np.ndarray,
                        train_pid: np.ndarray, holdout_pid: np.ndarray, null_pid: np.ndarray,
                        seed: int = 0) -> dict[str, float]:
    """Loss-based membership inference with its null and 95 % intervals (``mia_*`` columns).

    A lower denoising loss means "member". Non-members are the held-out and the never-seen
    slices together, so the low-FPR operating point can be as low as their number allows; its
    value is reported as ``mia_low_fpr`` so that the column is never misnamed.
    """
    members = -np.asarray(loss_train, dtype=np.float64)
    nonmembers = -np.r_[np.asarray(loss_holdout, dtype=np.float64), np.asarray(loss_null, dtype=np.float64)]
    nonmember_pid = np.r_[np.asarray(holdout_pid), np.asarray(null_pid)]
    fpr = low_fpr_point(nonmembers.size)
    auc = auc_with_interval(members, nonmembers, train_pid, nonmember_pid, seed=seed)
    null_auc = auc_with_interval(-np.asarray(loss_holdout, dtype=np.float64),
                                 -np.asarray(loss_null, dtype=np.float64), holdout_pid, null_pid,
                                 seed=seed + 2)
    diff = np.asarray(auc["draws"]) - np.asarray(null_auc["draws"])
    lo, hi = percentile_interval(diff)
    # TPR at the low-FPR point: resample members and non-members as independent samples
    rng = np.random.default_rng(seed + 4)
    tpr = tpr_at(members, nonmembers, fpr)
    boot = [tpr_at(rng.choice(members, members.size), rng.choice(nonmembers, nonmembers.size), fpr)
            for _ in range(500)]
    tpr_lo, tpr_hi = percentile_interval(np.asarray(boot))
    return {"mia_auc": auc["auc"], "mia_auc_lo": auc["lo"], "mia_auc_hi": auc["hi"],
            "null_mia_auc": null_auc["auc"], "null_mia_auc_lo": null_auc["lo"],
            "null_mia_auc_hi": null_auc["hi"], "excess_mia_auc": auc["auc"] - null_auc["auc"],
            "excess_mia_auc_lo": lo, "excess_mia_auc_hi": hi,
            "mia_low_fpr": fpr, "mia_tpr_at_low_fpr": tpr, "mia_tpr_at_low_fpr_lo": tpr_lo,
            "mia_tpr_at_low_fpr_hi": tpr_hi, "null_mia_tpr_at_low_fpr": fpr,
            "mia_n_members": int(members.size), "mia_n_nonmembers": int(nonmembers.size)}


def checkpoint_evidence(detector, found: Detection, train, holdout, gen, null_images,
                        train_pid: np.ndarray, holdout_pid: np.ndarray, null_pid: np.ndarray,
                        percentile: float = 95.0, seed: int = 0) -> dict[str, float]:
    """:func:`rate_evidence` for one detector at one checkpoint, doing the extra searches.

    Scores the never-seen slices ``null_images`` exactly as the synthetic set ``gen`` was
    scored (same training and holdout sets, so the same tau), and searches each training
    slice's nearest among the first N_train synthetic and never-seen slices.
    """
    null_found = score(detector, train, holdout, null_images, percentile)
    n = min(len(train), len(gen), len(null_images))
    rep_train = detector.prepare(train)

    def nearest_sim(images):
        values, _ = detector.search(rep_train, detector.prepare(images[:n]), 1)
        return values[:, 0].cpu().numpy()

    row = rate_evidence(found, null_found, train_pid, holdout_pid, null_pid,
                        nearest_sim(gen), nearest_sim(null_images), seed)
    return {**row, "n_gen_mem": n, "mem_rate_all_gen": found.result.mem_rate}

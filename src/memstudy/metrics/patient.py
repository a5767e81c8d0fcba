"""Patient-level memorization: which training *patients* a synthetic set reproduces."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PatientLevel:
    """Synthetic slices that sit closer to a training patient than held-out patients ever get."""

    threshold: float  # the holdout reference: percentile of holdout -> train similarity
    percentile: float  # 100 = the maximum: no held-out patient reaches the threshold
    n_gen: int
    n_matched: int  # synthetic slices whose nearest training slice is above the threshold
    n_train_patients: int
    patients_matched: tuple[int, ...]  # distinct training patients those slices point to

    @property
    def rate(self) -> float:
        return self.n_matched / self.n_gen if self.n_gen else float("nan")

    @property
    def patient_rate(self) -> float:
        return len(self.patients_matched) / self.n_train_patients

    def as_dict(self) -> dict[str, float | int]:
        # keys are prefixed so that they can join a row of Memorization.as_dict()
        return {"patient_threshold": self.threshold, "patient_percentile": self.percentile,
                "n_patient_matched": self.n_matched,
                "patient_match_rate": self.rate, "n_train_patients": self.n_train_patients,
                "n_patients_matched": len(self.patients_matched),
                "patients_matched_rate": self.patient_rate}


def patient_level(sim_gen_train: np.ndarray, nn_gen_train: np.ndarray,
                  train_patient_id: np.ndarray, sim_holdout_train: np.ndarray,
                  holdout_patient_id: np.ndarray | None = None,
                  percentile: float = 100.0) -> PatientLevel:
    """Patient-level memorization: which training *patients* the synthetic set reproduces.

    A synthetic slice counts as a patient match when its similarity to its nearest training
    slice is strictly above a threshold that held-out patients do not reach: by default the
    **maximum** of held-out -> training similarity (``percentile=100``), so no genuinely new
    patient in the holdout set would be counted. The maximum is the strict, conservative
    choice, but it grows with the size of the holdout set; a high percentile (e.g. 99) is more
    stable and lets (100 - percentile) % of new images through, like Dar et al.'s tau.

    Parameters
    ----------
    sim_gen_train, nn_gen_train : (N_gen,) similarity and index of each synthetic slice's
        nearest training slice (``Detection.sim_gen_train`` / ``nn_gen_train``).
    train_patient_id : (N_train,) patient id of every training slice.
    sim_holdout_train : (N_holdout,) similarity of each held-out slice to its nearest training
        slice (``Detection.sim_holdout_train``).
    holdout_patient_id : (N_holdout,) optional; when given, each held-out patient contributes
        one value, its slices' maximum, so the percentile is taken over *patients*.
    percentile : which percentile of the holdout reference is the threshold.

    Returns
    -------
    PatientLevel
        ``rate`` = matched synthetic slices / N_gen; ``patient_rate`` = distinct training
        patients matched / training patients.
    """
    sim_gen_train = np.asarray(sim_gen_train, dtype=np.float64)
    nn_gen_train = np.asarray(nn_gen_train, dtype=np.int64)
    train_patient_id = np.asarray(train_patient_id)
    reference = np.asarray(sim_holdout_train, dtype=np.float64)
    if reference.size == 0:
        raise ValueError("patient_level needs held-out -> training similarities as a reference")
    if sim_gen_train.shape != nn_gen_train.shape:
        raise ValueError("sim_gen_train and nn_gen_train must have the same length")
    if holdout_patient_id is not None:
        holdout_patient_id = np.asarray(holdout_patient_id)
        reference = np.array([reference[holdout_patient_id == p].max()
                              for p in np.unique(holdout_patient_id)])
    threshold = float(np.percentile(reference, percentile))
    matched = sim_gen_train > threshold
    patients = np.unique(train_patient_id[nn_gen_train[matched]])
    return PatientLevel(threshold=threshold, percentile=float(percentile),
                        n_gen=len(sim_gen_train), n_matched=int(matched.sum()),
                        n_train_patients=len(np.unique(train_patient_id)),
                        patients_matched=tuple(int(p) for p in patients))


def patient_audit(train_pid: np.ndarray, sim_train_gen: np.ndarray, tau: float,
                  loss_train: np.ndarray | None = None,
                  loss_nonmembers: np.ndarray | None = None):
    """Per training patient: the worst copy score over its slices, and its membership score.

    Aggregate rates can sit near chance while single patients are exposed (Knolle et al.,
    2026), so a privacy officer asks for the worst patients, not the mean.

    Parameters
    ----------
    train_pid : (N_train,) patient id of every training slice.
    sim_train_gen : (N_train,) each training slice's similarity to its nearest synthetic slice.
    tau : the detector's threshold; ``copy_margin`` = worst similarity - tau (> 0: copied).
    loss_train : (N_train,) optional denoising loss of every training slice (lower = member).
    loss_nonmembers : optional losses of never-trained slices: the membership score is then the
        share of them whose loss is *higher* than the patient's mean loss (1 = more member-like
        than every non-member; about 0.5 for a patient the model treats like a stranger).

    Returns
    -------
    pandas.DataFrame
        One row per patient, worst first: ``patient_id, n_slices, worst_sim, copy_margin,
        copied`` and, with losses, ``mean_loss, membership_score``.
    """
    import pandas as pd  # the audit is a table; the rest of this module stays numpy-only

    train_pid = np.asarray(train_pid)
    sim = np.asarray(sim_train_gen, dtype=np.float64)
    table = pd.DataFrame({"patient_id": train_pid, "sim": sim})
    if loss_train is not None:
        table["loss"] = np.asarray(loss_train, dtype=np.float64)
    agg = {"n_slices": ("sim", "size"), "worst_sim": ("sim", "max")}
    if loss_train is not None:
        agg["mean_loss"] = ("loss", "mean")
    out = table.groupby("patient_id").agg(**agg).reset_index()
    out["copy_margin"] = out["worst_sim"] - tau
    out["copied"] = out["copy_margin"] > 0
    if loss_train is not None and loss_nonmembers is not None:
        ref = np.sort(np.asarray(loss_nonmembers, dtype=np.float64))
        # share of non-members with a higher loss than this patient (ties count one half)
        above = ref.size - np.searchsorted(ref, out["mean_loss"].to_numpy(), side="right")
        ties = np.searchsorted(ref, out["mean_loss"].to_numpy(), side="right") - np.searchsorted(
            ref, out["mean_loss"].to_numpy(), side="left")
        out["membership_score"] = (above + 0.5 * ties) / ref.size
    return out.sort_values("copy_margin", ascending=False).reset_index(drop=True)

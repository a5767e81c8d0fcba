"""The checks behind the exercises: each prints ``correct`` or what is wrong, and never raises.

A check computes the expected answer itself from the exercise's inputs, so the student's
notebook shows no answer; its cell is folded in the student version. Never raising matters:
a student notebook must fail only at an unfinished exercise (the stub), not at its check.
Checks return nothing (a returned value would print under the message in a notebook).
"""

from __future__ import annotations

import numpy as np

CORRECT = "correct"


def _verdict(exercise: str, problems: list[str]) -> None:
    if problems:
        print(f"Exercise {exercise}: not yet right — " + "; ".join(problems))
    else:
        print(CORRECT)


def _missing(exercise: str, **answers) -> bool:
    """Say which answers are still None (the stub's placeholder); True if any is."""
    missing = [name for name, value in answers.items() if value is None]
    if missing:
        print(f"Exercise {exercise}: not answered yet — {', '.join(missing)} is still None. "
              "Replace the exercise cell's `raise NotImplementedError(...)` with your code.")
    return bool(missing)


def _close(value, expected: float, tol: float = 1e-6) -> bool:
    try:
        return abs(float(value) - expected) <= tol
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------------------------
# Sharing (patient-level splits)
# --------------------------------------------------------------------------------------------


def leaked_patients(leaked, patient_id, is_train, exercise: str = "S2") -> None:
    """Patients with slices on both sides of a split."""
    if _missing(exercise, leaked=leaked):
        return
    patient_id, is_train = np.asarray(patient_id), np.asarray(is_train, dtype=bool)
    expected = len(set(patient_id[is_train]) & set(patient_id[~is_train]))
    problems = []
    if not _close(leaked, expected, 0):
        problems.append(f"leaked = {leaked!r}")
        if _close(leaked, len(set(patient_id)), 0):
            problems.append("that is every patient: count only those with slices in both parts")
        else:
            problems.append("take the set of patient ids on each side and count the ids in both")
    _verdict(exercise, problems)


# --------------------------------------------------------------------------------------------
# Detection (tau, copy rate, null, floor, interval)
# --------------------------------------------------------------------------------------------


def tau(tau, sim_train_holdout, percentile: float = 95.0, exercise: str = "D1") -> None:
    """tau = the ``percentile``-th percentile of each training slice's best holdout match."""
    if _missing(exercise, tau=tau):
        return
    expected = float(np.percentile(sim_train_holdout, percentile))
    problems = []
    if not _close(tau, expected):
        problems.append(f"tau = {tau!r} but the {percentile:g}th percentile of "
                        "sim_train_holdout is another number")
        if _close(tau, float(np.percentile(sim_train_holdout, 100 - percentile))):
            problems.append(f"you took the {100 - percentile:g}th percentile: tau sits high, "
                            f"so that only {100 - percentile:g} % of new-patient matches exceed it")
    _verdict(exercise, problems)


def rate_above(rate, sim, tau_value: float, name: str, exercise: str) -> None:
    """A rate = the fraction of ``sim`` strictly above tau."""
    if _missing(exercise, **{name: rate}):
        return
    sim = np.asarray(sim)
    expected = float((sim > tau_value).mean())
    problems = []
    if not _close(rate, expected):
        problems.append(f"{name} = {rate!r}")
        if _close(rate, float((sim >= tau_value).mean())):
            problems.append("use '>' (strictly above tau), not '>='")
        elif _close(rate, float((sim > tau_value).sum())):
            problems.append("that is a count: divide by the number of samples")
        elif _close(rate, float((sim <= tau_value).mean())):
            problems.append("that is the share *below* tau")
        else:
            problems.append(f"count the entries of the right similarity array above tau "
                            f"({len(sim)} of them) and divide")
    _verdict(exercise, problems)


def null_and_floor(null, fp_floor, sim_holdout_train, sim_train_holdout, tau_value: float,
                   exercise: str = "D3") -> None:
    """The null (held-out slices above tau against training) and the floor (training above
    tau against holdout)."""
    if _missing(exercise, null=null, fp_floor=fp_floor):
        return
    want_null = float((np.asarray(sim_holdout_train) > tau_value).mean())
    want_floor = float((np.asarray(sim_train_holdout) > tau_value).mean())
    problems = []
    if _close(null, want_floor) and _close(fp_floor, want_null) and not _close(null, want_null):
        problems.append("null and fp_floor are swapped")
    else:
        if not _close(null, want_null):
            problems.append(f"null = {null!r}: it is the share of *held-out* slices whose "
                            "nearest training slice is above tau (sim_holdout_train)")
        if not _close(fp_floor, want_floor):
            problems.append(f"fp_floor = {fp_floor!r}: it is the share of *training* slices "
                            "whose nearest held-out slice is above tau (sim_train_holdout)")
    _verdict(exercise, problems)


def excess(excess, sim_gen, sim_null, tau_value: float, exercise: str = "L1") -> None:
    """Copy rate minus null: shares of synthetic and held-out samples strictly above tau."""
    if _missing(exercise, excess=excess):
        return
    copy_rate = float((np.asarray(sim_gen) > tau_value).mean())
    null = float((np.asarray(sim_null) > tau_value).mean())
    problems = []
    if not _close(excess, copy_rate - null):
        problems.append(f"excess = {excess!r}")
        if _close(excess, copy_rate):
            problems.append("that is the copy rate alone: subtract the null")
        elif _close(excess, null - copy_rate):
            problems.append("the sign is flipped: copy rate minus null")
        else:
            problems.append("take the share of sim_gen_train above tau minus the share of "
                            "sim_holdout_train above tau")
    _verdict(exercise, problems)


def excess_interval(ci, copies, null, exercise: str = "D4", tol: float = 0.06) -> None:
    """A 95 % interval of copy rate minus null, from resampling both sets.

    Bootstrap intervals differ from run to run, so the check allows ``tol`` on each end
    against :func:`memstudy.course.labs.excess_interval`.
    """
    from .labs import excess_interval as reference

    if _missing(exercise, ci=ci):
        return
    copies, null = (np.asarray(a, dtype=float) for a in (copies, null))
    try:
        lo, hi = (float(v) for v in ci)
    except (TypeError, ValueError):
        _verdict(exercise, [f"ci = {ci!r}: give two numbers, (low, high)"])
        return
    point = copies.mean() - null.mean()
    want_lo, want_hi = reference(copies, null)
    problems = []
    if not lo <= point <= hi:
        problems.append(f"({lo:.3f}, {hi:.3f}) does not contain the excess itself, {point:.3f}")
    if abs(lo - want_lo) > tol or abs(hi - want_hi) > tol:
        alone = reference(copies, np.zeros(2))
        if abs(lo - alone[0]) <= tol and abs(hi - alone[1]) <= tol:
            problems.append("that is the interval of the copy rate alone: resample the null too "
                            "and take the difference")
        else:
            problems.append(f"({lo:.3f}, {hi:.3f}) is far from what resampling synthetic and "
                            "held-out samples gives: resample each set with replacement, at its "
                            "own size, many times, and take the 2.5th and 97.5th percentiles")
    _verdict(exercise, problems)


def verdict(answer, ci, exercise: str) -> None:
    """'above the null' only when the whole interval is above zero, else 'inconclusive'."""
    if _missing(exercise, verdict=answer):
        return
    expected = "above the null" if float(ci[0]) > 0 else "inconclusive"
    problems = [] if answer == expected else [
        f"verdict = {answer!r}, but the interval ({float(ci[0]):.3f}, {float(ci[1]):.3f}) "
        "says otherwise: 'above the null' needs its lower end above zero"]
    _verdict(exercise, problems)


# --------------------------------------------------------------------------------------------
# Diffusion
# --------------------------------------------------------------------------------------------


def noisy(x_t, x0, noise, t: int, scheduler, exercise: str = "F1") -> None:
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise, as the scheduler adds it."""
    import torch

    if _missing(exercise, x_t=x_t):
        return
    expected = scheduler.add_noise(x0, noise, torch.tensor([t]))
    x_t = torch.as_tensor(x_t)
    problems = []
    if x_t.shape != expected.shape:
        problems.append(f"x_t has shape {tuple(x_t.shape)}, x0 has {tuple(expected.shape)}")
    elif not torch.allclose(x_t.float(), expected.float(), atol=1e-5):
        ab = scheduler.alphas_cumprod[t]
        if torch.allclose(x_t.float(), (ab * x0 + (1 - ab) * noise).float(), atol=1e-5):
            problems.append("take the square roots of alpha_bar and 1 - alpha_bar")
        else:
            problems.append("x_t differs from sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * "
                            "noise, with alpha_bar_t = scheduler.alphas_cumprod[t]")
    _verdict(exercise, problems)


def half_signal_step(t_half, scheduler, exercise: str = "F2") -> None:
    """The first timestep at which sqrt(alpha_bar_t) falls below one half."""
    if _missing(exercise, t_half=t_half):
        return
    signal = scheduler.alphas_cumprod.sqrt().numpy()
    expected = int(np.argmax(signal < 0.5))
    problems = []
    if not _close(t_half, expected, 0):
        try:
            problems.append(f"t_half = {t_half!r}: there sqrt(alpha_bar) = {signal[int(t_half)]:.3f}; "
                            "find the *first* step where it is below 0.5")
        except (IndexError, TypeError, ValueError):
            problems.append(f"t_half = {t_half!r} is not a step of the schedule (0..{len(signal) - 1})")
    _verdict(exercise, problems)


def compression(ratio, cfg, exercise: str = "F3") -> None:
    """Pixel values per latent value, measured by encoding one image with the real network."""
    import torch

    from ..models.networks import build_autoencoder

    if _missing(exercise, ratio=ratio):
        return
    with torch.no_grad():
        z = build_autoencoder(cfg).encode_stage_2_inputs(torch.zeros(1, 1, cfg.image_size,
                                                                     cfg.image_size))
    expected = cfg.image_size ** 2 / z[0].numel()
    problems = [] if _close(ratio, expected, 1e-3) else [
        f"ratio = {ratio!r}, but one {cfg.image_size}x{cfg.image_size} image becomes a latent "
        f"of shape {tuple(z.shape[1:])}"]
    _verdict(exercise, problems)


# --------------------------------------------------------------------------------------------
# Lab 2
# --------------------------------------------------------------------------------------------


def my_change(change, images, exercise: str = "P1") -> None:
    """A change keeps the shape and the [0, 1] range, and changes something."""
    import torch

    if _missing(exercise, my_change=change):
        return
    if not callable(change):
        _verdict(exercise, ["my_change must be a function of a batch of images"])
        return
    out = torch.as_tensor(change(images.clone()))
    problems = []
    if out.shape != images.shape:
        problems.append(f"it returns shape {tuple(out.shape)} for input {tuple(images.shape)}")
    elif not torch.isfinite(out).all():
        problems.append("it returns NaN or infinite values")
    else:
        if out.min() < -0.01 or out.max() > 1.01:
            problems.append(f"values run from {float(out.min()):.2f} to {float(out.max()):.2f}; "
                            "keep them in [0, 1] (torch.clamp)")
        if torch.allclose(out.float(), images.float(), atol=1e-4):
            problems.append("it leaves the images unchanged (that is the 'exact' copy)")
    _verdict(exercise, problems)


def recall_fpr(recall, fpr, per_query, detector: str, kind: str, exercise: str = "P2") -> None:
    """Recall on one kind of copy and the false-positive rate on novel slices, one detector."""
    if _missing(exercise, recall=recall, fpr=fpr):
        return
    rows = per_query[per_query.detector == detector]
    want_recall = float(rows.flagged[rows.kind == kind].mean())
    want_fpr = float(rows.flagged[rows.kind == "novel"].mean())
    problems = []
    if not _close(recall, want_recall):
        problems.append(f"recall = {recall!r}: the share of {detector}'s '{kind}' rows flagged")
    if not _close(fpr, want_fpr):
        problems.append(f"fpr = {fpr!r}: the share of {detector}'s 'novel' rows flagged")
    _verdict(exercise, problems)


def spread(table, answer, exercise: str = "R1") -> None:
    """Per level: mean, min and max excess across seeds (columns mean, min, max)."""
    if _missing(exercise, spread=answer):
        return
    expected = table.groupby("level").excess.agg(["mean", "min", "max"])
    try:
        got = answer.loc[expected.index, ["mean", "min", "max"]].astype(float)
        ok = np.allclose(got.to_numpy(), expected.to_numpy())
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        _verdict(exercise, [f"expected a table indexed by level with columns mean, min, max "
                            f"({type(err).__name__}: {err})"])
        return
    _verdict(exercise, [] if ok else ["the numbers differ: group by level and take the mean, "
                                      "min and max of excess"])

"""One cell of the ablation grid, end to end: data -> autoencoder -> latent diffusion ->
samples at every checkpoint -> copy detection -> metrics and figures in the run folder.

``run_cell(cfg, run_dir)`` is the one door; the ablation notebook and the grid runner both
call it. The run folder it fills::

    config.json      the resolved RunConfig, written before any work
    env.json         git SHA, package versions, device
    split.json       patient ids: the full split and the ones this run used
    stats.jsonl      training losses and speed
    autoencoder.pt, contrastive_encoder.pt, checkpoints/last.pt   (resume points)
    samples/step_XXXXXX.npz        synthetic set of each checkpoint
    eval/step_XXXXXX.json          metrics of each checkpoint, one row per detector
    eval/step_XXXXXX_<det>.npz     per-sample similarities and nearest indices
    figures/*.png                  histograms, galleries, training curve, training examples
    metrics.json     all rows + summary; written last, so its presence means "complete"

Running it again on the same folder resumes: finished checkpoints are not redone.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from ..viz import figures

from ..metrics import quality
from ..viz.cohort import plot_cohort
from ..viz.volumes import plot_volumes, volume_gallery
from ..data.volumes import axial_mid_slices, unseen_volumes, write_volumes_nifti
from ..config import ConfigError, RunConfig
from ..data.sets import Sets, load_sets
from ..detect.base import Detector
from ..detect.factory import make_detector
from ..detect.trusted import spec_for_config
from ..metrics.patient import patient_level
from ..metrics.scoring import score
from ..metrics.evidence import checkpoint_evidence, membership_evidence
from ..metrics.membership import attack, denoising_losses
from ..models.controls import UNSEEN_SALT, null_set
from ..models.networks import build_train_scheduler
from ..detect.neighbors import pearson_rows
from ..runio import (cache_file, environment, is_complete, read_json, read_jsonl, results_root, run_lock,
                     save_atomic, write_json_atomic, write_progress)
from ..models.train import Autoencoder, DiffusionTraining, make_training, resolve_device
from ..timing import Profile, part

GALLERY_ROWS = 6
NIFTI_VOLUMES = 8  # synthetic volumes of a 3D cell's last checkpoint written as .nii.gz


def default_run_dir(cfg: RunConfig) -> Path:
    """Where a cell run outside the grid lands: ``$MEMSTUDY_RESULTS/cells/<config digest>``."""
    return results_root() / "cells" / cfg.digest()


def claim_run_dir(cfg: RunConfig, run_dir: Path) -> None:
    """Write config.json first; refuse a folder that holds a different experiment."""
    path = run_dir / "config.json"
    if path.exists():
        old = RunConfig.from_json(path.read_text())
        if old != cfg:
            diff = {k: (v, getattr(cfg, k)) for k, v in old.to_dict().items()
                    if v != cfg.to_dict()[k]}
            raise ConfigError(
                f"{run_dir} already holds a run with a different config (old, new): {diff}. "
                "Choose another run folder, or delete this one to start over.")
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, cfg.to_dict())


def run_cell(cfg: RunConfig, run_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Run (or resume, or skip if complete) one cell; return the contents of metrics.json.

    The run folder is locked meanwhile (:func:`memstudy.runio.run_lock`): another process
    that tries to run the same folder gets ``RunLocked`` instead of racing this one.
    """
    run_dir = Path(run_dir) if run_dir else default_run_dir(cfg)
    with run_lock(run_dir):
        return _run_cell(cfg, run_dir, progress)


def _run_cell(cfg: RunConfig, run_dir: Path, progress: bool) -> dict:
    # Data are read and checked before the folder is claimed: bad input (DataError, naming the
    # file) leaves no run folder that looks started.
    sets = None if is_complete(run_dir) else load_sets(cfg)
    claim_run_dir(cfg, run_dir)
    if is_complete(run_dir):
        return read_json(run_dir / "metrics.json")
    tic = time.perf_counter()
    prof = Profile().start()  # wall time per part -> metrics.json "profile_s" (memstudy.timing)
    device = resolve_device(cfg.device)
    if device == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    write_json_atomic(run_dir / "env.json", environment(device))

    if sets.info:  # real data: where they came from, and how patients were identified
        write_json_atomic(run_dir / "data.json", sets.info)
    write_json_atomic(run_dir / "split.json", {
        **{k: v.tolist() for k, v in sets.split.items()},
        "train_used": np.unique(sets.train.patient_id).tolist(),
        "holdout_used": np.unique(sets.holdout.patient_id).tolist()})
    # Never-seen (test-share) slices: the null of every rate (metrics.evidence)
    null = null_set(cfg) if getattr(cfg, "spatial_dims", 2) == 2 else None  # real data: its test share
    if cfg.dataset == "cohort" and cfg.spatial_dims == 3:  # 3D: never-seen patients' volumes
        null = unseen_volumes(cfg, cfg.num_gen, UNSEEN_SALT)
    if null is not None:
        write_json_atomic(run_dir / "split.json", {**read_json(run_dir / "split.json"),
                                                   "null_used": np.unique(null.patient_id).tolist()})
    train, holdout = sets.tensors()
    source = f"run {run_dir.name}"
    if not cfg.may_show_patient_images:
        pass  # real patients: no figure of their pixels without show_patient_images
    elif cfg.spatial_dims == 3:  # one volume per patient, shown as three mid-slices
        figures.save(plot_volumes(sets.train.images, sets.train.patient_id),
                     run_dir / "figures" / "train_examples.png")
    else:
        figures.save(plot_cohort(sets.train, n_patients=min(4, len(sets.train) // cfg.slices_per_patient)),
                     run_dir / "figures" / "train_examples.png")

    write_progress(run_dir, "autoencoder" if cfg.model in ("ldm", "autoencoder") else "setup")
    training = make_training(cfg, train, device, run_dir, progress)
    space = getattr(training, "space", None)  # the autoencoder, for the families that have one
    recon_r = _recon_pearson(space, holdout, device) if isinstance(space, Autoencoder) else None
    null_raw = null  # the membership attack scores images as they are
    if null is not None and isinstance(space, Autoencoder):
        # A latent model's samples all pass through the decoder, whose blur alone raises pixel
        # correlations: the null of such a cell is never-seen slices through the same round trip.
        null = replace_images(null, _round_trip(space, null.images, device))
    write_progress(run_dir, "detectors")  # the feature ruler, then each detector's fit
    ruler = quality.feature_encoder(cfg, device)
    with part("detectors_fit"):
        # the trusted encoder is shared: loaded from the cache (trained once per pool and size)
        trusted = spec_for_config(cfg) if "trusted" in cfg.detectors else None
        detectors = [make_detector(name, dim=cfg.encoder_dim, steps=cfg.encoder_steps, seed=cfg.seed,
                                   device=device, cache_dir=run_dir, trusted=trusted).fit(train)
                     for name in cfg.detectors]

    def on_checkpoint(step: int, model) -> None:
        evaluate_checkpoint(cfg, step, model, sets, detectors, ruler, run_dir, source, null, null_raw)

    training.run(on_checkpoint, progress)

    rows = []
    for step in cfg.eval_steps:
        rows += read_json(run_dir / "eval" / f"step_{step:06d}.json")
    figures.save(figures.training_curve(read_jsonl(run_dir / "stats.jsonl"), source),
                 run_dir / "figures" / "training_curve.png")
    metrics = {"rows": rows, "model": cfg.model, "autoencoder_recon_pearson_holdout": recon_r,
               "config_digest": cfg.digest(), "device": device,
               "wall_s_this_session": round(time.perf_counter() - tic, 1),
               "profile_s": prof.stop(), "autoencoder_file": str(getattr(space, "source", None) or ""),
               # which shared ruler judged this cell (its key sits beside it, <file>.json)
               "trusted_encoder_file": str(cache_file("trusted_encoder", trusted.key())) if trusted else ""}
    write_json_atomic(run_dir / "metrics.json", metrics)  # last: marks the cell complete
    return metrics


def evaluate_checkpoint(cfg: RunConfig, step: int, model, sets: Sets, detectors: list[Detector],
                        ruler, run_dir: Path, source: str, null=None, null_raw=None) -> None:
    """Sample the synthetic set of one checkpoint; score its quality, diversity and copies."""
    out = run_dir / "eval" / f"step_{step:06d}.json"
    if out.exists():
        return
    write_progress(run_dir, "evaluate", step, cfg.train_steps)
    gen = model.sample(cfg.num_gen, seed=cfg.seed * 1_000_003 + step)
    save_atomic(lambda p: np.savez_compressed(p, images=gen.numpy().astype(np.float16)),
                run_dir / "samples" / f"step_{step:06d}.npz")
    train, holdout = sets.tensors()
    attack = _membership(cfg, model, sets, step, null_raw, run_dir)
    # 3D: quality is read on each volume's axial mid-slice with the 2D ruler of the same size
    q_gen, q_real = ((axial_mid_slices(gen), axial_mid_slices(holdout)) if cfg.spatial_dims == 3
                     else (gen, holdout))
    shared = {"fd": quality.frechet_distance(ruler, q_gen, q_real),
              "ms_ssim_gen": quality.ms_ssim_diversity(q_gen, seed=step),
              "ms_ssim_real": quality.ms_ssim_diversity(q_real, seed=step),
              **quality.feature_mmd(ruler, q_gen, q_real, seed=step)}  # unbiased, with interval
    rows = []
    for det in detectors:
        found = score(det, train, holdout, gen, cfg.tau_percentile)
        save_atomic(lambda p: np.savez_compressed(p, **found.arrays(), tau=found.result.tau,
                                                  train_pid=sets.train.patient_id),
                    run_dir / "eval" / f"step_{step:06d}_{det.name}.npz")
        patients = patient_level(found.sim_gen_train, found.nn_gen_train, sets.train.patient_id,
                                 found.sim_holdout_train, sets.holdout.patient_id)
        evidence = {} if null is None else checkpoint_evidence(
            det, found, train, holdout, gen, torch.from_numpy(null.images), sets.train.patient_id,
            sets.holdout.patient_id, null.patient_id, cfg.tau_percentile, seed=cfg.seed + step)
        # passes over each training image: the confound of the dataset-size axis
        epochs = step * min(cfg.batch_size, len(train)) / len(train)
        rows.append({"step": step, "epochs": epochs, "detector": det.name, **found.result.as_dict(),
                     **patients.as_dict(), **shared, **attack, **evidence})
        name = f"step{step:06d}_{det.name}"
        if step != max(cfg.eval_steps):  # figures are read at the last checkpoint only (0.6 s
            continue  # each, measured); the eval/*.npz beside them keep every step's values
        figures.save(figures.similarity_histogram(
            found.sim_gen_train, found.sim_holdout_train, found.result.tau, det.similarity,
            f"{det.name} detector, step {step}: {found.result.copy_rate:.0%} copies, "
            f"{found.result.mem_rate:.0%} of training memorized", source),
            run_dir / "figures" / f"hist_{name}.png")
        if not cfg.may_show_patient_images:
            continue  # galleries of real patients only on opt-in
        gallery = volume_gallery if cfg.spatial_dims == 3 else figures.nearest_gallery
        figures.save(gallery(
            gen.numpy(), sets.train.images, sets.holdout.images, found.sim_gen_train,
            found.nn_gen_train, found.sim_gen_holdout, found.nn_gen_holdout, found.result.tau,
            min(GALLERY_ROWS, len(gen)), f"{det.name}, step {step}", source, det.similarity),
            run_dir / "figures" / f"gallery_{name}.png")
    if cfg.spatial_dims == 3 and step == max(cfg.eval_steps):  # for a viewer (cohort data only)
        write_volumes_nifti(gen.numpy(), run_dir / "samples" / f"step_{step:06d}_nifti", NIFTI_VOLUMES)
    write_json_atomic(out, rows)


def _membership(cfg: RunConfig, model, sets: Sets, step: int, null=None,
                run_dir: Path | None = None) -> dict:
    """Loss-based membership inference (diffusion families only): train vs holdout denoising
    losses at fixed timesteps and noise. Returns ``mia_*`` columns, empty for other families.

    With never-seen slices (``null``), they join the non-members, the attack gets its null and
    intervals (:func:`memstudy.metrics.evidence.membership_evidence`), and the per-slice losses
    are kept in ``eval/step_XXXXXX_membership.npz`` for the per-patient audit."""
    if not (cfg.membership and isinstance(model, DiffusionTraining)):
        return {}
    train, holdout = sets.tensors()
    device = next(model.denoiser().parameters()).device
    sets_ = [("train", train), ("holdout", holdout)]
    if null is not None:
        sets_.append(("null", torch.from_numpy(null.images)))
    # one seed for every set: members and non-members are scored under the same noise
    losses = {name: denoising_losses(model.denoiser(), build_train_scheduler(cfg),
                                     model.space.encode(x.to(device)), seed=cfg.seed + step).numpy()
              for name, x in sets_}
    out = {f"mia_{k}": v for k, v in attack(losses["train"], losses["holdout"]).items()}
    if null is None:
        return out
    if run_dir is not None:
        save_atomic(lambda p: np.savez_compressed(p, **{f"loss_{k}": v for k, v in losses.items()},
                                                  train_pid=sets.train.patient_id),
                    run_dir / "eval" / f"step_{step:06d}_membership.npz")
    return {**out, **membership_evidence(losses["train"], losses["holdout"], losses["null"],
                                         sets.train.patient_id, sets.holdout.patient_id,
                                         null.patient_id, seed=cfg.seed + step)}


@torch.no_grad()
def _round_trip(ae, images: np.ndarray, device: str) -> np.ndarray:
    """Images through the autoencoder and back, as a latent model's decoder would show them."""
    x = torch.from_numpy(images).to(device)
    return ae.decode(ae.encode(x)).float().clamp(0, 1).cpu().numpy()


def replace_images(cohort, images: np.ndarray):
    """The same slices (ids, positions) with other pixels."""
    return dataclasses.replace(cohort, images=images)


@torch.no_grad()
def _recon_pearson(ae, images: torch.Tensor, device: str) -> float:
    """Mean Pearson r between held-out images and their autoencoder reconstructions."""
    x = images.to(device)
    recon = ae.model.decode(ae.model.encode(x)[0]).float()
    return float((pearson_rows(x) * pearson_rows(recon)).sum(1).mean())

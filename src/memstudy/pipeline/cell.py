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

import time
from pathlib import Path

import numpy as np
import torch

from ..viz import figures

from ..metrics import quality
from ..viz.cohort import plot_cohort
from ..config import ConfigError, RunConfig
from ..data.sets import Sets, load_sets
from ..detect.base import Detector
from ..detect.factory import make_detector
from ..metrics.patient import patient_level
from ..metrics.scoring import score
from ..metrics.membership import membership_inference
from ..models.networks import build_train_scheduler
from ..detect.neighbors import pearson_rows
from ..runio import (environment, is_complete, read_json, read_jsonl, results_root, save_atomic,
                     write_json_atomic)
from ..models.train import Autoencoder, DiffusionTraining, make_training, resolve_device
from ..timing import Profile, part

GALLERY_ROWS = 6


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
    """Run (or resume, or skip if complete) one cell; return the contents of metrics.json."""
    run_dir = Path(run_dir) if run_dir else default_run_dir(cfg)
    claim_run_dir(cfg, run_dir)
    if is_complete(run_dir):
        return read_json(run_dir / "metrics.json")
    tic = time.perf_counter()
    prof = Profile().start()  # wall time per part -> metrics.json "profile_s" (memstudy.timing)
    device = resolve_device(cfg.device)
    if device == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    write_json_atomic(run_dir / "env.json", environment(device))

    sets = load_sets(cfg)
    write_json_atomic(run_dir / "split.json", {
        **{k: v.tolist() for k, v in sets.split.items()},
        "train_used": np.unique(sets.train.patient_id).tolist(),
        "holdout_used": np.unique(sets.holdout.patient_id).tolist()})
    train, holdout = sets.tensors()
    source = f"run {run_dir.name}"
    figures.save(plot_cohort(sets.train, n_patients=min(4, len(sets.train) // cfg.slices_per_patient)),
                 run_dir / "figures" / "train_examples.png")

    training = make_training(cfg, train, device, run_dir, progress)
    space = getattr(training, "space", None)  # the autoencoder, for the families that have one
    recon_r = _recon_pearson(space, holdout, device) if isinstance(space, Autoencoder) else None
    ruler = quality.feature_encoder(cfg, device)
    with part("detectors_fit"):
        detectors = [make_detector(name, dim=cfg.encoder_dim, steps=cfg.encoder_steps, seed=cfg.seed,
                                   device=device, cache_dir=run_dir).fit(train)
                     for name in cfg.detectors]

    def on_checkpoint(step: int, model) -> None:
        evaluate_checkpoint(cfg, step, model, sets, detectors, ruler, run_dir, source)

    training.run(on_checkpoint, progress)

    rows = []
    for step in cfg.eval_steps:
        rows += read_json(run_dir / "eval" / f"step_{step:06d}.json")
    figures.save(figures.training_curve(read_jsonl(run_dir / "stats.jsonl"), source),
                 run_dir / "figures" / "training_curve.png")
    metrics = {"rows": rows, "model": cfg.model, "autoencoder_recon_pearson_holdout": recon_r,
               "config_digest": cfg.digest(), "device": device,
               "wall_s_this_session": round(time.perf_counter() - tic, 1),
               "profile_s": prof.stop(), "autoencoder_file": str(getattr(space, "source", None) or "")}
    write_json_atomic(run_dir / "metrics.json", metrics)  # last: marks the cell complete
    return metrics


def evaluate_checkpoint(cfg: RunConfig, step: int, model, sets: Sets, detectors: list[Detector],
                        ruler, run_dir: Path, source: str) -> None:
    """Sample the synthetic set of one checkpoint; score its quality, diversity and copies."""
    out = run_dir / "eval" / f"step_{step:06d}.json"
    if out.exists():
        return
    gen = model.sample(cfg.num_gen, seed=cfg.seed * 1_000_003 + step)
    save_atomic(lambda p: np.savez_compressed(p, images=gen.numpy().astype(np.float16)),
                run_dir / "samples" / f"step_{step:06d}.npz")
    train, holdout = sets.tensors()
    attack = _membership(cfg, model, train, holdout, step)
    shared = {"fd": quality.frechet_distance(ruler, gen, holdout),
              "ms_ssim_gen": quality.ms_ssim_diversity(gen, seed=step),
              "ms_ssim_real": quality.ms_ssim_diversity(holdout, seed=step)}
    rows = []
    for det in detectors:
        found = score(det, train, holdout, gen, cfg.tau_percentile)
        save_atomic(lambda p: np.savez_compressed(p, **found.arrays()),
                    run_dir / "eval" / f"step_{step:06d}_{det.name}.npz")
        patients = patient_level(found.sim_gen_train, found.nn_gen_train, sets.train.patient_id,
                                 found.sim_holdout_train, sets.holdout.patient_id)
        rows.append({"step": step, "detector": det.name, **found.result.as_dict(),
                     **patients.as_dict(), **shared, **attack})
        name = f"step{step:06d}_{det.name}"
        figures.save(figures.similarity_histogram(
            found.sim_gen_train, found.sim_holdout_train, found.result.tau, det.similarity,
            f"{det.name} detector, step {step}: {found.result.copy_rate:.0%} copies, "
            f"{found.result.mem_rate:.0%} of training memorized", source),
            run_dir / "figures" / f"hist_{name}.png")
        if step != max(cfg.eval_steps):  # galleries are read at the last checkpoint only
            continue
        figures.save(figures.nearest_gallery(
            gen.numpy(), sets.train.images, sets.holdout.images, found.sim_gen_train,
            found.nn_gen_train, found.sim_gen_holdout, found.nn_gen_holdout, found.result.tau,
            min(GALLERY_ROWS, len(gen)), f"{det.name}, step {step}", source, det.similarity),
            run_dir / "figures" / f"gallery_{name}.png")
    write_json_atomic(out, rows)


def _membership(cfg: RunConfig, model, train: torch.Tensor, holdout: torch.Tensor, step: int) -> dict:
    """Loss-based membership inference (diffusion families only): train vs holdout denoising
    losses at fixed timesteps and noise. Returns ``mia_*`` columns, empty for other families."""
    if not (cfg.membership and isinstance(model, DiffusionTraining)):
        return {}
    device = next(model.denoiser().parameters()).device
    found = membership_inference(model.denoiser(), build_train_scheduler(cfg),
                                 model.space.encode(train.to(device)),
                                 model.space.encode(holdout.to(device)), seed=cfg.seed + step)
    return {f"mia_{k}": v for k, v in found.items()}


@torch.no_grad()
def _recon_pearson(ae, images: torch.Tensor, device: str) -> float:
    """Mean Pearson r between held-out images and their autoencoder reconstructions."""
    x = images.to(device)
    recon = ae.model.decode(ae.model.encode(x)[0]).float()
    return float((pearson_rows(x) * pearson_rows(recon)).sum(1).mean())

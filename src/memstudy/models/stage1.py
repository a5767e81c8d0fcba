"""Stage 1 of latent diffusion: the autoencoder, trained per cell or shared, and resumable.

The loop draws every random number from one explicit ``torch.Generator`` and writes a resume
point (weights, optimisers, generator) every :data:`AE_SAVE_EVERY` steps, so a run killed in
stage 1 continues from its last resume point and ends bit-identical to an uninterrupted run.
The shared, cached autoencoder (trained once on reference patients) is in
:mod:`memstudy.models.shared`; it uses the same loop.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.losses import PatchAdversarialLoss
from tqdm.auto import tqdm

from ..config import RunConfig
from ..runio import append_jsonl, read_jsonl, save_atomic, write_bytes_atomic
from .accel import fused
from .augment import BatchAugment
from .networks import build_autoencoder, build_discriminator

LOG_EVERY = 25  # steps between two records in stats.jsonl
AE_SAVE_EVERY = 100  # stage-1 steps between two resume points (stage 2 resumes at checkpoints)


def _autocast(device: str):
    # bf16 on CUDA roughly halves memory traffic; on CPU we keep fp32 for exact reproducibility.
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))


def _batch(images: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """A batch without repeats (each image equally likely), drawn from ``gen``."""
    idx = torch.randperm(len(images), generator=gen)[:min(size, len(images))]
    return images[idx.to(images.device)]


def kl_loss(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL divergence of N(mu, sigma) from N(0, 1), summed over latent dims, mean over batch."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2).clamp_min(1e-12)) - 1)
    return kl.flatten(1).sum(1).mean()


class PixelSpace:
    """The identity "autoencoder" of pixel-space diffusion: [0, 1] images <-> [-1, 1] pixels."""

    channels = 1
    downsample = 1

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 - 1

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (z + 1) / 2


class Autoencoder:
    """Stage 1 plus the latent scale factor that makes latents roughly unit-variance."""

    def __init__(self, model, scale_factor: float, source: Path | None = None):
        self.model, self.scale_factor = model, scale_factor
        self.source = source  # the weights file, for provenance (metrics.json)
        self.channels = model.latent_channels
        self.downsample = 2 ** (len(model.encoder.channels) - 1)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        # The posterior mean, not a sample: with kl_weight ~1e-6 the posterior is nearly a point,
        # and the mean keeps the latents of an un-augmented training set fixed (cacheable).
        return self.model.encode(x)[0] * self.scale_factor

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z / self.scale_factor)


def train_autoencoder(cfg: RunConfig, train: torch.Tensor, device: str, run_dir: Path,
                      progress: bool = True) -> Autoencoder:
    """Train (or load from ``run_dir/autoencoder.pt``) stage 1 on the cell's training images.

    This is ``autoencoder="per_cell"``; the shared, cached one is
    :func:`memstudy.models.shared.shared_autoencoder`. A killed run resumes stage 1 from
    ``run_dir/checkpoints/autoencoder_last.pt``.
    """
    return fit_autoencoder(cfg, train, device, out=run_dir / "autoencoder.pt",
                           resume=run_dir / "checkpoints" / "autoencoder_last.pt",
                           stats=run_dir / "stats.jsonl", seed=cfg.seed,
                           augmentation=cfg.augmentation, progress=progress)


def fit_autoencoder(cfg: RunConfig, images: torch.Tensor | None, device: str, *, out: Path,
                    resume: Path, stats: Path, seed: int, augmentation: str,
                    progress: bool = True) -> Autoencoder:
    """Stage 1 on ``images``: load ``out`` if it exists, else train (resumably) and write it.

    Parameters
    ----------
    cfg : the run's config; its ``ae_*``, ``kl_weight``, ``adversarial_weight`` and
        ``batch_size`` fields set the model and the budget.
    images : (N, 1, H, W) training images in [0, 1]; may be None only when ``out`` exists.
    out : the finished weights (and latent scale factor).
    resume : the resume point, rewritten every :data:`AE_SAVE_EVERY` steps, deleted at the end.
    stats : the ``stats.jsonl`` that receives the loss every :data:`LOG_EVERY` steps.
    seed, augmentation : seed of initialisation, batches and augmentation; augmentation level.
    """
    torch.manual_seed(seed)
    model = build_autoencoder(cfg).to(device)
    if out.exists():
        state = torch.load(out, map_location=device)
        model.load_state_dict(state["model"])
        return Autoencoder(model.eval(), state["scale_factor"], out)
    if images is None:
        raise ValueError(f"no trained autoencoder at {out}: pass the images to train it on")
    gen = torch.Generator().manual_seed(seed)
    augment = BatchAugment(augmentation, gen)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.ae_lr, **fused(device))
    state_of = {"model": model, "opt": opt}  # everything a resume must restore, with `gen`
    use_adv = cfg.adversarial_weight > 0
    if use_adv:
        disc = build_discriminator().to(device)
        opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg.ae_lr, **fused(device))
        adv_loss = PatchAdversarialLoss(criterion="least_squares")
        state_of.update(disc=disc, opt_d=opt_d)
    start = 0
    if resume.exists():  # a killed run: continue where its last resume point left off
        saved = torch.load(resume, map_location=device, weights_only=False)
        for k, m in state_of.items():
            m.load_state_dict(saved[k])
        # map_location moved the random states to the device too; generators take CPU bytes
        gen.set_state(saved["gen"].cpu())
        torch.set_rng_state(saved["torch_rng"].cpu())
        if "cuda_rng" in saved:
            torch.cuda.set_rng_state(saved["cuda_rng"].cpu(), device)
        start = saved["step"]
    trim_stats(stats, "autoencoder", start)  # records past the resume point will be redone
    stats.parent.mkdir(parents=True, exist_ok=True)
    images = images.to(device)
    model.train()
    bar = tqdm(range(start, cfg.ae_steps), desc="autoencoder", disable=not progress, leave=False)
    for step in bar:
        x = augment(_batch(images, cfg.batch_size, gen))
        with _autocast(device):
            recon, z_mu, z_sigma = model(x)
            loss = F.l1_loss(recon.float(), x) + cfg.kl_weight * kl_loss(z_mu.float(), z_sigma.float())
            if use_adv:
                loss = loss + cfg.adversarial_weight * adv_loss(disc(recon)[-1], target_is_real=True,
                                                                for_discriminator=False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if use_adv:
            with _autocast(device):
                d_loss = 0.5 * (adv_loss(disc(recon.detach())[-1], target_is_real=False, for_discriminator=True)
                                + adv_loss(disc(x)[-1], target_is_real=True, for_discriminator=True))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        if step % LOG_EVERY == 0 or step == cfg.ae_steps - 1:
            append_jsonl(stats, {"stage": "autoencoder", "step": step + 1, "loss": loss.item()})
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % AE_SAVE_EVERY == 0 and step + 1 < cfg.ae_steps:
            # AutoencoderKL draws its latent sample from torch's global generator (randn_like),
            # so that generator's state is part of the resume point too
            saved = {"step": step + 1, "gen": gen.get_state(), "torch_rng": torch.get_rng_state(),
                     **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.startswith("cuda") else {}),
                     **{k: m.state_dict() for k, m in state_of.items()}}
            save_atomic(lambda p: torch.save(saved, p), resume)
    model.eval()
    with torch.no_grad():
        z = torch.cat([model.encode(images[i:i + 256])[0] for i in range(0, len(images), 256)])
    scale = float(1.0 / z.float().std())
    save_atomic(lambda p: torch.save({"model": model.state_dict(), "scale_factor": scale}, p), out)
    resume.unlink(missing_ok=True)  # the finished weights supersede the resume point
    return Autoencoder(model, scale, out)


def trim_stats(path: Path, stage: str, step: int) -> None:
    """Drop ``stage`` records after ``step`` from a ``stats.jsonl``: a resumed run logs them again.

    Without this, a run killed between two resume points would list those steps twice.
    """
    records = read_jsonl(path)
    kept = [r for r in records if not (r.get("stage") == stage and r.get("step", 0) > step)]
    if len(kept) < len(records):
        text = "".join(json.dumps(r) + "\n" for r in kept)
        write_bytes_atomic(path, text.encode())



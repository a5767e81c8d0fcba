"""Training loops: stage 1 (autoencoder) and stage 2 (latent diffusion), resumable.

Both loops draw every random number from one explicit ``torch.Generator``, so a run is
reproducible for a seed on a CPU, and a run killed after a checkpoint resumes from that
checkpoint's full state (weights, optimiser, EMA, generator) and ends bit-identical to an
uninterrupted run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.inferers import DiffusionInferer
from monai.losses import PatchAdversarialLoss
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from .augment import BatchAugment
from .config import RunConfig
from .models import build_autoencoder, build_discriminator, build_train_scheduler, build_unet
from .runio import append_jsonl, save_atomic

LOG_EVERY = 25  # steps between two records in stats.jsonl


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} was asked for but CUDA is not available: use 'cpu' or 'auto'.")
    return name


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


class Autoencoder:
    """Stage 1 plus the latent scale factor that makes latents roughly unit-variance."""

    def __init__(self, model, scale_factor: float):
        self.model, self.scale_factor = model, scale_factor

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
    """Train (or load from ``run_dir/autoencoder.pt``) stage 1 on the training images."""
    path = run_dir / "autoencoder.pt"
    torch.manual_seed(cfg.seed)
    model = build_autoencoder(cfg).to(device)
    if path.exists():
        state = torch.load(path, map_location=device)
        model.load_state_dict(state["model"])
        return Autoencoder(model.eval(), state["scale_factor"])
    gen = torch.Generator().manual_seed(cfg.seed)
    augment = BatchAugment(cfg.augmentation, gen)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.ae_lr)
    use_adv = cfg.adversarial_weight > 0
    if use_adv:
        disc = build_discriminator().to(device)
        opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg.ae_lr)
        adv_loss = PatchAdversarialLoss(criterion="least_squares")
    train = train.to(device)
    model.train()
    bar = tqdm(range(cfg.ae_steps), desc="autoencoder", disable=not progress, leave=False)
    for step in bar:
        x = augment(_batch(train, cfg.batch_size, gen))
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
            append_jsonl(run_dir / "stats.jsonl", {"stage": "autoencoder", "step": step + 1,
                                                   "loss": loss.item()})
            bar.set_postfix(loss=f"{loss.item():.4f}")
    model.eval()
    with torch.no_grad():
        z = torch.cat([model.encode(train[i:i + 256])[0] for i in range(0, len(train), 256)])
    scale = float(1.0 / z.float().std())
    save_atomic(lambda p: torch.save({"model": model.state_dict(), "scale_factor": scale}, p), path)
    return Autoencoder(model, scale)


class DiffusionTraining:
    """Stage 2: DDPM training of the latent UNet, with checkpoints that double as resume points.

    ``run(on_checkpoint)`` trains to ``cfg.train_steps`` and calls ``on_checkpoint(step, unet)``
    at every step of ``cfg.eval_steps``, with the EMA weights when EMA is enabled.
    """

    def __init__(self, cfg: RunConfig, ae: Autoencoder, train: torch.Tensor, device: str,
                 run_dir: Path):
        self.cfg, self.ae, self.device, self.run_dir = cfg, ae, device, run_dir
        self.ckpt_dir = run_dir / "checkpoints"
        torch.manual_seed(cfg.seed)
        self.unet = build_unet(cfg).to(device)
        self.ema = (AveragedModel(self.unet, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay))
                    if cfg.ema_decay > 0 else None)
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=cfg.lr)
        self.scheduler = build_train_scheduler(cfg)
        self.inferer = DiffusionInferer(self.scheduler)
        self.gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)  # independent of stage 1
        self.augment = BatchAugment(cfg.augmentation, self.gen)
        self.train_images = train.to(device)
        # Without augmentation the latents never change: encode the training set once.
        self.latents = ae.encode(self.train_images) if self.augment.is_identity else None
        self.step = 0

    # --- resume ----------------------------------------------------------------------
    def _state(self) -> dict:
        return {"step": self.step, "unet": self.unet.state_dict(), "opt": self.opt.state_dict(),
                "ema": None if self.ema is None else self.ema.state_dict(),
                "gen": self.gen.get_state()}

    def save(self) -> None:
        save_atomic(lambda p: torch.save(self._state(), p), self.ckpt_dir / "last.pt")

    def try_resume(self) -> int:
        """Load ``checkpoints/last.pt`` if present; return the step training resumes from."""
        path = self.ckpt_dir / "last.pt"
        if not path.exists():
            return 0
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.unet.load_state_dict(state["unet"])
        self.opt.load_state_dict(state["opt"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.gen.set_state(state["gen"])
        self.step = state["step"]
        return self.step

    # --- training --------------------------------------------------------------------
    def _loss(self) -> torch.Tensor:
        cfg = self.cfg
        if self.latents is not None:
            z = _batch(self.latents, cfg.batch_size, self.gen)
        else:
            z = self.ae.encode(self.augment(_batch(self.train_images, cfg.batch_size, self.gen)))
        noise = torch.randn(z.shape, generator=self.gen).to(self.device)
        t = torch.randint(0, cfg.num_train_timesteps, (z.shape[0],), generator=self.gen).to(self.device)
        with _autocast(self.device):
            pred = self.inferer(inputs=z, diffusion_model=self.unet, noise=noise, timesteps=t)
        return F.mse_loss(pred.float(), noise)

    def run(self, on_checkpoint: Callable[[int, torch.nn.Module], None], progress: bool = True) -> None:
        cfg, stats = self.cfg, self.run_dir / "stats.jsonl"
        start = self.try_resume()
        if start in cfg.eval_steps:  # killed after saving, possibly before evaluating
            on_checkpoint(start, self.sampling_model())
        bar = tqdm(total=cfg.train_steps, initial=start, desc="diffusion", disable=not progress,
                   leave=False)
        self.unet.train()
        tic = time.perf_counter()
        while self.step < cfg.train_steps:
            loss = self._loss()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            if self.ema is not None:
                self.ema.update_parameters(self.unet)
            self.step += 1
            bar.update(1)
            if self.step % LOG_EVERY == 0:
                rate = LOG_EVERY / (time.perf_counter() - tic)
                append_jsonl(stats, {"stage": "diffusion", "step": self.step, "loss": loss.item(),
                                     "steps_per_s": rate})
                bar.set_postfix(loss=f"{loss.item():.4f}")
                tic = time.perf_counter()
            if self.step in cfg.eval_steps:
                self.save()
                self.unet.eval()
                on_checkpoint(self.step, self.sampling_model())
                self.unet.train()
                tic = time.perf_counter()
        bar.close()

    def sampling_model(self) -> torch.nn.Module:
        model = self.ema.module if self.ema is not None else self.unet
        return model.eval()

"""Training loops of every family, resumable: stage 2 of latent diffusion (stage 1, the
autoencoder, is in :mod:`memstudy.models.stage1`), pixel-space diffusion, the GAN, and the
autoencoder used alone as a generator.

The loops draw every random number from one explicit ``torch.Generator``, so a run is
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
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from .accel import channels_last, fused, maybe_compile
from .augment import BatchAugment
from ..config import ConfigError, RunConfig
from .networks import (build_gan, build_sample_scheduler, build_train_scheduler, build_unet,
                       diffusion_target)
from .shared import shared_autoencoder
from ..runio import append_jsonl, save_atomic, write_progress
from ..timing import part, timed
# Stage 1 moved to stage1.py; these names stay importable from here for existing callers.
from .stage1 import (LOG_EVERY, Autoencoder, PixelSpace, _autocast, _batch,  # noqa: F401
                     kl_loss, train_autoencoder, trim_stats)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} was asked for but CUDA is not available: use 'cpu' or 'auto'.")
    return name


class CheckpointedTraining:
    """A training loop whose checkpoints are both measurement points and resume points.

    Subclasses define ``modules()`` (everything with a state dict), ``train_step()`` and
    ``sample(n, seed)``. ``run(on_checkpoint)`` trains to ``cfg.train_steps`` and calls
    ``on_checkpoint(step, self)`` at every step of ``cfg.eval_steps``, after saving the full
    state (modules, optimisers, random generator) to ``checkpoints/last.pt``.
    """

    stage = "model"

    def __init__(self, cfg: RunConfig, device: str, run_dir: Path):
        self.cfg, self.device, self.run_dir = cfg, device, run_dir
        self.gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)  # independent of stage 1
        self.step = 0

    def modules(self) -> dict:
        raise NotImplementedError

    def train_step(self) -> torch.Tensor:
        """One optimisation step; returns the loss as a 0-d tensor (read only when logged)."""
        raise NotImplementedError

    def sample(self, n: int, seed: int) -> torch.Tensor:
        raise NotImplementedError

    def save(self) -> None:
        state = {"step": self.step, "gen": self.gen.get_state(),
                 **{k: m.state_dict() for k, m in self.modules().items()}}
        save_atomic(lambda p: torch.save(state, p), self.run_dir / "checkpoints" / "last.pt")

    def try_resume(self) -> int:
        """Load ``checkpoints/last.pt`` if present; return the step training resumes from."""
        path = self.run_dir / "checkpoints" / "last.pt"
        if not path.exists():
            return 0
        state = torch.load(path, map_location=self.device, weights_only=False)
        for k, m in self.modules().items():
            m.load_state_dict(state[k])
        # map_location moved the generator's state to the device; a generator takes CPU bytes
        # (a GPU run killed after a checkpoint failed to resume without .cpu(): seen on an H200)
        self.gen.set_state(state["gen"].cpu())
        self.step = state["step"]
        return self.step

    def train(self, mode: bool = True) -> None:
        for m in self.modules().values():
            if isinstance(m, torch.nn.Module):
                m.train(mode)

    def run(self, on_checkpoint: Callable[[int, "CheckpointedTraining"], None],
            progress: bool = True) -> None:
        cfg, stats = self.cfg, self.run_dir / "stats.jsonl"
        start = self.try_resume()
        trim_stats(stats, self.stage, start)  # records past the resume point will be redone
        if start in cfg.eval_steps:  # killed after saving, possibly before evaluating
            self.train(False)
            with part("evaluate"):
                on_checkpoint(start, self)
        bar = tqdm(total=cfg.train_steps, initial=start, desc=self.stage, disable=not progress,
                   leave=False)
        self.train(True)
        tic = time.perf_counter()
        while self.step < cfg.train_steps:
            with part("train_steps"):
                loss = self.train_step()
            self.step += 1
            bar.update(1)
            write_progress(self.run_dir, self.stage, self.step, cfg.train_steps)  # grid view
            if self.step % LOG_EVERY == 0:
                loss = float(loss)  # the only point a GPU step waits for its result
                rate = LOG_EVERY / (time.perf_counter() - tic)
                append_jsonl(stats, {"stage": self.stage, "step": self.step, "loss": loss,
                                     "steps_per_s": rate})
                bar.set_postfix(loss=f"{loss:.4f}")
                tic = time.perf_counter()
            if self.step in cfg.eval_steps:
                self.save()
                self.train(False)
                with part("evaluate"):
                    on_checkpoint(self.step, self)
                self.train(True)
                tic = time.perf_counter()
        bar.close()


class DiffusionTraining(CheckpointedTraining):
    """DDPM training of a ``DiffusionModelUNet`` in a space: latent (LDM) or pixels.

    Samples are drawn with DDIM from noise seeded by ``seed`` alone, so the synthetic set of a
    checkpoint does not depend on whether training was resumed.
    """

    stage = "diffusion"

    def __init__(self, cfg: RunConfig, space: Autoencoder | PixelSpace, train: torch.Tensor,
                 device: str, run_dir: Path):
        super().__init__(cfg, device, run_dir)
        self.space = space
        torch.manual_seed(cfg.seed)
        self.unet = channels_last(build_unet(cfg, space.channels).to(device), device)
        self.ema = (AveragedModel(self.unet, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay))
                    if cfg.ema_decay > 0 else None)
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=cfg.lr, **fused(device))
        # The network the step calls: compiled on CUDA (eager on failure), the UNet itself on CPU.
        self.step_model = maybe_compile(self.unet, device)
        self.scheduler = build_train_scheduler(cfg)
        self.inferer = DiffusionInferer(self.scheduler)
        self.augment = BatchAugment(cfg.augmentation, self.gen)
        self.train_images = train.to(device)
        # Without augmentation the encoded training set never changes: encode it once.
        self.latents = space.encode(self.train_images) if self.augment.is_identity else None

    def modules(self) -> dict:
        mods = {"unet": self.unet, "opt": self.opt}
        return mods if self.ema is None else {**mods, "ema": self.ema}

    def denoiser(self) -> torch.nn.Module:
        """The network that samples: the EMA weights when EMA is on."""
        return self.ema.module if self.ema is not None else self.unet

    def train_step(self) -> torch.Tensor:
        cfg = self.cfg
        if self.latents is not None:
            z = _batch(self.latents, cfg.batch_size, self.gen)
        else:
            z = self.space.encode(self.augment(_batch(self.train_images, cfg.batch_size, self.gen)))
        # Noise and timesteps come from the CPU generator on every device, so a seed means the
        # same draws on a CPU and a GPU (a small host-to-device copy per step).
        noise = torch.randn(z.shape, generator=self.gen).to(self.device)
        t = torch.randint(0, cfg.num_train_timesteps, (z.shape[0],), generator=self.gen).to(self.device)
        z, noise = channels_last(z, self.device), channels_last(noise, self.device)
        with _autocast(self.device):
            pred = self.inferer(inputs=z, diffusion_model=self.step_model, noise=noise, timesteps=t)
        loss = F.mse_loss(pred.float(), diffusion_target(self.scheduler, z, noise, t).float())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.ema is not None:
            self.ema.update_parameters(self.unet)
        return loss.detach()  # a tensor: reading it (float) would make a GPU wait every step

    @timed("sample")
    @torch.no_grad()
    def sample(self, n: int, seed: int, batch_size: int = 256) -> torch.Tensor:
        cfg, unet = self.cfg, self.denoiser().eval()
        scheduler = build_sample_scheduler(cfg)
        inferer = DiffusionInferer(scheduler)
        size = cfg.image_size // self.space.downsample
        if cfg.spatial_dims == 3:  # decoding volumes is ~image_size x heavier: smaller batches
            batch_size = min(batch_size, 32)
        gen, out = torch.Generator().manual_seed(seed), []
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            shape = (m, self.space.channels) + (size,) * cfg.spatial_dims  # slices or volumes
            noise = torch.randn(shape, generator=gen).to(self.device)
            with _autocast(self.device):
                z = inferer.sample(input_noise=noise, diffusion_model=unet, scheduler=scheduler,
                                   verbose=False)
            out.append(self.space.decode(z.float()).float().clamp(0, 1).cpu())
        return torch.cat(out)


class GANTraining(CheckpointedTraining):
    """A small DCGAN-style GAN from MONAI's ``Generator`` and ``Discriminator``.

    Non-saturating loss with Adam(2e-4, betas 0.5/0.999), the settings that keep small GANs
    stable. Augmentation is applied to the real images the discriminator sees.
    """

    stage = "gan"
    z_dim = 64

    def __init__(self, cfg: RunConfig, train: torch.Tensor, device: str, run_dir: Path):
        super().__init__(cfg, device, run_dir)
        torch.manual_seed(cfg.seed)
        self.G, self.D = (m.to(device) for m in build_gan(cfg, self.z_dim))
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.augment = BatchAugment(cfg.augmentation, self.gen)
        self.train_images = train.to(device)

    def modules(self) -> dict:
        return {"G": self.G, "D": self.D, "opt_g": self.opt_g, "opt_d": self.opt_d}

    def _fake(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.sigmoid(self.G(torch.randn(n, self.z_dim, generator=gen).to(self.device)))

    def train_step(self) -> torch.Tensor:
        real = self.augment(_batch(self.train_images, self.cfg.batch_size, self.gen))
        fake = self._fake(len(real), self.gen)
        ones, zeros = torch.ones(len(real), 1, device=self.device), torch.zeros(len(real), 1, device=self.device)
        d_loss = (F.binary_cross_entropy_with_logits(self.D(real), ones)
                  + F.binary_cross_entropy_with_logits(self.D(fake.detach()), zeros))
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        g_loss = F.binary_cross_entropy_with_logits(self.D(fake), ones)
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        return g_loss.detach()

    @timed("sample")
    @torch.no_grad()
    def sample(self, n: int, seed: int) -> torch.Tensor:
        self.G.eval()
        return self._fake(n, torch.Generator().manual_seed(seed)).float().cpu()


class AutoencoderPrior:
    """The autoencoder alone as a generator: decode draws from its latent prior.

    With the tiny KL weight of latent diffusion the posterior does not match N(0, I), so the
    prior is a diagonal Gaussian fitted to the training latents (per latent element). Measured
    once, at the end of stage 1 (step = ae_steps).
    """

    def __init__(self, cfg: RunConfig, ae: Autoencoder, train: torch.Tensor, device: str):
        self.cfg, self.space, self.device = cfg, ae, device
        z = ae.encode(train.to(device))
        self.mean, self.std = z.mean(0), z.std(0)

    def run(self, on_checkpoint, progress: bool = True) -> None:
        with part("evaluate"):
            on_checkpoint(self.cfg.ae_steps, self)

    @timed("sample")
    @torch.no_grad()
    def sample(self, n: int, seed: int) -> torch.Tensor:
        eps = torch.randn((n, *self.mean.shape), generator=torch.Generator().manual_seed(seed))
        z = self.mean + self.std * eps.to(self.device)
        return self.space.decode(z).float().clamp(0, 1).cpu()


def make_training(cfg: RunConfig, train: torch.Tensor, device: str, run_dir: Path,
                  progress: bool = True):
    """The trainer of ``cfg.model``; each has ``run(on_checkpoint)`` and ``sample(n, seed)``."""
    if cfg.model == "gan":
        return GANTraining(cfg, train, device, run_dir)
    if cfg.model == "pixel_dm":
        return DiffusionTraining(cfg, PixelSpace(), train, device, run_dir)
    if cfg.model == "autoencoder":  # the autoencoder is the generator: always its own
        with part("stage1"):
            ae = train_autoencoder(cfg, train, device, run_dir, progress)
        return AutoencoderPrior(cfg, ae, train, device)
    with part("stage1"):
        if cfg.loads_shared_stage1:  # trained once on reference patients, cached
            ae, _ = shared_autoencoder(cfg, device, progress)
        else:
            ae = train_autoencoder(cfg, train, device, run_dir, progress)
    if cfg.model.startswith("control_"):  # no training: known answers for the rulers
        from .controls import make_control

        return make_control(cfg, ae, train, device)
    return DiffusionTraining(cfg, ae, train, device, run_dir)

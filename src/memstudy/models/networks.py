"""The latent diffusion model, assembled from MONAI parts.

Stage 1 is MONAI's ``AutoencoderKL`` (images <-> small latent images); stage 2 is MONAI's
``DiffusionModelUNet`` trained with DDPM noise on those latents and sampled with DDIM. The size
presets are the "model size" axis of the ablation grid.
"""

from __future__ import annotations

import torch
from monai.networks.nets import (AutoencoderKL, Discriminator, DiffusionModelUNet, Generator,
                                 PatchDiscriminator)
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from ..config import RunConfig

NORM_GROUPS = 8  # GroupNorm groups; divides every width used below

# Latent UNet presets: widths per level, which levels use self-attention, res blocks per level.
# The number of parameters is printed by `memstudy.models.networks.describe`; the book's methods chapter
# lists them.
UNET_PRESETS: dict[str, dict] = {
    "XS": dict(channels=(16, 32), attention_levels=(False, False), num_res_blocks=1),
    "S": dict(channels=(32, 64, 64), attention_levels=(False, False, False), num_res_blocks=1),
    "M": dict(channels=(64, 128, 128), attention_levels=(False, False, True), num_res_blocks=1),
    "L": dict(channels=(128, 256, 256), attention_levels=(False, True, True), num_res_blocks=2),
}

# Noise schedules: latent models use the scaled-linear betas of MONAI's latent diffusion
# tutorials; pixel-space models the linear betas of DDPM (Ho et al.; MONAI's default). The
# latent schedule leaves visible noise in pixel-space samples.
LATENT_SCHEDULE = dict(schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195)
PIXEL_SCHEDULE = dict(schedule="linear_beta", beta_start=1e-4, beta_end=0.02)


def noise_schedule(cfg: RunConfig) -> dict:
    return PIXEL_SCHEDULE if cfg.model == "pixel_dm" else LATENT_SCHEDULE


def build_autoencoder(cfg: RunConfig) -> AutoencoderKL:
    """Stage 1: a KL-regularised autoencoder; downsamples by 2**(len(ae_channels) - 1)."""
    levels = len(cfg.ae_channels)
    return AutoencoderKL(
        spatial_dims=cfg.spatial_dims, in_channels=1, out_channels=1, channels=cfg.ae_channels,
        latent_channels=cfg.latent_channels, num_res_blocks=1,
        attention_levels=(False,) * levels, norm_num_groups=NORM_GROUPS,
        with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False,
    )


def build_discriminator(spatial_dims: int = 2) -> PatchDiscriminator:
    """Optional adversarial partner of the autoencoder (used when adversarial_weight > 0)."""
    return PatchDiscriminator(spatial_dims=spatial_dims, num_layers_d=2, channels=32, in_channels=1,
                              out_channels=1, norm="INSTANCE")


def build_unet(cfg: RunConfig, channels: int | None = None) -> DiffusionModelUNet:
    """The denoising UNet, sized by ``cfg.unet_preset``, on ``channels``-channel inputs
    (the latent channels for latent diffusion, 1 for pixel-space diffusion)."""
    preset = UNET_PRESETS[cfg.unet_preset]
    channels = channels or cfg.latent_channels
    return DiffusionModelUNet(
        spatial_dims=cfg.spatial_dims, in_channels=channels, out_channels=channels,
        norm_num_groups=NORM_GROUPS, num_head_channels=preset["channels"][-1], **preset,
    )


def build_train_scheduler(cfg: RunConfig) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps,
                         prediction_type=cfg.prediction_type, **noise_schedule(cfg))


def diffusion_target(scheduler, x0: torch.Tensor, noise: torch.Tensor,
                     t: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to output for ``x0`` noised with ``noise`` at steps ``t``:
    the noise itself, the clean sample, or the velocity, by the scheduler's ``prediction_type``."""
    kind = getattr(scheduler, "prediction_type", "epsilon")
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    raise ValueError(f"unknown prediction_type {kind!r} of the scheduler")


def build_sample_scheduler(cfg: RunConfig) -> DDIMScheduler:
    # Clip predictions to [-1, 1] only in pixel space: latents have no fixed range.
    sched = DDIMScheduler(num_train_timesteps=cfg.num_train_timesteps,
                          clip_sample=cfg.model == "pixel_dm",
                          prediction_type=cfg.prediction_type, **noise_schedule(cfg))
    sched.set_timesteps(cfg.ddim_steps)
    return sched


def build_gan(cfg: RunConfig, z_dim: int) -> tuple[Generator, Discriminator]:
    """Generator and discriminator for the GAN family; widths follow ``cfg.unet_preset``."""
    w = UNET_PRESETS[cfg.unet_preset]["channels"][0]
    start = cfg.image_size // 4
    gen = Generator(latent_shape=(z_dim,), start_shape=(4 * w, start, start),
                    channels=(2 * w, w, 1), strides=(2, 2, 1), num_res_units=1)
    disc = Discriminator(in_shape=(1, cfg.image_size, cfg.image_size), channels=(w, 2 * w, 4 * w),
                         strides=(2, 2, 2), num_res_units=1, dropout=0.25, last_act=None)
    return gen, disc


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe() -> dict[str, int]:
    """Parameter count of each UNet preset (for the methods chapter's table)."""
    base = RunConfig()
    return {name: n_params(build_unet(base.replace(unet_preset=name))) for name in UNET_PRESETS}

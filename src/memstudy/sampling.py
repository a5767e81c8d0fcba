"""Drawing the synthetic set: DDIM in latent space, then the autoencoder's decoder."""

from __future__ import annotations

import torch
from monai.inferers import LatentDiffusionInferer

from .config import RunConfig
from .models import build_sample_scheduler
from .train import Autoencoder, _autocast


@torch.no_grad()
def sample_ldm(cfg: RunConfig, ae: Autoencoder, unet: torch.nn.Module, n: int, seed: int,
               device: str, batch_size: int = 256) -> torch.Tensor:
    """Draw ``n`` images in [0, 1] with DDIM; the noise comes from ``seed`` alone.

    Seeding sampling separately from training means the synthetic set of a checkpoint does
    not depend on whether training was resumed.
    """
    scheduler = build_sample_scheduler(cfg)
    inferer = LatentDiffusionInferer(scheduler, scale_factor=ae.scale_factor)
    latent_size = cfg.image_size // 2 ** (len(cfg.ae_channels) - 1)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        noise = torch.randn((m, cfg.latent_channels, latent_size, latent_size), generator=gen)
        with _autocast(device):
            x = inferer.sample(input_noise=noise.to(device), autoencoder_model=ae.model,
                               diffusion_model=unet, scheduler=scheduler, verbose=False)
        out.append(x.float().clamp(0, 1).cpu())
    return torch.cat(out)

"""Membership inference: can an attacker tell training images from new ones by the model's loss?

Copy detection asks whether the *samples* reproduce training images. Membership inference asks
the model directly: a diffusion model that has memorized an image denoises it better than an
image it never saw, so a low denoising loss says "member". The attack here is the simplest
one, loss thresholding (Yeom et al.; for diffusion models Matsumoto et al., Carlini et al.):

1. :func:`denoising_losses` scores every image by its mean denoising error over a fixed set of
   timesteps, with noise drawn from a fixed seed, so members and non-members are scored under
   exactly the same conditions;
2. :func:`attack` compares the scores of training images (members) with those of held-out
   images (non-members) as a ROC curve: AUC 0.5 means the attacker learns nothing. As LiRA
   (Carlini et al., "Membership inference attacks from first principles") recommends, it also
   reports the true-positive rate at a low false-positive rate (1 %), which says whether *some*
   members are exposed with confidence, something an average like AUC hides.

The functions only need a callable ``model(x_t, t) -> prediction`` and a MONAI-style scheduler
(``add_noise``, ``prediction_type``, ``get_velocity``), so they work for pixel-space models
(pass images) and latent models alike (encode the images first and pass the latents,
multiplied by the autoencoder's scale factor as in training).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from ..models.networks import diffusion_target

TIMESTEPS = (50, 100, 200, 400)  # low and middle noise levels: where an image's details matter


@torch.no_grad()
def denoising_losses(unet: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scheduler,
                     latents: torch.Tensor, timesteps: Sequence[int] = TIMESTEPS, seed: int = 0,
                     batch: int = 64, device: str | torch.device | None = None) -> torch.Tensor:
    """Mean denoising MSE of each sample over fixed timesteps and fixed noise.

    Parameters
    ----------
    unet : callable ``unet(x_t, t)`` returning the model's prediction for a batch (a MONAI
        ``DiffusionModelUNet`` works as is; wrap a conditional model in a lambda).
    scheduler : the training noise scheduler (MONAI ``DDPMScheduler``); its ``prediction_type``
        decides the target: the noise (``"epsilon"``), the clean sample (``"sample"``) or the
        velocity (``"v_prediction"``).
    latents : (N, C, ...) what the model was trained on: images for a pixel-space model, scaled
        latents for a latent one.
    timesteps : noise levels to average over.
    seed : seeds the noise. The noise of sample ``i`` at timestep ``t`` depends only on ``seed``,
        ``i`` and ``t`` (not on ``batch``), so two sets scored with one seed face the same draws.
    batch : samples per forward pass.
    device : where the model runs (default: where its parameters are, else the latents').

    Returns
    -------
    torch.Tensor
        (N,) loss of each sample, on the CPU: lower = better denoised = more member-like.
    """
    if device is None:
        params = list(getattr(unet, "parameters", lambda: [])())
        device = params[0].device if params else latents.device
    if hasattr(unet, "eval"):
        unet.eval()
    gen = torch.Generator().manual_seed(seed)
    x0_all = latents.float()
    total = torch.zeros(len(x0_all))
    for t_value in timesteps:
        # One noise tensor per timestep for the whole set, drawn on the CPU in a fixed order.
        noise_all = torch.randn(x0_all.shape, generator=gen)
        for start in range(0, len(x0_all), batch):
            x0 = x0_all[start:start + batch].to(device)
            noise = noise_all[start:start + batch].to(device)
            t = torch.full((len(x0),), int(t_value), dtype=torch.long, device=device)
            x_t = scheduler.add_noise(original_samples=x0, noise=noise, timesteps=t)
            target = diffusion_target(scheduler, x0, noise, t)
            pred = unet(x_t, t).float()
            err = (pred - target).pow(2).reshape(len(x0), -1).mean(dim=1)
            total[start:start + len(x0)] += err.cpu()
    return total / len(timesteps)


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, max_fpr: float) -> float:
    """Highest true-positive rate of a ROC curve whose false-positive rate is at most ``max_fpr``.

    With N non-members the smallest non-zero FPR is 1/N: below 100 held-out images, "1 % FPR"
    means "no false positive at all", which is the honest reading of a small set.
    """
    ok = fpr <= max_fpr + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def attack(train_scores: np.ndarray | torch.Tensor,
           holdout_scores: np.ndarray | torch.Tensor) -> dict[str, float | int]:
    """Loss-threshold membership inference: training images are members, held-out are not.

    Parameters
    ----------
    train_scores, holdout_scores : per-sample losses (e.g. from :func:`denoising_losses`);
        lower = more member-like.

    Returns
    -------
    dict
        ``auc`` (0.5 = chance, 1 = every member has a lower loss than every non-member),
        ``tpr_at_1pct_fpr`` and ``tpr_at_10pct_fpr`` (members found when at most 1 % / 10 % of
        non-members are wrongly accused), ``n_members`` and ``n_nonmembers``.
    """
    members = np.asarray(train_scores, dtype=np.float64).ravel()
    nonmembers = np.asarray(holdout_scores, dtype=np.float64).ravel()
    if members.size == 0 or nonmembers.size == 0:
        raise ValueError("attack needs at least one member and one non-member score")
    labels = np.r_[np.ones(members.size), np.zeros(nonmembers.size)]
    decision = -np.r_[members, nonmembers]  # the ROC convention: higher = "member"
    fpr, tpr, _ = roc_curve(labels, decision)
    return {"auc": float(roc_auc_score(labels, decision)),
            "tpr_at_1pct_fpr": tpr_at_fpr(fpr, tpr, 0.01),
            "tpr_at_10pct_fpr": tpr_at_fpr(fpr, tpr, 0.10),
            "n_members": int(members.size), "n_nonmembers": int(nonmembers.size)}


def membership_inference(unet, scheduler, train_latents: torch.Tensor,
                         holdout_latents: torch.Tensor, timesteps: Sequence[int] = TIMESTEPS,
                         seed: int = 0, batch: int = 64) -> dict[str, float | int]:
    """Both steps at once: score training and held-out samples with one seed, then attack."""
    members = denoising_losses(unet, scheduler, train_latents, timesteps, seed, batch)
    nonmembers = denoising_losses(unet, scheduler, holdout_latents, timesteps, seed, batch)
    return attack(members.numpy(), nonmembers.numpy())

"""Loss-based membership inference: chance for a model that learned nothing, certainty for one
that memorized its training set."""

import numpy as np
import pytest
import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDPMScheduler

from memstudy.data.cohort import make_cohort
from memstudy.metrics.membership import attack, denoising_losses, membership_inference, tpr_at_fpr


@pytest.fixture(scope="module")
def images():
    """Two disjoint sets of 48 slices each, from one distribution (16 px, scaled to [-1, 1])."""
    x = torch.from_numpy(make_cohort(24, 16, 4, seed=0).images) * 2 - 1
    return x[:48], x[48:]


@pytest.fixture(scope="module")
def scheduler():
    return DDPMScheduler(num_train_timesteps=1000)


def tiny_unet() -> DiffusionModelUNet:
    """An untrained UNet whose prediction depends on its input.

    MONAI zero-initialises the last convolution of each block, so a fresh UNet predicts 0
    whatever the image, every loss would be the noise's own energy and the test would pass by
    ties. Random weights everywhere make the loss a (meaningless) function of the image.
    """
    torch.manual_seed(0)
    unet = DiffusionModelUNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(8, 16),
                              attention_levels=(False, False), num_res_blocks=1,
                              norm_num_groups=8)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet


class Memorizer(torch.nn.Module):
    """An oracle that memorized ``bank``: it explains x_t by the stored image that needs the
    least noise, and predicts that noise. Exact for members at low noise, wrong for others."""

    def __init__(self, bank: torch.Tensor, scheduler: DDPMScheduler):
        super().__init__()
        self.bank, self.alpha_bar = bank, scheduler.alphas_cumprod

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.alpha_bar[t].view(-1, 1, 1, 1, 1)
        eps = (x_t[:, None] - ab.sqrt() * self.bank[None]) / (1 - ab).sqrt()  # (B, M, C, H, W)
        best = eps.flatten(2).pow(2).sum(2).argmin(1)
        return eps[torch.arange(len(x_t)), best]


def test_untrained_model_cannot_tell_members_from_non_members(images, scheduler):
    train, holdout = images
    unet = tiny_unet()
    members = denoising_losses(unet, scheduler, train, seed=0, batch=32)
    assert members.std() > 1e-3 * members.mean(), "losses must vary, or AUC = 0.5 by ties"
    result = membership_inference(unet, scheduler, train, holdout, seed=0, batch=32)
    assert result["auc"] == pytest.approx(0.5, abs=0.15)
    assert result["n_members"] == 48 and result["n_nonmembers"] == 48


def test_a_memorizing_model_exposes_every_member(images, scheduler):
    train, holdout = images
    model = Memorizer(train, scheduler)
    members = denoising_losses(model, scheduler, train, seed=1)
    outsiders = denoising_losses(model, scheduler, holdout, seed=1)
    assert members.max() < outsiders.min()
    result = attack(members, outsiders)
    assert result["auc"] == pytest.approx(1.0)
    assert result["tpr_at_1pct_fpr"] == pytest.approx(1.0)


def test_losses_are_seeded_and_do_not_depend_on_the_batch_size(images, scheduler):
    train, _ = images
    unet = tiny_unet()
    a = denoising_losses(unet, scheduler, train[:10], timesteps=(50, 400), seed=5, batch=3)
    b = denoising_losses(unet, scheduler, train[:10], timesteps=(50, 400), seed=5, batch=10)
    c = denoising_losses(unet, scheduler, train[:10], timesteps=(50, 400), seed=6, batch=10)
    assert a.shape == (10,)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a, c)


def test_attack_on_hand_built_scores():
    members = np.array([0.1, 0.2, 0.3, 0.9])
    outsiders = np.array([0.5, 0.6, 0.7, 0.8])
    result = attack(members, outsiders)
    assert result["auc"] == pytest.approx(12 / 16)  # 3 members below all 4 outsiders
    assert result["tpr_at_1pct_fpr"] == pytest.approx(3 / 4)  # found with no false positive
    assert attack(outsiders, members)["auc"] == pytest.approx(4 / 16)


def test_tpr_at_fpr_reads_the_curve_at_or_below_the_rate():
    fpr, tpr = np.array([0.0, 0.005, 0.02, 1.0]), np.array([0.0, 0.3, 0.6, 1.0])
    assert tpr_at_fpr(fpr, tpr, 0.01) == 0.3
    assert tpr_at_fpr(fpr, tpr, 0.10) == 0.6

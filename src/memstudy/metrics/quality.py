"""Image quality and diversity beside memorization: a model that copies nothing may simply be
drawing blobs, and one that draws perfect images may be drawing its training set.

- **Fréchet distance on in-domain features** (MONAI ``FIDMetric``) between a synthetic set and
  held-out real slices. This is *not* Inception-FID: Inception weights cannot be downloaded
  here, and an ImageNet network is a poor judge of MRI anyway. The features come from one
  contrastive encoder trained on the *test-split* patients — disjoint from every model's
  training and holdout data — and cached under a key of everything that defines it, so every
  cell of a preset is measured with the same ruler.
- **MS-SSIM diversity** (MONAI ``MultiScaleSSIMMetric``): mean MS-SSIM over random pairs of a
  set; lower means more diverse. The same number for real held-out slices is the reference.
"""

from __future__ import annotations

from pathlib import Path

import torch
from monai.metrics import FIDMetric, MultiScaleSSIMMetric

from ..config import RunConfig
from ..data.sets import patient_slices, patient_split
from ..detect.contrastive import ContrastiveDetector
from ..models.shared import locked
from ..runio import cache_file
from ..timing import timed

FEATURE_PATIENTS = 64  # reference-share patients (never a cell's) the feature encoder learns from
FEATURE_STEPS = 200
PAIRS = 256  # random pairs for MS-SSIM diversity


@timed("quality_ruler")
def feature_encoder(cfg: RunConfig, device: str, cache_dir: Path | None = None) -> ContrastiveDetector:
    """The shared in-domain feature network, trained once per key (``runio.cache_file``):
    data set, pool, image size, the patients it learns from and its budget.
    ``cache_dir`` overrides where the file goes (the key still names it)."""
    key = {"dataset": cfg.dataset, "data_seed": cfg.data_seed, "image_size": cfg.image_size,
           "slices_per_patient": cfg.slices_per_patient, "cohort_patients": cfg.cohort_patients,
           "patients": FEATURE_PATIENTS, "steps": FEATURE_STEPS, "dim": 64, "batch_size": 32,
           "seed": 0, "device_type": "cuda" if device.startswith("cuda") else "cpu"}
    cache = cache_file("fd_encoder", key, ".pt")
    if cache_dir is not None:
        cache = Path(cache_dir) / cache.name
    encoder = ContrastiveDetector(dim=64, steps=FEATURE_STEPS, batch_size=32, seed=0, device=device,
                                  cache=cache)
    with locked(cache.with_suffix(".lock")):  # two cells starting at once train it once
        if cache.exists():  # trained by an earlier cell: its training slices are not needed
            return encoder.fit(None)
        if cfg.dataset != "cohort":  # a real data set: its own reference share, never the cohort
            from ..data.sets import share_slices

            return encoder.fit(torch.from_numpy(share_slices(
                cfg, "reference", FEATURE_PATIENTS * cfg.slices_per_patient, by_seed=False, up_to=True).images))
        ids = patient_split(cfg)["reference"][:FEATURE_PATIENTS]
        return encoder.fit(torch.from_numpy(patient_slices(ids, cfg).images))


@timed("quality")
def frechet_distance(encoder: ContrastiveDetector, gen: torch.Tensor, real: torch.Tensor) -> float:
    """Fréchet distance between the feature distributions of two image sets."""
    return float(FIDMetric()(encoder.embed(gen).double(), encoder.embed(real).double()))


@timed("quality")
def ms_ssim_diversity(images: torch.Tensor, seed: int = 0, pairs: int = PAIRS) -> float:
    """Mean MS-SSIM over random distinct pairs; fewer scales for small images."""
    n = len(images)
    if n < 2:
        return float("nan")
    scales = 3 if images.shape[-1] < 64 else 4
    metric = MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, kernel_size=3,
                                  weights=(1 / scales,) * scales)
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(0, n, (pairs,), generator=g)
    j = (i + torch.randint(1, n, (pairs,), generator=g)) % n  # never a pair of one image
    return float(metric(images[i].float(), images[j].float()).mean())


def feature_mmd(encoder: ContrastiveDetector, gen: torch.Tensor, real: torch.Tensor,
                n_boot: int = 500, seed: int = 0) -> dict[str, float]:
    """Unbiased squared MMD (MONAI ``MMDMetric``, linear kernel) between in-domain features of
    two image sets, with a 95 % bootstrap interval over the samples of both sets.

    Unlike the Fréchet distance, whose estimate from 64 samples of 64-d features is dominated by
    the bias of singular covariances, the unbiased MMD is centred on its true value at any
    sample size: 0 means the two feature means agree, and its interval says how well the sample
    pins that down. Both sets are cut to the smaller one's size (MONAI needs equal counts).
    In a bootstrap resample a drawn sample may repeat; pairs of a sample with a copy of itself
    are left out, as the unbiased estimator leaves out the diagonal.
    """
    from monai.metrics import MMDMetric

    n = min(len(gen), len(real))
    f_gen, f_real = encoder.embed(gen[:n]).double().cpu(), encoder.embed(real[:n]).double().cpu()
    value = float(MMDMetric()(f_real, f_gen))
    k_rr, k_gg, k_gr = f_real @ f_real.T, f_gen @ f_gen.T, f_gen @ f_real.T
    g = torch.Generator().manual_seed(seed)
    i_r = torch.randint(0, n, (n_boot, n), generator=g)
    i_g = torch.randint(0, n, (n_boot, n), generator=g)

    def within(k, idx):  # mean kernel over pairs of distinct draws, per resample
        sub = k[idx[:, :, None], idx[:, None, :]]
        keep = idx[:, :, None] != idx[:, None, :]
        return (sub * keep).sum((1, 2)) / keep.sum((1, 2))

    draws = (within(k_rr, i_r) + within(k_gg, i_g)
             - 2 * k_gr[i_g[:, :, None], i_r[:, None, :]].mean((1, 2)))
    lo, hi = torch.quantile(draws, torch.tensor([0.025, 0.975], dtype=draws.dtype)).tolist()
    return {"mmd": value, "mmd_lo": lo, "mmd_hi": hi}

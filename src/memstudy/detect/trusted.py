"""The trusted copy detector: one contrastive encoder per data pool, trained on patients no
cell ever sees, taught to ignore what generators change, cached and shared by every cell.

Why not Dar et al.'s encoder (``contrastive``, kept as it was)? It is trained per cell on the
8-1,024 training images only, so it may tell them apart by shortcuts (the head outline, a
patient's gain and noise), its views cover only +-5 degrees and flips, and its quality changes
along the dataset-size axis because its training set does. This one:

- learns from patients no cell ever draws: the pool's **reference** share
  (:data:`memstudy.config.SPLITS`), topped up to 1,000 patients with generated patients whose
  ids lie beyond every pool (:data:`memstudy.config.DETECTOR_POOL_FIRST_ID`), several slices
  each, so it never saw a training, holdout or test patient of any cell. (A real data set gives
  its own reference share, as many patients as it holds: no generated patient looks like its
  images.) Ninety patients (the
  reference share of a 600-patient pool) were too few: the encoder learned their outlines, and
  copies warped or decoded beyond what it had seen looked like other patients to it (GPU sweep
  of 2026-12-04 on the planted-copy benchmark, 3 seeds, 2,000 steps, 90 -> 1,000 patients: at
  32 px elastic recall 72 -> 83 %, decoded 21 -> 43 %, AUC 0.966 -> 0.975; at 64 px elastic
  59 -> 77 %, AUC 0.988 -> 0.994; 3,000 patients bought nothing more);
- uses the positive views of :mod:`.views` (shifts, rotations, flips, intensity / contrast /
  gamma, noise, blur, elastic warps and an autoencoder round trip), with a clean anchor;
- is trained once per :class:`TrustedSpec` (data set, image size, pool seed, budget) and cached
  under a key of all of it (:func:`memstudy.runio.cache_file`), so every cell of a grid is
  judged by the same ruler and a changed budget is a new file, never a stale one.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..runio import cache_file, save_atomic
from .base import Detector
from .contrastive import nt_xent
from .views import PositiveView, ViewSpec, round_trip

BACKBONES = ("small", "resnet10", "resnet18")
CACHE_VERSION = 5  # bump when the training procedure changes, so old encoders are not reused
AE_VERSION = 3  # the same for the view autoencoder (its own key)
# The views decode with the view autoencoder at each of these fractions of its steps: an
# autoencoder stopped early decodes blurrier, and a generator's stage 1 may be anywhere on that
# path. (With only 90 reference patients the quarter-trained snapshot collapsed the embedding;
# with 1,000 it does not: GPU sweep of 2026-12-04, 3 seeds, 64 px decoded recall 100 % either way,
# AUC 0.996 with it against 0.994 without.)
AE_SNAPSHOTS = (0.25, 0.5, 1.0)
# The round-trip autoencoder needs no more steps than this, whatever the encoder's budget (it
# was tied to the encoder's steps once, and 2,000 steps of it bought nothing).
AE_STEPS = 400


_ADDED_FIELDS = {"pool": "", "random_contrast": 0.0}  # TrustedSpec fields newer than the key


@dataclass(frozen=True)
class TrustedSpec:
    """Everything the trusted encoder depends on; its fields are the cache key."""

    dataset: str = "cohort"  # the generated cohort, or a real 2D data set (its reference share)
    image_size: int = 32
    data_seed: int = 0  # the pool: its anatomy and its patient split
    cohort_patients: int = 600  # pool size; the reference share is SPLIT_FRACTIONS of it
    patients: int = 1000  # reference patients: the share, topped up beyond the pool's ids
    slices: int = 8  # slices of each reference patient (heights spread over the head)
    steps: int = 2000  # optimisation steps of the encoder (the budget). 4,000 on CPU (32 px,
    #                    3 seeds, 2026-12-05): AUC 0.972 -> 0.974, decoded 38 -> 47 % (within
    #                    its interval), elastic 90 % either way, for twice the 21 CPU-minutes
    batch_size: int = 256  # pairs per step: 2 * batch_size - 2 negatives for each view
    backbone: str = "small"  # one of BACKBONES (MONAI ResNets, no pretrained weights)
    dim: int = 128  # embedding size
    lr: float = 1e-3
    temperature: float = 0.1
    ae_steps: int = 400  # the round-trip autoencoder's steps (0: no decoded views)
    seed: int = 0  # initialisation and batches
    views: ViewSpec = field(default_factory=ViewSpec)
    pool: str = ""  # a real data set's reference share, as memstudy.data.sets.share_fingerprint
    #                 (its patients and files): another folder's share is another encoder
    random_contrast: float = 0.0  # share of the generated reference patients rendered in a
    #                 contrast of their own (memstudy.data.phantom.CONTRASTS), so that the
    #                 encoder learns anatomy rather than one table of tissue intensities.
    #                 Off: at 0.5 (CPU, 32 px, 3 seeds, 2026-12-05) the AUC on T1-like
    #                 benchmark patients rose 0.911 -> 0.942 (shifted copies 89 -> 99 %,
    #                 elastic 16 -> 33 %), on FLAIR-like fell 0.957 -> 0.947, and on the
    #                 study's own T2 stayed 0.972 -> 0.970 while the novel FPR at tau went
    #                 8.1 -> 16.4 %: no better ruler for the study, a mixed one elsewhere

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone={self.backbone!r} is not one of {', '.join(BACKBONES)}")
        from ..config import check_pool_size

        check_pool_size(self.cohort_patients)
        if (self.image_size < 16 or self.steps < 1 or self.batch_size < 2 or self.patients < 1
                or self.slices < 1 or not 0 <= self.random_contrast <= 1):
            raise ValueError(f"need image_size >= 16, steps >= 1, batch_size >= 2, patients >= 1, "
                             f"slices >= 1 and 0 <= random_contrast <= 1: {self}")

    @classmethod
    def with_budget(cls, steps: int, **fields) -> "TrustedSpec":
        """The spec of an encoder trained ``steps`` steps, its round-trip autoencoder at most
        :data:`AE_STEPS` (a tiny test budget keeps a tiny autoencoder)."""
        return cls(steps=steps, ae_steps=min(steps, AE_STEPS), **fields)

    def key(self) -> dict:
        """The cache key: every field, and the version of the training code.

        Fields added since the key's version (:data:`_ADDED_FIELDS`) count only when set,
        so the encoders cached before they existed keep their keys and files.
        """
        key = {**dataclasses.asdict(self), "version": CACHE_VERSION}
        for name, default in _ADDED_FIELDS.items():
            if key[name] == default:
                del key[name]
        return key


# --------------------------------------------------------------------------------------------
# Backbones
# --------------------------------------------------------------------------------------------


class SmallBackbone(nn.Module):
    """A strided stem to 16 x 16, four stages of two 3x3 convs (GroupNorm, SiLU), global average
    pooling and an MLP head.

    The stem's stride grows with the image (2 at 32 px, 4 at 64 px) so that a step costs the
    same at every size (about 0.35 s for 128 pairs on one CPU core); its kernel is twice the
    stride plus one, so that no pixel is skipped and a one-pixel shift changes the features
    smoothly rather than by aliasing.
    """

    def __init__(self, dim: int, image_size: int, width: int = 32):
        super().__init__()
        stride = max(1, image_size // 16)
        layers = [nn.Conv2d(1, width, 2 * stride + 1, stride=stride, padding=stride),
                  nn.GroupNorm(8, width), nn.SiLU()]
        c_in = width
        for i, c_out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=1 if i == 0 else 2, padding=1),
                       nn.GroupNorm(8, c_out), nn.SiLU(),
                       nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(c_in, c_in), nn.SiLU(), nn.Linear(c_in, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_backbone(name: str, dim: int, image_size: int) -> nn.Module:
    """A backbone by name: ``small`` or a MONAI ResNet (random init; nothing is downloaded)."""
    if name == "small":
        return SmallBackbone(dim, image_size)
    from monai.networks import nets

    # A 3x3 stem without max pooling keeps the small images' detail; GroupNorm rather than
    # BatchNorm, because batch statistics would leak between the views of one batch.
    return getattr(nets, name)(spatial_dims=2, n_input_channels=1, num_classes=dim,
                               conv1_t_size=3, conv1_t_stride=2 if image_size >= 64 else 1,
                               no_max_pool=True, norm=("group", {"num_groups": 8}))


# --------------------------------------------------------------------------------------------
# The reference pool and the round-trip autoencoder
# --------------------------------------------------------------------------------------------


def reference_patients(spec: TrustedSpec) -> np.ndarray:
    """Ids of the patients the encoder learns from: never a cell's train, holdout or test.

    The pool's reference share first, then, while fewer than ``spec.patients``, generated
    patients from :data:`~memstudy.config.DETECTOR_POOL_FIRST_ID` on, which no pool reaches
    (a :class:`~memstudy.config.RunConfig` refuses a pool that large).
    """
    from ..config import DETECTOR_POOL_FIRST_ID
    from ..data.splits import split_patients

    if spec.dataset != "cohort":
        raise ValueError(f"reference_patients numbers the generated cohort's patients; dataset="
                         f"{spec.dataset!r} is read from files: use reference_images(spec).")
    share = split_patients(np.arange(spec.cohort_patients), seed=spec.data_seed)["reference"]
    extra = np.arange(DETECTOR_POOL_FIRST_ID,
                      DETECTOR_POOL_FIRST_ID + max(0, spec.patients - len(share)))
    return np.concatenate([share, extra])[:spec.patients]


def reference_images(spec: TrustedSpec, root=None) -> torch.Tensor:
    """``spec.slices`` slices of every reference patient, (N, 1, H, W) in [0, 1].

    A real data set (read from ``root``, default ``$MEMSTUDY_DATA``) gives its own reference
    share, up to ``spec.patients`` patients: it cannot be topped up with generated patients,
    whose anatomy is not the data set's.
    """
    from ..data.cohort import make_cohort

    if spec.dataset != "cohort":
        return _real_reference_images(spec, root)
    ids = reference_patients(spec)
    # Patient j is drawn in a contrast of its own when the running count of
    # random_contrast * j steps up: that share, spread evenly over the list.
    steps_up = np.diff(np.floor(spec.random_contrast * np.arange(len(ids) + 1))) > 0
    contrast = np.where(steps_up, "random", "t2")
    parts = [make_cohort(1, spec.image_size, spec.slices, seed=spec.data_seed,
                         first_patient=int(p), contrast=str(c)).images
             for p, c in zip(ids, contrast)]
    return torch.from_numpy(np.concatenate(parts))


def _reader_config(spec: TrustedSpec):
    """The reader's settings for the reference slices of a real data set: the spec's data set,
    size and split seed, ``spec.slices`` images per patient spread over each volume."""
    from ..config import RunConfig

    return RunConfig(dataset=spec.dataset, image_size=spec.image_size, data_seed=spec.data_seed,
                     slices_per_patient=spec.slices, dataset_size=spec.slices,
                     holdout_size=spec.slices, detectors=("pixel",))


def _real_reference_images(spec: TrustedSpec, root) -> torch.Tensor:
    from ..data.readers import DataError
    from ..data.sets import share_fingerprint, share_slices

    cfg = _reader_config(spec)
    found = share_fingerprint(cfg, "reference", root)
    if spec.pool and found != spec.pool:  # the spec (and its cache key) names another share
        raise DataError(f"the reference share of {spec.dataset!r} in the data folder is not the "
                        f"one this TrustedSpec was made for (pool {spec.pool}, found {found}): "
                        "build the spec again with spec_for_config(cfg) for this folder.")
    images = share_slices(cfg, "reference", spec.patients * spec.slices, by_seed=False,
                          up_to=True, root=root)
    n = len(np.unique(images.patient_id))
    print(f"trusted encoder: {len(images)} images of {n} reference-share patients of "
          f"{spec.dataset!r}" + (f" (fewer than the {spec.patients} a cohort encoder learns from: "
                                 "its recall on changed copies may be lower)" if n < spec.patients
                                 else ""), file=sys.stderr)
    return torch.from_numpy(images.images)


def _autoencoder(device: str):
    from monai.networks.nets import AutoencoderKL

    return AutoencoderKL(spatial_dims=2, in_channels=1, out_channels=1, channels=(16, 32, 32),
                         latent_channels=3, num_res_blocks=1, attention_levels=(False,) * 3,
                         norm_num_groups=8, with_encoder_nonlocal_attn=False,
                         with_decoder_nonlocal_attn=False).to(device)


def train_round_trip_autoencoders(images: torch.Tensor, steps: int, seed: int,
                                  device: str = "cpu", batch_size: int = 16, cache=None,
                                  snapshots: tuple[float, ...] = (1.0,)
                                  ) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """A small MONAI ``AutoencoderKL`` (the cells' stage-1 design) trained on ``images``.

    Returns the round trip ``x -> decode(encode(x))`` (posterior mean) of the model at each
    fraction of ``steps`` in ``snapshots``: an autoencoder stopped early decodes blurrier,
    later ones sharper, and a generator's stage 1 may be anywhere on that path. Reconstructions
    are smoother than their sources, as a latent model's decoded copies are. Cached at
    ``cache`` (all snapshots in one file).
    """
    torch.manual_seed(seed)
    model = _autoencoder(device)
    marks = sorted({max(1, round(f * steps)) for f in snapshots})
    if cache is not None and cache.exists():
        states = torch.load(cache, map_location=device)
    else:
        states, gen = {}, torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        data = images.to(device)
        for step in range(1, max(marks) + 1):
            x = data[torch.randint(0, len(data), (batch_size,), generator=gen).to(device)]
            recon, mu, sigma = model(x)
            kl = 0.5 * (mu**2 + sigma**2 - torch.log(sigma**2 + 1e-8) - 1).mean()
            loss = F.l1_loss(recon, x) + 1e-6 * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step in marks:
                states[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if cache is not None:
            save_atomic(lambda p: torch.save(states, p), cache)

    def round_trip_of(state):
        snapshot = _autoencoder(device)
        snapshot.load_state_dict(state)
        snapshot.eval()

        @torch.no_grad()
        def decode(x: torch.Tensor) -> torch.Tensor:
            return snapshot.decode(snapshot.encode(x.to(device).float())[0]).cpu()
        return decode

    return [round_trip_of(states[max(1, round(f * steps))]) for f in snapshots]  # one per fraction


def train_round_trip_autoencoder(images: torch.Tensor, steps: int, seed: int,
                                 device: str = "cpu", batch_size: int = 16,
                                 cache=None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The round trip of one autoencoder trained for ``steps`` (see the plural version)."""
    return train_round_trip_autoencoders(images, steps, seed, device, batch_size, cache)[-1]


# --------------------------------------------------------------------------------------------
# The detector
# --------------------------------------------------------------------------------------------


class TrustedDetector(Detector):
    """Pearson correlation of embeddings from the shared, reference-trained encoder.

    Build it with :func:`trusted_detector`; ``fit`` does nothing, because the encoder never
    learns from a cell's training set (that is the point).
    """

    name = "trusted"

    def __init__(self, encoder: nn.Module, spec: TrustedSpec, device: str = "cpu"):
        self.encoder, self.spec, self.device = encoder.eval(), spec, device

    def fit(self, train: torch.Tensor | None = None) -> "TrustedDetector":
        return self

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.spec.image_size:
            raise ValueError(f"the trusted encoder was trained at {self.spec.image_size} px, "
                             f"got images of {tuple(images.shape[-2:])}")
        out = [self.encoder(images[i:i + 256].to(self.device).float()).cpu()
               for i in range(0, len(images), 256)]
        return torch.cat(out).float()


def train_trusted_encoder(spec: TrustedSpec, reference: torch.Tensor, device: str = "cpu",
                          progress: bool = False) -> tuple[nn.Module, list[float]]:
    """Train the encoder of ``spec`` on ``reference`` images (no caching); return it and losses."""
    torch.manual_seed(spec.seed)
    encoder = build_backbone(spec.backbone, spec.dim, spec.image_size).to(device)
    decoded = None
    if spec.ae_steps > 0 and spec.views.p_decode > 0:
        ae_key = {k: v for k, v in spec.key().items() if k in (
            "dataset", "image_size", "data_seed", "cohort_patients", "patients", "slices",
            "ae_steps", "seed", "pool", "random_contrast")}
        decoders = train_round_trip_autoencoders(
            reference, spec.ae_steps, spec.seed, device, snapshots=AE_SNAPSHOTS,
            cache=cache_file("trusted_round_trip_ae", {**ae_key, "version": AE_VERSION,
                                                       "snapshots": AE_SNAPSHOTS}))
        # (S, N, 1, H, W): every reference image through every snapshot, computed once
        decoded = torch.stack([round_trip(d, reference) for d in decoders]).to(device)
    gen = torch.Generator().manual_seed(spec.seed)
    view = PositiveView(spec.views, gen)
    opt = torch.optim.AdamW(encoder.parameters(), lr=spec.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, spec.lr, total_steps=spec.steps,
                                                pct_start=0.05)
    data = reference.to(device)
    batch = min(spec.batch_size, len(data))  # distinct images: a duplicate is a false negative
    losses, tic = [], time.perf_counter()
    encoder.train()
    for step in range(spec.steps):
        idx = torch.randperm(len(data), generator=gen)[:batch].to(device)
        x = data[idx]
        if decoded is not None:  # each image through a randomly chosen snapshot
            snap = torch.randint(0, len(decoded), (len(idx),), generator=gen).to(device)
            positive = view(x, decoded[snap, idx])
        else:
            positive = view(x)
        loss = nt_xent(encoder(x), encoder(positive), spec.temperature)  # clean anchor
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress and (step % 50 == 0 or step == spec.steps - 1):
            print(f"trusted encoder {step + 1}/{spec.steps}: loss {loss.item():.3f} "
                  f"({time.perf_counter() - tic:.0f} s)", file=sys.stderr)
    return encoder.eval(), losses


def spec_for_config(cfg, root=None) -> TrustedSpec:
    """The trusted encoder a :class:`~memstudy.config.RunConfig` asks for: one per pool, size and
    budget, the same for every cell and replicate seed of a grid (hence shared).

    For a real data set the pool is its reference share in ``root`` (default
    ``$MEMSTUDY_DATA``), fingerprinted so that another folder gets another encoder.
    """
    fields = {}
    if cfg.dataset != "cohort":
        from ..data.sets import share_fingerprint

        spec = TrustedSpec(dataset=cfg.dataset, image_size=cfg.image_size, data_seed=cfg.data_seed)
        fields["pool"] = share_fingerprint(_reader_config(spec), "reference", root)
    return TrustedSpec.with_budget(cfg.trusted_steps, dataset=cfg.dataset,
                                   image_size=cfg.image_size, data_seed=cfg.data_seed,
                                   cohort_patients=cfg.cohort_patients,
                                   backbone=cfg.trusted_backbone, dim=cfg.encoder_dim, **fields)


def trusted_detector(spec: TrustedSpec, device: str = "cpu", progress: bool = False,
                     reference: torch.Tensor | None = None, root=None) -> TrustedDetector:
    """The trusted detector of ``spec``: loaded from the cache, or trained once and cached.

    Parameters
    ----------
    spec : what the encoder depends on (its fields are the cache key).
    device : where to train and embed.
    reference : the images to learn from; default :func:`reference_images` of ``spec``.
        Only a test should pass its own.
    root : a real data set's folder (default ``$MEMSTUDY_DATA``), read only to train.
    """
    from ..models.shared import locked

    path = cache_file("trusted_encoder", spec.key())
    encoder = build_backbone(spec.backbone, spec.dim, spec.image_size).to(device)
    # Cells that start at once: the first trains, the others wait for the lock and then load.
    with locked(path.with_suffix(".lock")):
        if path.exists():  # trained by an earlier cell or benchmark: the pool is not generated
            encoder.load_state_dict(torch.load(path, map_location=device))
            return TrustedDetector(encoder, spec, device)
        reference = reference_images(spec, root) if reference is None else reference
        encoder, losses = train_trusted_encoder(spec, reference, device, progress)
        save_atomic(lambda p: torch.save(encoder.state_dict(), p), path)
    return TrustedDetector(encoder, spec, device)

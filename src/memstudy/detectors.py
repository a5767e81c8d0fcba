"""Copy detectors behind one interface, and the scoring that turns them into metrics.

Every detector answers one question: for each query image, which reference image is nearest,
and how similar is it ("higher = more copy-like")? :meth:`Detector.nearest` answers it in two
steps, so that each set is prepared once however many pairs of sets are searched:
``prepare`` turns images into whatever the detector compares (embeddings, pixels, the images
themselves) and ``search`` finds each query's nearest references among them. The default
``search`` is Pearson's r between vectors via :func:`memstudy.neighbors.nearest_neighbors`.

- ``pixel``: the raw pixels (Akbar et al.: correlation of each synthetic image with every
  training image);
- ``contrastive``: a small CNN trained with NT-Xent on the *training set only*, whose positive
  view is a rotation within +-5 degrees and/or a flip (Dar et al.). It is taught to tolerate
  exactly those changes; how it copes with others is measured by :mod:`memstudy.benchmark`;
- ``nn_ratio``: Gu et al.'s distance ratio in pixel space, with their fixed rule (a copy when
  the nearest neighbour is more than three times closer than the second nearest) instead of a
  threshold calibrated on held-out data;
- ``ssim``: the structural similarity index of each query with each reference (pairwise: SSIM
  is not an inner product of per-image vectors, so it gets its own chunked search);
- ``external``: any encoder the user provides as a local file (TorchScript or torch.export),
  e.g. an SSCD-style copy-detection network (Somepalli et al.), compared with Pearson's r
  like the others.

:func:`score` turns one detector into Dar et al.'s metrics (tau, memorized, copies);
:func:`patient_level` asks the patient-level question: does a synthetic slice sit closer to a
training patient than any held-out patient ever gets?
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import DETECTORS
from .augment import CONTRASTIVE_VIEW, BatchAugment
from .memorization import Memorization, memorization
from .neighbors import nearest_neighbors
from .runio import save_atomic


class Detector:
    """Base class: ``fit`` on the training set (if needed), then compare images.

    Subclasses that map each image to a vector implement ``embed`` and inherit the rest:
    similarity is then Pearson's r between vectors. A detector whose similarity is not an inner
    product of per-image vectors (SSIM, a distance ratio) overrides ``prepare`` and ``search``.

    Attributes
    ----------
    name : str
        The name used in configs, file names and tables.
    fixed_tau : float or None
        A detector with its own published decision rule sets it (a copy is ``sim > fixed_tau``);
        ``None`` means tau is calibrated on held-out data like Dar et al.'s.
    similarity : str
        What the similarity is, for axis labels.
    """

    name = "base"
    fixed_tau: float | None = None
    similarity = "Pearson r"

    def fit(self, train: torch.Tensor) -> "Detector":
        return self

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """What ``search`` compares: by default the embedding of each image."""
        return self.embed(images)

    @torch.no_grad()
    def search(self, query: torch.Tensor, ref: torch.Tensor,
               k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` most similar rows of prepared ``ref`` for each row of prepared ``query``.

        Returns
        -------
        values, indices : (Nq, k) tensors, most similar first.
        """
        return nearest_neighbors(query, ref, k=k, metric="pearson")

    @torch.no_grad()
    def nearest(self, query: torch.Tensor, ref: torch.Tensor,
                k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` most similar ``ref`` images of each ``query`` image (both (N, 1, H, W))."""
        return self.search(self.prepare(query), self.prepare(ref), k)


class PixelDetector(Detector):
    """Pearson correlation in pixel space (Akbar et al.)."""

    name = "pixel"

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return images.reshape(len(images), -1).float()


def nn_distance_ratio(query: torch.Tensor, ref: torch.Tensor,
                      chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gu et al.'s statistic: distance to the nearest reference over distance to the second.

    Distances are Euclidean in pixel space divided by ``sqrt(C * H * W)`` (a per-pixel root
    mean square difference, comparable across image sizes); the division cancels in the ratio.

    Returns
    -------
    ratio : (Nq,) ``d1 / d2`` in [0, 1]; 0 for an exact copy of a reference that has no twin.
    d1 : (Nq,) normalised distance to the nearest reference.
    index : (Nq,) index of the nearest reference.
    """
    q, r = query.reshape(len(query), -1).float(), ref.reshape(len(ref), -1).float()
    _, idx = nearest_neighbors(q, r, k=2, metric="l2", chunk=chunk)
    # The chunked search expands |q - r|^2 = |q|^2 + |r|^2 - 2 q.r, which leaves a rounding error
    # of ~1e-3 on a distance of 0; recompute the two distances that matter exactly, so that an
    # exact copy has d1 = 0 and a ratio of exactly 0.
    d = (q[:, None, :] - r[idx]).norm(dim=2) / math.sqrt(q.shape[1])
    d, order = d.sort(dim=1)
    idx = idx.gather(1, order)
    # 0 / 0 (a query equal to two identical references) is a copy: define the ratio as 0 there.
    ratio = torch.where(d[:, 1] > 0, d[:, 0] / d[:, 1].clamp_min(1e-12), torch.zeros_like(d[:, 0]))
    return ratio, d[:, 0], idx[:, 0]


class NNRatioDetector(Detector):
    """Nearest-neighbour distance ratio in pixel space (Gu et al., "On memorization in
    diffusion models").

    Gu et al. call a sample memorized when ``d(x, NN1) / d(x, NN2) < 1/3``: its nearest training
    image is much closer than the next one, so it is *that* image and not a blend of the
    distribution. To fit the study's convention "higher = more copy-like, copy when above tau",
    the similarity is ``1 - d1 / d2`` in [0, 1] and the rule is the fixed ``tau = 2/3``
    (``1 - d1/d2 > 2/3`` exactly when ``d1/d2 < 1/3``). An exact copy scores 1; a query as far
    from its nearest reference as from the second scores 0. Because tau is fixed, the
    false-positive floor is *measured* (``fp_floor`` and ``holdout_copy_rate``), not 5 % by
    construction.

    The statistic needs two references, and it judges a *neighbourhood*: two near-identical
    training images (neighbouring slices of one patient) make each other's copies look novel.
    """

    name = "nn_ratio"
    fixed_tau = 2 / 3
    similarity = "1 − d1/d2 (pixel ℓ2)"

    @torch.no_grad()
    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return images.reshape(len(images), -1).float()

    @torch.no_grad()
    def search(self, query: torch.Tensor, ref: torch.Tensor,
               k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        if k != 1:  # the ratio describes a query's neighbourhood, not one query-reference pair
            raise ValueError(f"the nn_ratio detector scores each query once (k=1), got k={k}")
        ratio, _, idx = nn_distance_ratio(query, ref)
        return (1 - ratio)[:, None], idx[:, None]


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """The 1D Gaussian of MONAI's SSIM (sampled at integer offsets, normalised to sum 1)."""
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def _window_matrix(n: int, window: torch.Tensor) -> torch.Tensor:
    """(n, n - size + 1) matrix whose column a holds the window at offset a.

    Filtering an (H, W) map with a separable window in 'valid' mode is then two matrix products,
    ``Bh.T @ x @ Bw``, which a CPU runs ~20 times faster than ``conv2d`` with a 1 x 11 kernel.
    """
    size = len(window)
    out = torch.zeros(n, n - size + 1, dtype=window.dtype, device=window.device)
    for a in range(n - size + 1):
        out[a:a + size, a] = window
    return out


@torch.no_grad()
def pairwise_ssim(query: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0,
                  window_size: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03,
                  max_floats: int = 2**24) -> torch.Tensor:
    """SSIM of every query image with every reference image, as an (Nq, Nr) matrix.

    The same quantity as MONAI's ``compute_ssim_and_cs`` (Gaussian window 11 / 1.5, constants
    ``(0.01 L)^2`` and ``(0.03 L)^2``, 'valid' windows, mean over the map), which the tests check.
    Computed differently because it is *pairwise*: the local means and variances belong to one
    image and are filtered once per image; only the local cross term ``blur(x * y)`` needs every
    pair. It is filtered as two matrix products (:func:`_window_matrix`) in chunks of queries,
    so memory stays near ``max_floats`` (64 MB by default).

    Parameters
    ----------
    query, ref : (Nq, 1, H, W) and (Nr, 1, H, W) images.
    data_range : the intensity range L of the images.
    """
    if query.ndim != 4 or query.shape[1] != 1 or query.shape[1:] != ref.shape[1:]:
        raise ValueError(f"expected (N, 1, H, W) images of one size, got {tuple(query.shape)} "
                         f"and {tuple(ref.shape)}")
    if min(query.shape[-2:]) < window_size:
        raise ValueError(f"images of {tuple(query.shape[-2:])} px are smaller than the "
                         f"{window_size} px SSIM window")
    window = _gaussian_window(window_size, sigma).to(query.device)
    b_h, b_w = (_window_matrix(n, window) for n in query.shape[-2:])

    def blur(x):  # 'valid' Gaussian filter of the last two dims
        return b_h.T @ x @ b_w

    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    q, r = query.float()[:, 0], ref.float()[:, 0]  # (N, H, W)
    mu_q, mu_r = blur(q), blur(r)  # (N, h, w) local means
    var_q, var_r = blur(q * q) - mu_q**2, blur(r * r) - mu_r**2
    n_ref, (h, w) = len(r), q.shape[-2:]
    chunk = max(1, max_floats // (n_ref * h * w))
    rows = []
    for start in range(0, len(q), chunk):
        qc = q[start:start + chunk]
        cross = blur(qc[:, None] * r[None])  # (c, Nr, h', w'): the only per-pair filtering
        mq, vq = mu_q[start:start + chunk, None], var_q[start:start + chunk, None]  # (c, 1, h', w')
        mr, vr = mu_r[None], var_r[None]  # (1, Nr, h', w')
        cov = cross - mq * mr
        ssim_map = ((2 * mq * mr + c1) * (2 * cov + c2)) / ((mq**2 + mr**2 + c1) * (vq + vr + c2))
        rows.append(ssim_map.mean(dim=(-2, -1)))
    return torch.cat(rows)


class SSIMDetector(Detector):
    """Structural similarity (SSIM) of each query with each reference image.

    SSIM compares local means, contrasts and correlations in 11-pixel Gaussian windows, so it
    rewards shared structure rather than equal pixel values. It is the plain index that
    DeepSSIM builds on, not a learned version. It is computed on every pair
    (:func:`pairwise_ssim`); tau is calibrated on held-out data like Dar et al.'s.
    """

    name = "ssim"
    similarity = "SSIM"

    def __init__(self, data_range: float = 1.0):
        self.data_range = data_range

    @torch.no_grad()
    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return images.float()

    @torch.no_grad()
    def search(self, query: torch.Tensor, ref: torch.Tensor,
               k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        return pairwise_ssim(query, ref, self.data_range).topk(k, dim=1)


EXTERNAL_ENV = "MEMSTUDY_EXTERNAL_ENCODER"  # path of a local TorchScript / torch.export encoder


def _load_encoder(path: Path, device: str, how: str) -> nn.Module:
    """Load a TorchScript file, or a ``torch.export`` program when the name ends in ``.pt2``."""
    import warnings

    try:
        if path.suffix == ".pt2":
            return torch.export.load(str(path)).module().to(device)
        with warnings.catch_warnings():
            # TorchScript is deprecated in PyTorch >= 2.10 but still loads; the deprecation is
            # the user's choice of file format, not something a study run should warn about.
            warnings.simplefilter("ignore", DeprecationWarning)
            encoder = torch.jit.load(str(path), map_location=device)
    except Exception as err:  # a corrupt or foreign file: say what was expected
        raise ValueError(f"{path} is not a TorchScript (or .pt2 torch.export) file "
                         f"({type(err).__name__}: {err}). {how}") from None
    return encoder.eval()


class ExternalDetector(Detector):
    """An encoder the user provides as a local file; similarity is Pearson's r of its features.

    Use it to plug in a stronger descriptor, e.g. an SSCD copy-detection network (Somepalli et
    al.) or a medical foundation model. Nothing is ever downloaded: the file comes from the
    ``path`` argument or the ``MEMSTUDY_EXTERNAL_ENCODER`` environment variable. It is a
    TorchScript file (``torch.jit.script(model).save("encoder.pt")``) or, since TorchScript is
    deprecated in recent PyTorch, a ``torch.export`` program saved as ``.pt2`` with a dynamic
    batch dimension. The module must map a batch ``(B, 1, H, W)`` of images in [0, 1] to
    ``(B, ...)`` features; wrap a model that wants 3 channels or another normalisation first.
    """

    name = "external"

    def __init__(self, path: str | os.PathLike | None = None, device: str = "cpu",
                 batch_size: int = 256):
        path = path if path is not None else os.environ.get(EXTERNAL_ENV)
        how = (f"Provide a local encoder file: set {EXTERNAL_ENV}=/path/to/encoder.pt or pass "
               "path=... (make one with torch.jit.script(model).save('encoder.pt'), or "
               "torch.export.save(torch.export.export(model, ...), 'encoder.pt2'); it must map "
               "(B, 1, H, W) images in [0, 1] to (B, D) features). Nothing is downloaded.")
        if not path:
            raise FileNotFoundError(f"The 'external' detector has no encoder file. {how}")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"External encoder {self.path} does not exist. {how}")
        self.encoder = _load_encoder(self.path, device, how)
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        out = [self.encoder(images[i:i + self.batch_size].to(self.device).float())
               for i in range(0, len(images), self.batch_size)]
        return torch.cat(out).reshape(len(images), -1).float().cpu()


class SmallEncoder(nn.Module):
    """A four-stage CNN with a linear head: the contrastive encoder's backbone.

    Dar et al. use a ResNet-50 in 2D; on 32-128 px slices and CPU budgets a small CNN learns the
    same instance-discrimination task in seconds (the choice is recorded in every run's config).
    """

    def __init__(self, dim: int = 128, width: int = 32):
        super().__init__()
        layers, c_in = [], 1
        for i, c_out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=1 if i == 0 else 2, padding=1),
                       nn.GroupNorm(8, c_out), nn.SiLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c_in, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """NT-Xent (SimCLR) loss: each view must pick its partner among the other 2B - 1 views."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    n = z1.shape[0]
    logits.fill_diagonal_(-float("inf"))  # a view is not its own positive
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, target)


class ContrastiveDetector(Detector):
    """Self-supervised encoder trained on the training set only (Dar et al.)."""

    name = "contrastive"
    temperature = 0.07  # Dar et al.
    lr = 1e-3  # Dar et al. use 1e-4 over 200 epochs; a short CPU budget needs a larger step

    def __init__(self, dim: int = 128, steps: int = 300, batch_size: int = 64, seed: int = 0,
                 device: str = "cpu", cache: Path | None = None):
        self.dim, self.steps, self.batch_size, self.seed = dim, steps, batch_size, seed
        self.device, self.cache = device, cache
        self.losses: list[float] = []

    def fit(self, train: torch.Tensor | None) -> "ContrastiveDetector":
        """Train on ``train``, or load the cached weights; ``train`` may be None only then."""
        torch.manual_seed(self.seed)
        self.encoder = SmallEncoder(self.dim).to(self.device)
        if self.cache is not None and self.cache.exists():
            self.encoder.load_state_dict(torch.load(self.cache, map_location=self.device))
            return self
        if train is None:
            raise ValueError(f"no cached encoder at {self.cache}: pass the training images")
        gen = torch.Generator().manual_seed(self.seed)
        view = BatchAugment(CONTRASTIVE_VIEW, gen)
        opt = torch.optim.Adam(self.encoder.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.steps)
        batch = min(self.batch_size, len(train))  # no duplicates: a duplicate is a false negative
        train = train.to(self.device)
        self.encoder.train()
        for _ in range(self.steps):
            x = train[torch.randperm(len(train), generator=gen)[:batch].to(self.device)]
            loss = nt_xent(self.encoder(view(x)), self.encoder(view(x)), self.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            self.losses.append(loss.item())
        self.encoder.eval()
        if self.cache is not None:
            save_atomic(lambda p: torch.save(self.encoder.state_dict(), p), self.cache)
        return self

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        self.encoder.eval()
        out = [self.encoder(images[i:i + 256].to(self.device)) for i in range(0, len(images), 256)]
        return torch.cat(out).float()


@dataclass(frozen=True)
class Detection:
    """Everything one detector found at one checkpoint (arrays are numpy, indices into sets)."""

    detector: str
    result: Memorization
    sim_gen_train: np.ndarray  # (N_gen,) nearest-training similarity of each synthetic sample
    nn_gen_train: np.ndarray  # (N_gen,) index of that training sample
    sim_gen_holdout: np.ndarray  # (N_gen,) nearest-holdout similarity of each synthetic sample
    nn_gen_holdout: np.ndarray
    sim_train_gen: np.ndarray  # (N_train,) nearest-synthetic similarity of each training sample
    sim_train_holdout: np.ndarray  # (N_train,) calibrates tau
    sim_holdout_train: np.ndarray  # (N_holdout,) the "genuinely new image" reference curve

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.__dict__.items() if isinstance(v, np.ndarray)}


def score(detector: Detector, train: torch.Tensor, holdout: torch.Tensor, gen: torch.Tensor,
          percentile: float = 95.0) -> Detection:
    """Prepare the three sets once, search nearest neighbours, and compute Dar et al.'s metrics.

    tau is the detector's ``fixed_tau`` when it has one, else the ``percentile``-th percentile
    of train -> holdout similarity.
    """
    rep_train, rep_holdout, rep_gen = (detector.prepare(x) for x in (train, holdout, gen))

    def nn1(q, r):
        v, i = detector.search(q, r, 1)
        return v[:, 0].cpu().numpy(), i[:, 0].cpu().numpy()

    sim_gen_train, nn_gen_train = nn1(rep_gen, rep_train)
    sim_gen_holdout, nn_gen_holdout = nn1(rep_gen, rep_holdout)
    sim_train_gen, _ = nn1(rep_train, rep_gen)
    sim_train_holdout, _ = nn1(rep_train, rep_holdout)
    sim_holdout_train, _ = nn1(rep_holdout, rep_train)
    result = memorization(sim_train_holdout, sim_gen_train, sim_train_gen, sim_holdout_train,
                          percentile=percentile, tau=detector.fixed_tau)
    return Detection(detector.name, result, sim_gen_train, nn_gen_train, sim_gen_holdout,
                     nn_gen_holdout, sim_train_gen, sim_train_holdout, sim_holdout_train)


ALL_DETECTORS = DETECTORS  # one list of names, kept in config so configs validate without torch


def make_detector(name: str, *, dim: int = 128, steps: int = 300, seed: int = 0,
                  device: str = "cpu", cache_dir: Path | None = None,
                  external_path: str | os.PathLike | None = None) -> Detector:
    """Build a detector by name (one of :data:`ALL_DETECTORS`); call ``fit(train)`` next.

    ``dim``, ``steps`` and ``cache_dir`` configure the contrastive encoder; ``external_path``
    the external one (default: ``$MEMSTUDY_EXTERNAL_ENCODER``).
    """
    if name == "pixel":
        return PixelDetector()
    if name == "contrastive":
        cache = None if cache_dir is None else Path(cache_dir) / "contrastive_encoder.pt"
        return ContrastiveDetector(dim=dim, steps=steps, seed=seed, device=device, cache=cache)
    if name == "nn_ratio":
        return NNRatioDetector()
    if name == "ssim":
        return SSIMDetector()
    if name == "external":
        return ExternalDetector(external_path, device=device)
    raise ValueError(f"unknown detector {name!r}: choose from {', '.join(ALL_DETECTORS)}")


# --------------------------------------------------------------------------------------------
# Patient-level memorization
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatientLevel:
    """Synthetic slices that sit closer to a training patient than held-out patients ever get."""

    threshold: float  # the holdout reference: percentile of holdout -> train similarity
    percentile: float  # 100 = the maximum: no held-out patient reaches the threshold
    n_gen: int
    n_matched: int  # synthetic slices whose nearest training slice is above the threshold
    n_train_patients: int
    patients_matched: tuple[int, ...]  # distinct training patients those slices point to

    @property
    def rate(self) -> float:
        return self.n_matched / self.n_gen if self.n_gen else float("nan")

    @property
    def patient_rate(self) -> float:
        return len(self.patients_matched) / self.n_train_patients

    def as_dict(self) -> dict[str, float | int]:
        # keys are prefixed so that they can join a row of Memorization.as_dict()
        return {"patient_threshold": self.threshold, "patient_percentile": self.percentile,
                "n_patient_matched": self.n_matched,
                "patient_match_rate": self.rate, "n_train_patients": self.n_train_patients,
                "n_patients_matched": len(self.patients_matched),
                "patients_matched_rate": self.patient_rate}


def patient_level(sim_gen_train: np.ndarray, nn_gen_train: np.ndarray,
                  train_patient_id: np.ndarray, sim_holdout_train: np.ndarray,
                  holdout_patient_id: np.ndarray | None = None,
                  percentile: float = 100.0) -> PatientLevel:
    """Patient-level memorization: which training *patients* the synthetic set reproduces.

    A synthetic slice counts as a patient match when its similarity to its nearest training
    slice is strictly above a threshold that held-out patients do not reach: by default the
    **maximum** of held-out -> training similarity (``percentile=100``), so no genuinely new
    patient in the holdout set would be counted. The maximum is the strict, conservative
    choice, but it grows with the size of the holdout set; a high percentile (e.g. 99) is more
    stable and lets (100 - percentile) % of new images through, like Dar et al.'s tau.

    Parameters
    ----------
    sim_gen_train, nn_gen_train : (N_gen,) similarity and index of each synthetic slice's
        nearest training slice (``Detection.sim_gen_train`` / ``nn_gen_train``).
    train_patient_id : (N_train,) patient id of every training slice.
    sim_holdout_train : (N_holdout,) similarity of each held-out slice to its nearest training
        slice (``Detection.sim_holdout_train``).
    holdout_patient_id : (N_holdout,) optional; when given, each held-out patient contributes
        one value, its slices' maximum, so the percentile is taken over *patients*.
    percentile : which percentile of the holdout reference is the threshold.

    Returns
    -------
    PatientLevel
        ``rate`` = matched synthetic slices / N_gen; ``patient_rate`` = distinct training
        patients matched / training patients.
    """
    sim_gen_train = np.asarray(sim_gen_train, dtype=np.float64)
    nn_gen_train = np.asarray(nn_gen_train, dtype=np.int64)
    train_patient_id = np.asarray(train_patient_id)
    reference = np.asarray(sim_holdout_train, dtype=np.float64)
    if reference.size == 0:
        raise ValueError("patient_level needs held-out -> training similarities as a reference")
    if sim_gen_train.shape != nn_gen_train.shape:
        raise ValueError("sim_gen_train and nn_gen_train must have the same length")
    if holdout_patient_id is not None:
        holdout_patient_id = np.asarray(holdout_patient_id)
        reference = np.array([reference[holdout_patient_id == p].max()
                              for p in np.unique(holdout_patient_id)])
    threshold = float(np.percentile(reference, percentile))
    matched = sim_gen_train > threshold
    patients = np.unique(train_patient_id[nn_gen_train[matched]])
    return PatientLevel(threshold=threshold, percentile=float(percentile),
                        n_gen=len(sim_gen_train), n_matched=int(matched.sum()),
                        n_train_patients=len(np.unique(train_patient_id)),
                        patients_matched=tuple(int(p) for p in patients))

"""The shared stage 1: one autoencoder per set of stage-1 settings, trained once and cached.

In practice a latent diffusion model reuses a pretrained autoencoder: stage 1 never saw the
patients stage 2 is trained on. ``RunConfig.autoencoder = "shared"`` reproduces that. The
autoencoder learns from the pool's *reference* share (``memstudy.config.SPLITS``), which is
disjoint from every cell's training and holdout patients, so any copy a latent model makes is
stage 2's doing. And since it does not depend on a cell's patients, seed, augmentation or any
stage-2 setting, every cell with the same stage-1 settings uses the same file: a grid trains
stage 1 once instead of once per cell (the replicates of a grid point included).

The cache key (:func:`shared_key`) names everything the weights depend on; a changed key is a
new file, never a stale one. Two cells that start at once do not both train it: the first one
holds a lock on the file, the second waits and then loads what the first wrote.
"""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path

import torch

from ..config import ConfigError, RunConfig
from ..data.sets import patient_slices, patient_split
from ..runio import cache_file
from .stage1 import Autoencoder, fit_autoencoder

REFERENCE_PATIENTS = 64  # reference-share patients it learns from: 256 slices at 4 per patient,
#                          more than any CPU cell's training set, as a pretrained model's would be
SHARED_SEED = 0  # one autoencoder for all replicates: it is a fixed, "downloaded" part
# Trained with flips, rotations and shifts so that it also encodes the augmented images of
# stage 2 well; intensity changes ("strong") are left out because they cost reconstruction
# quality on the unaugmented slices every cell is measured on.
SHARED_AUGMENTATION = "flip_rotate"
VERSION = 1  # bump when the training recipe below changes, so old cache files are not reused


def shared_key(cfg: RunConfig, device: str) -> dict:
    """Everything the shared autoencoder's weights depend on (its cache key)."""
    return {"version": VERSION, "dataset": cfg.dataset, "data_seed": cfg.data_seed,
            "cohort_patients": cfg.cohort_patients, "image_size": cfg.image_size,
            "slices_per_patient": cfg.slices_per_patient, "patients": REFERENCE_PATIENTS,
            "ae_channels": list(cfg.ae_channels), "latent_channels": cfg.latent_channels,
            "ae_steps": cfg.ae_steps, "ae_lr": cfg.ae_lr, "kl_weight": cfg.kl_weight,
            "adversarial_weight": cfg.adversarial_weight, "batch_size": cfg.batch_size,
            "seed": SHARED_SEED, "augmentation": SHARED_AUGMENTATION,
            # bf16 on CUDA gives other weights than fp32 on a CPU: never mix the two
            "device_type": "cuda" if device.startswith("cuda") else "cpu",
            # a volume autoencoder is another network (2D keys stay as they were)
            **({"spatial_dims": 3} if cfg.spatial_dims == 3 else {})}


def reference_images(cfg: RunConfig) -> torch.Tensor:
    """Slices of the first :data:`REFERENCE_PATIENTS` reference-share patients of ``cfg``'s pool."""
    if cfg.dataset == "cohort" and cfg.spatial_dims == 3:  # 3D cells: reference patients' volumes
        from ..data.volumes import patient_volumes

        ids = patient_split(cfg)["reference"][:REFERENCE_PATIENTS]
        return torch.from_numpy(patient_volumes(ids, cfg).images)
    if cfg.dataset != "cohort" and getattr(cfg, "spatial_dims", 2) == 2:  # its own reference share
        from ..data.sets import share_slices

        return torch.from_numpy(share_slices(cfg, "reference", REFERENCE_PATIENTS * cfg.slices_per_patient,
                                             by_seed=False, up_to=True).images)
    if cfg.dataset != "cohort" or getattr(cfg, "spatial_dims", 2) != 2:
        raise ConfigError(
            f"autoencoder='shared' trains on the reference share of the generated cohort's 2D "
            f"slices; dataset={cfg.dataset!r} (spatial_dims={getattr(cfg, 'spatial_dims', 2)}) "
            "has none yet: set autoencoder='per_cell'.")
    ids = patient_split(cfg)["reference"][:REFERENCE_PATIENTS]
    return torch.from_numpy(patient_slices(ids, cfg).images)


def shared_autoencoder(cfg: RunConfig, device: str, progress: bool = True) -> tuple[Autoencoder, Path]:
    """The shared autoencoder of ``cfg`` (trained now if no cell trained it before).

    Returns
    -------
    ae : the autoencoder, in eval mode.
    path : its cache file; ``<path>.json`` beside it holds the key, ``<stem>.stats.jsonl`` its
        training losses. A cell records the path in its ``metrics.json``.
    """
    path = cache_file("autoencoder", shared_key(cfg, device), ".pt")
    with locked(path.with_suffix(".lock")):
        images = None if path.exists() else reference_images(cfg)
        ae = fit_autoencoder(cfg, images, device, out=path, resume=path.with_suffix(".partial.pt"),
                             stats=path.with_suffix(".stats.jsonl"), seed=SHARED_SEED,
                             augmentation=SHARED_AUGMENTATION, progress=progress)
    return ae, path


@contextmanager
def locked(lock_path: Path):
    """Hold an exclusive POSIX lock on ``lock_path`` (other processes wait for it): the one
    process that trains a cached artefact while the others wait to load it.

    flock works between processes of one machine; on a network file system that lacks it two
    Slurm tasks may both train the file, which wastes time but is still correct: training is
    deterministic and the result is written atomically.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

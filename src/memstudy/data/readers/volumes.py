"""3D volumes (NIfTI) to 2D training slices: read, check, choose slices, normalise, resize.

The rules follow Akbar et al.: axial slices, kept only where the brain (the foreground) covers
at least 15 % of the slice, so the models never train on near-empty slices at the top and
bottom of the head. Each patient gives ``slices_per_patient`` slices chosen in its range of
kept slices the way the generated cohort chooses them in its height range
(:func:`memstudy.data.cohort.slice_positions`): ``slice_spacing = 0`` spreads them over the
range; ``slice_spacing > 0`` puts neighbours that share of the range apart (the cohort's range
is 0.7 high), centred, and at least one voxel apart.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.transforms import Resize, ScaleIntensityRangePercentiles

from ...config import RunConfig
from ..checks import check_values
from ..phantom import Z_RANGE
from .base import DataError, Slices

MIN_FOREGROUND = 0.15  # share of a slice that must be foreground (Akbar et al.: 15 %)
SLICE_AXIS = 2  # axial, once the volume is reoriented to RAS (nibabel's closest canonical)
PERCENTILES = (0.5, 99.5)  # intensity clipping (over a patient's chosen slices) before [0, 1]


def read_nifti(path: Path, channels: int | None = None) -> np.ndarray:
    """A NIfTI file as a float32 array in RAS orientation, or a :class:`DataError` saying why not.

    Parameters
    ----------
    path : Path
        ``.nii`` or ``.nii.gz`` file.
    channels : int or None
        None for a 3D volume; otherwise the number of channels the 4th axis must hold.
    """
    if path.name.endswith(".gz"):
        with open(path, "rb") as f:
            if f.read(2) != b"\x1f\x8b":
                raise DataError(f"{path} ends in .gz but is not gzip-compressed: re-download or "
                                "re-export it (or rename it to .nii if it is an uncompressed NIfTI).")
    try:
        image = nib.as_closest_canonical(nib.load(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError,
            nib.filebasedimages.ImageFileError) as err:
        raise DataError(f"{path} could not be read as NIfTI ({type(err).__name__}: {err}): the file "
                        "is truncated or corrupt; re-download or re-export it.") from None
    want = 3 if channels is None else 4
    shape = data.shape
    if want == 3 and data.ndim == 4 and shape[3] == 1:  # a singleton 4th axis is still one volume
        data = data[..., 0]
    if data.ndim != want or (channels is not None and shape[3] != channels):
        what = "a 3D volume" if channels is None else f"a 4D volume with {channels} channels"
        raise DataError(f"{path} has shape {shape}, expected {what}: "
                        + ("pick one channel and save it as 3D, or use a layout that reads "
                           "multi-channel files (decathlon_brain)." if channels is None else
                           "this is not the layout's file; check the data set and its version."))
    return data


def volume_slices(volume: np.ndarray, path, cfg: RunConfig, seg: np.ndarray | None = None) -> Slices:
    """``cfg.slices_per_patient`` axial slices of one volume, in [0, 1], ``image_size`` square.

    Raises
    ------
    DataError
        If the volume holds NaN/inf, is constant, or has too few slices whose foreground
        coverage reaches ``MIN_FOREGROUND`` for the slices asked for.
    """
    check_values(volume, path, "volume")
    coverage = foreground(volume).mean(axis=(0, 1))  # per axial slice
    kept = np.flatnonzero(coverage >= MIN_FOREGROUND)
    n = cfg.slices_per_patient
    index = choose_slices(kept, n, cfg.slice_spacing)
    if index is None or np.any(coverage[index] < MIN_FOREGROUND):
        raise DataError(f"{path}: only {kept.size} axial slices have at least {MIN_FOREGROUND:.0%} "
                        f"foreground, too few for slices_per_patient={n} with slice_spacing="
                        f"{cfg.slice_spacing:g}: lower either, or remove this subject if it is "
                        "mostly empty.")
    # Percentiles of the chosen slices, all of them together: one patient's slices keep their
    # relative intensities, and the rest of a 9-million-voxel volume is never scaled.
    scale = ScaleIntensityRangePercentiles(*PERCENTILES, b_min=0.0, b_max=1.0, clip=True)
    chosen = np.moveaxis(np.asarray(scale(volume[:, :, index])), SLICE_AXIS, 0)  # (n, X, Y)
    # RAS puts anterior at +y; images show anterior at the top, as the cohort does.
    chosen = np.flip(np.swapaxes(chosen, 1, 2), axis=1)
    lesion = (np.zeros(n, bool) if seg is None else (seg[:, :, index] > 0).any(axis=(0, 1)))
    return Slices(square_resize(chosen[:, None], cfg.image_size), index.astype(np.int64), lesion,
                  sources=(str(path),) * n)


def choose_slices(kept: np.ndarray, n: int, spacing: float) -> np.ndarray | None:
    """Indices of ``n`` distinct slices in the range of ``kept``, or None if they do not fit."""
    if kept.size == 0:
        return None
    lo, hi = int(kept[0]), int(kept[-1])
    if n == 1:
        index = np.array([(lo + hi) // 2])
    elif spacing == 0:  # spread over the range, as the cohort's default
        index = np.round(np.linspace(lo, hi, n)).astype(int)
    else:  # the cohort's spacing as a share of its range, at least one voxel
        step = max(1, round(spacing / (Z_RANGE[1] - Z_RANGE[0]) * (hi - lo)))
        index = np.round((lo + hi) / 2 + step * (np.arange(n) - (n - 1) / 2)).astype(int)
    if len(set(index.tolist())) < n or index.min() < lo or index.max() > hi:
        return None
    return index


def foreground(volume: np.ndarray) -> np.ndarray:
    """Voxels brighter than 5 % of the robust intensity range: the head, not the air."""
    sample = volume[::2, ::2, ::2]  # an eighth of the voxels: the same percentile, 8x faster
    lo, hi = float(sample.min()), float(np.percentile(sample, 99.5))
    return volume > lo + 0.05 * (hi - lo)


def square_resize(images: np.ndarray, size: int, pad: bool = True) -> np.ndarray:
    """(k, 1, H, W) images made square, then resized to (k, 1, size, size).

    ``pad=True`` pads with the darkest value (anatomy keeps its proportions: volumes);
    ``pad=False`` stretches (2D photographs of near-square films: chest X-rays).
    """
    k, _, h, w = images.shape
    side = max(h, w)
    out = images.astype(np.float32)
    if pad and h != w:
        out = np.full((k, 1, side, side), images.min() if images.size else 0, np.float32)
        out[:, :, (side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = images
    resize = Resize((size, size), mode="bilinear", anti_aliasing=side > size)
    x = torch.stack([torch.as_tensor(resize(img)) for img in out]) if k else torch.zeros(0, 1, size, size)
    return x.clamp(0, 1).numpy().astype(np.float32)

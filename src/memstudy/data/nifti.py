"""Volumes to NIfTI files a viewer opens, with an affine that says which way is which."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..runio import save_atomic


def write_nifti(volume: np.ndarray, path) -> None:
    """Write a ``(D, H, W)`` volume (e.g. from :func:`memstudy.data.cohort.make_volume`) as NIfTI.

    The array is stored as it is (so ``nibabel.load(path).get_fdata()``
    gives it back); the affine says what its axes are: 1 mm isotropic
    voxels, axis 0 inferior -> superior, axis 1 anterior -> posterior
    (image rows, top first), axis 2 the patient's right -> left (image
    columns in radiological convention), centred on the origin.
    The file is written to a temporary name, then moved into place, so a
    reader never sees half a file.

    Parameters
    ----------
    volume : np.ndarray
        3D array, stored as float32.
    path : str or Path
        Ends with ``.nii`` or ``.nii.gz``.
    """
    import nibabel as nib

    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"expected a (D, H, W) volume, got shape {volume.shape}")
    path = Path(path)
    if path.name.endswith(".nii.gz"):
        suffix = ".nii.gz"
    elif path.name.endswith(".nii"):
        suffix = ".nii"
    else:
        raise ValueError(f"NIfTI path must end with .nii or .nii.gz: {path}")
    d, h, w = volume.shape
    # World (RAS, mm) from voxel (k, j, i): x = -i, y = -j, z = +k, centred.
    affine = np.array(
        [
            [0.0, 0.0, -1.0, (w - 1) / 2.0],
            [0.0, -1.0, 0.0, (h - 1) / 2.0],
            [1.0, 0.0, 0.0, -(d - 1) / 2.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    image = nib.Nifti1Image(volume, affine)
    image.header.set_data_dtype(np.float32)
    image.header.set_xyzt_units("mm")
    # nibabel picks compression from the name, so the temporary file keeps the suffix
    save_atomic(lambda tmp: nib.save(image, tmp), path, suffix=suffix)

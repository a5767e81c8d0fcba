"""Tiny data sets in the real on-disk layouts, written by the tests themselves.

Each writer makes the smallest tree its reader accepts as the real thing: same folder and
file names, same formats (NIfTI via nibabel, JPEG/PNG via Pillow, npz, CSV), a few patients
of tiny images. Volumes are a bright ellipsoid "head" on a black background, so the
foreground rule has something to keep and something to drop.
"""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

SHAPE = (32, 32, 12)  # x, y, z: 12 axial slices, the middle ones mostly head


def head(seed: int, shape=SHAPE) -> np.ndarray:
    """A noisy ellipsoid volume (float32): about 8 axial slices cover >= 15 % of the plane."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    inside = (x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 0.75) ** 2 < 1
    return (inside * (200 + 50 * rng.random(shape))).astype(np.float32)


def write_nifti(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def write_brats(root: Path, version: int = 2021, n: int = 10, ext: str = ".nii.gz") -> Path:
    for i in range(n):
        name = f"BraTS2021_{i:05d}" if version == 2021 else f"BraTS20_Training_{i + 1:03d}"
        for j, m in enumerate(("flair", "t1", "t1ce", "t2")):
            write_nifti(root / name / f"{name}_{m}{ext}", head(100 * i + j))
        seg = np.zeros(SHAPE, np.uint8)
        seg[12:16, 12:16, 5:7] = 1  # a "tumour" on two slices
        write_nifti(root / name / f"{name}_seg{ext}", seg)
    return root


def write_decathlon(root: Path, n: int = 10) -> Path:
    task = root / "Task01_BrainTumour"
    for i in range(n):
        four = np.stack([head(10 * i + c) for c in range(4)], axis=-1)
        write_nifti(task / "imagesTr" / f"BRATS_{i + 1:03d}.nii.gz", four)
        write_nifti(task / "labelsTr" / f"BRATS_{i + 1:03d}.nii.gz", np.zeros(SHAPE, np.uint8))
    (task / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"Mac resource fork, not an image")
    return root


def xray(seed: int, size=(40, 36)) -> np.ndarray:
    """A uint8 chest-film-like image: a bright frame with two dark lungs."""
    rng = np.random.default_rng(seed)
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    lungs = (((x - w * 0.3) / (w * 0.18)) ** 2 + ((y - h / 2) / (h * 0.35)) ** 2 < 1) | \
            (((x - w * 0.7) / (w * 0.18)) ** 2 + ((y - h / 2) / (h * 0.35)) ** 2 < 1)
    return np.clip(180 - 120 * lungs + rng.normal(0, 12, size), 0, 255).astype(np.uint8)


def write_chest_xray(root: Path, persons: int = 12, normals: int = 12) -> Path:
    base = root / "chest_xray"
    for i in range(persons):  # two films of each pneumonia patient, in train or test
        split = "train" if i % 4 else "test"
        for k in range(2):
            path = base / split / "PNEUMONIA" / f"person{i}_bacteria_{k}.jpeg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(xray(10 * i + k)).save(path, quality=95)
    for i in range(normals):
        path = base / ("val" if i < 2 else "train") / "NORMAL" / f"IM-{i:04d}-0001.jpeg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(xray(1000 + i)).save(path, quality=95)
    return root


def write_medmnist(root: Path, flag: str = "toymnist_28", size: int = 28, n=(40, 20, 20),
                   volumes: bool = False, colour: bool = False) -> Path:
    rng = np.random.default_rng(0)
    shape = (size, size, size) if volumes else ((size, size, 3) if colour else (size, size))

    def images(k):
        x = rng.integers(0, 256, (k, *shape), dtype=np.uint8)
        if volumes:  # a bright cube so slices have foreground
            x[:, :, 4:-4, 4:-4] = np.maximum(x[:, :, 4:-4, 4:-4], 200)
        return x

    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / f"{flag}.npz", train_images=images(n[0]), val_images=images(n[1]),
             test_images=images(n[2]), train_labels=np.zeros((n[0], 1), np.uint8))
    return root


def write_nih(root: Path, patients: int = 20, per_patient: int = 3) -> Path:
    rows = []
    for p in range(patients):
        for k in range(per_patient):
            name = f"{p + 1:08d}_{k:03d}.png"
            folder = root / f"images_{1 + p % 2:03d}" / "images"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(xray(50 * p + k)).save(folder / name)
            rows.append({"Image Index": name, "Finding Labels": "No Finding" if k else "Effusion",
                         "Follow-up #": k, "Patient ID": p + 1})
    rows.append({"Image Index": "99999999_000.png", "Finding Labels": "No Finding",
                 "Follow-up #": 0, "Patient ID": 99999})  # listed, not downloaded
    with open(root / "Data_Entry_2017.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def write_png_folder(root: Path, n: int = 48, per_patient: int | None = None) -> Path:
    """Flat PNG folder; with ``per_patient`` a patients.csv groups the files."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = f"scan_{i:03d}.png"
        Image.fromarray(xray(7 * i)).save(root / name)
        rows.append((name, f"P{i // per_patient:03d}" if per_patient else None))
    if per_patient:
        with open(root / "patients.csv", "w", newline="") as f:
            f.write("file,patient_id\n" + "".join(f"{a},{b}\n" for a, b in rows))
    return root


def write_nifti_folder(root: Path, n: int = 10) -> Path:
    for i in range(n):
        write_nifti(root / f"subject_{i:02d}.nii.gz", head(i))
    return root

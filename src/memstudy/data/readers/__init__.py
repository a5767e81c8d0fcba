"""Readers of real data sets on local disk, one small module per layout.

Each module offers ``index(dataset, root) -> Pool | None`` (None: the folder does not hold
this layout) and ``matches(root) -> bool``. Modules are imported only when their data set is
asked for, so the generated cohort never needs Pillow or a CSV parser.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from .base import DataError, Patient, Pool, Slices, describe_tree

__all__ = ["LAYOUTS", "READERS", "DataError", "Patient", "Pool", "Slices", "read_pool"]

# dataset name -> reader module
READERS = {"brats2020": "brats", "brats2021": "brats", "decathlon_brain": "decathlon",
           "chest_xray": "chest_xray", "medmnist": "medmnist", "nih_cxr14": "nih",
           "folder": "folder"}
# dataset name -> the files it expects (shown in errors and on the book's data page)
LAYOUTS = {
    "brats2021": "BraTS2021_XXXXX/BraTS2021_XXXXX_{flair,t1,t1ce,t2,seg}.nii.gz",
    "brats2020": "BraTS20_Training_XXX/BraTS20_Training_XXX_{flair,t1,t1ce,t2,seg}.nii[.gz]",
    "decathlon_brain": "imagesTr/BRATS_XXX.nii.gz, 4 channels (FLAIR, T1w, T1gd, T2w) [+ labelsTr/]",
    "chest_xray": "chest_xray/{train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg",
    "medmnist": "<flag>.npz with uint8 train_images, val_images, test_images",
    "nih_cxr14": "Data_Entry_2017.csv (Image Index, Patient ID) + images_*/images/*.png",
    "folder": "*.nii[.gz] or *.png/*.jpg files [+ patients.csv with columns file,patient_id]",
}


def reader(name: str):
    """The module that reads data set ``name`` (e.g. ``brats2021``)."""
    return importlib.import_module(f".{READERS[name]}", __name__)


def read_pool(dataset: str, root: str | os.PathLike | None = None) -> Pool:
    """Index the data set ``dataset`` (a RunConfig value) under ``root`` / ``$MEMSTUDY_DATA``.

    Raises
    ------
    DataError
        If the folder is missing or empty, holds another layout (the message lists what was
        expected, what was found, and which layout it looks like), or a file is broken.
    """
    name = dataset.partition(":")[0]
    pool = reader(name).index(dataset, root)
    if pool is None:
        raise layout_error(dataset, Path(root) if root else None)
    return pool


def layout_error(dataset: str, root: Path | None) -> DataError:
    """The error for a folder that does not hold ``dataset``'s layout."""
    from .base import resolve_root

    root = resolve_root(root)
    name = dataset.partition(":")[0]
    others = [n for n in READERS if n not in (name, "folder", "medmnist")]
    looks = [n for n in others if reader(n).matches(root, n)]
    if not looks and name != "folder" and reader("folder").matches(root, "folder"):
        looks = ["folder"]
    hint = (f" It looks like the {looks[0]!r} layout: set dataset={looks[0]!r}." if looks else "")
    expected = "; ".join(f"{n}: {LAYOUTS[n]}" for n in LAYOUTS)
    return DataError(f"{root} does not hold the {name!r} layout ({LAYOUTS[name]}); found "
                     f"{describe_tree(root)}.{hint} Known layouts are {expected}.")

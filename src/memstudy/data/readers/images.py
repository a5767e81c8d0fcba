"""2D image files (PNG, JPEG) to training images, with Pillow.

Real folders are untidy: a few colour images among grey ones, 16-bit PNGs among 8-bit ones,
sizes that differ. What is safe to convert is converted and said (colour -> grey by luminance,
any size -> ``image_size``); what would change intensities silently is refused (8-bit and
16-bit images mixed in one run: their grey levels mean different things).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..checks import check_float_range, check_values
from .base import DataError, Slices
from .volumes import square_resize

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GREY_8, _GREY_16, _COLOUR, _FLOAT = "8-bit grey", "16-bit grey", "colour", "float"


def read_image(path: Path) -> tuple[np.ndarray, str]:
    """One image file as a float32 (H, W) array in [0, 1] and its kind.

    The kind ("8-bit grey", "16-bit grey", "colour", "float") lets a caller refuse a mix.
    Colour images are converted to grey (ITU-R 601 luminance, Pillow's "L").
    """
    try:
        with Image.open(path) as im:
            im.load()  # reads the pixels: a truncated file fails here, not later
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I;16N") or (mode == "I" and np.asarray(im).max() > 255):
                kind, x = _GREY_16, np.asarray(im, dtype=np.float32) / 65535.0
            elif mode == "F":
                kind, x = _FLOAT, np.asarray(im, dtype=np.float32)
            elif mode in ("L", "1", "I"):
                kind, x = _GREY_8, np.asarray(im.convert("L"), dtype=np.float32) / 255.0
            else:  # RGB, RGBA, P, LA, CMYK, ...
                kind, x = _COLOUR, np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except UnidentifiedImageError:
        raise DataError(f"{path} has an image extension but is not an image Pillow can read: "
                        "remove it from the folder or replace it with the real image.") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path} could not be read ({err}): the file is truncated or corrupt; "
                        "re-download or re-export it, or remove it.") from None
    check_values(x, path)
    if kind == _FLOAT:
        check_float_range(x, path)
    return x, kind


def image_slices(paths: list[Path], image_size: int, has_lesion: bool | list[bool] = False) -> Slices:
    """Read, check and resize one patient's images into :class:`Slices`."""
    arrays, kinds = zip(*(read_image(p) for p in paths)) if paths else ((), ())
    notes = tuple(f"{p}: colour image converted to grey" for p, k in zip(paths, kinds)
                  if k == _COLOUR)
    # Stretched, not padded: chest X-rays are near square and padding would add black bars
    # the models would learn; the distortion is the same for every image.
    images = np.concatenate([square_resize(a[None, None], image_size, pad=False) for a in arrays]) \
        if arrays else np.zeros((0, 1, image_size, image_size), np.float32)
    lesion = np.broadcast_to(np.asarray(has_lesion, bool), (len(paths),)).copy()
    return Slices(images, np.arange(len(paths), dtype=np.int64), lesion, notes,
                  sources=tuple(map(str, paths)), kinds=tuple(kinds))


def check_one_depth(sources: list[str], kinds: list[str], where) -> None:
    """Refuse a run whose images mix 8-bit and 16-bit grey levels (see the module notes)."""
    depths: dict[str, list[str]] = {}
    for path, kind in zip(sources, kinds):
        if kind in (_GREY_8, _GREY_16):
            depths.setdefault(kind, []).append(path)
    if len(depths) > 1:
        raise DataError(f"{where} mixes 8-bit images (e.g. {depths[_GREY_8][0]}) and 16-bit images "
                        f"(e.g. {depths[_GREY_16][0]}); their grey levels are not comparable: "
                        "convert all of them to one bit depth (e.g. 8-bit PNG) first.")

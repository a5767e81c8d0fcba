"""Build a detector by name. Kept apart from the interface, because it imports every
implementation and each of them imports the interface."""

from __future__ import annotations

import os
from pathlib import Path

from ..config import DETECTORS
from .base import Detector
from .contrastive import ContrastiveDetector
from .contrastive3d import Contrastive3DDetector
from .external import ExternalDetector
from .nn_ratio import NNRatioDetector
from .pixel import PixelDetector
from .ssim import SSIMDetector
from .trusted import TrustedSpec, trusted_detector


ALL_DETECTORS = DETECTORS  # one list of names, kept in config so configs validate without torch


def make_detector(name: str, *, dim: int = 128, steps: int = 300, seed: int = 0,
                  device: str = "cpu", cache_dir: Path | None = None,
                  external_path: str | os.PathLike | None = None,
                  trusted: TrustedSpec | None = None) -> Detector:
    """Build a detector by name (one of :data:`ALL_DETECTORS`); call ``fit(train)`` next.

    ``dim``, ``steps`` and ``cache_dir`` configure the contrastive encoder; ``external_path``
    the external one (default: ``$MEMSTUDY_EXTERNAL_ENCODER``); ``trusted`` the shared trusted
    encoder (loaded from the cache, or trained once on patients no cell draws).
    """
    if name == "pixel":
        return PixelDetector()
    if name == "contrastive":
        cache = None if cache_dir is None else Path(cache_dir) / "contrastive_encoder.pt"
        return ContrastiveDetector(dim=dim, steps=steps, seed=seed, device=device, cache=cache)
    if name == "contrastive3d":  # Dar et al.'s 3D encoder: its own 32-d embedding, not ``dim``
        cache = None if cache_dir is None else Path(cache_dir) / "contrastive3d_encoder.pt"
        return Contrastive3DDetector(steps=steps, seed=seed, device=device, cache=cache)
    if name == "nn_ratio":
        return NNRatioDetector()
    if name == "ssim":
        return SSIMDetector()
    if name == "external":
        return ExternalDetector(external_path, device=device)
    if name == "trusted":
        if trusted is None:  # its pool and image size cannot be guessed from a name
            raise ValueError("the 'trusted' detector needs trusted=TrustedSpec(image_size=..., "
                             "data_seed=..., ...) (see memstudy.detect.trusted)")
        return trusted_detector(trusted, device=device)
    raise ValueError(f"unknown detector {name!r}: choose from {', '.join(ALL_DETECTORS)}")

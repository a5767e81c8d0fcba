"""A user's own encoder, loaded from a local file (nothing is ever downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .base import Detector


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

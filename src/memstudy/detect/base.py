"""Copy detectors behind one interface, and the scoring that turns them into metrics.

Every detector answers one question: for each query image, which reference image is nearest,
and how similar is it ("higher = more copy-like")? :meth:`Detector.nearest` answers it in two
steps, so that each set is prepared once however many pairs of sets are searched:
``prepare`` turns images into whatever the detector compares (embeddings, pixels, the images
themselves) and ``search`` finds each query's nearest references among them. The default
``search`` is Pearson's r between vectors via :func:`memstudy.detect.neighbors.nearest_neighbors`.

- ``pixel``: the raw pixels (Akbar et al.: correlation of each synthetic image with every
  training image);
- ``contrastive``: a small CNN trained with NT-Xent on the *training set only*, whose positive
  view is a rotation within +-5 degrees and/or a flip (Dar et al.). It is taught to tolerate
  exactly those changes; how it copes with others is measured by :mod:`memstudy.validation.planted`;
- ``nn_ratio``: Gu et al.'s distance ratio in pixel space, with their fixed rule (a copy when
  the nearest neighbour is more than three times closer than the second nearest) instead of a
  threshold calibrated on held-out data;
- ``ssim``: the structural similarity index of each query with each reference (pairwise: SSIM
  is not an inner product of per-image vectors, so it gets its own chunked search);
- ``external``: any encoder the user provides as a local file (TorchScript or torch.export),
  e.g. an SSCD-style copy-detection network (Somepalli et al.), compared with Pearson's r
  like the others.
"""

from __future__ import annotations

import torch

from .neighbors import nearest_neighbors


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

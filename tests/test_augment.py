"""Augmentation means what its name says: a flip mirrors left and right, never up and down."""

import torch

from memstudy.models.augment import AugmentSpec, BatchAugment


def test_2d_flip_mirrors_the_width_axis():
    x = torch.rand(3, 1, 16, 16)
    flipped = BatchAugment(AugmentSpec(flip_p=1.0), torch.Generator().manual_seed(0))(x)
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)  # the patient's left-right
    assert not torch.allclose(flipped, x.flip(-2), atol=1e-2)  # not anterior-posterior


def test_no_flip_no_rotation_is_the_identity():
    x = torch.rand(3, 1, 16, 16)
    same = BatchAugment(AugmentSpec(flip_p=0.0, rotate_deg=0.0), torch.Generator().manual_seed(0))(x)
    assert torch.allclose(same, x, atol=1e-5)

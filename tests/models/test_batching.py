"""The one batching path (models/batching.py): padding to a multiple, sizes remembered."""

from __future__ import annotations

import pytest
import torch

from visionlab.models.batching import batch_images, pad_to_multiple


def test_batch_images_pads_to_multiple():
    batch, sizes = batch_images([torch.ones(3, 20, 30), torch.ones(3, 33, 10)], 16)
    assert batch.shape == (2, 3, 48, 32) and sizes == [(20, 30), (33, 10)]
    assert batch[0, :, 20:].abs().sum() == 0 and batch[1, :, :33, :10].min() == 1


def test_batch_images_same_size_stacks_and_rejects_bad_input():
    images = [torch.rand(3, 32, 64), torch.rand(3, 32, 64)]
    batch, sizes = batch_images(images, 32, fill=0.5)
    assert torch.equal(batch, torch.stack(images)) and sizes == [(32, 64)] * 2
    with pytest.raises(ValueError, match="at least one"):
        batch_images([])
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        batch_images([torch.rand(1, 3, 8, 8)])


def test_pad_to_multiple_fills_per_channel_and_keeps_pixels():
    x = torch.rand(2, 3, 20, 33)
    out = pad_to_multiple(x, 16, fill=(0.1, 0.2, 0.3))
    assert out.shape == (2, 3, 32, 48) and torch.equal(out[..., :20, :33], x)
    fill = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    torch.testing.assert_close(out[..., 20:, :], fill.expand(2, 3, 12, 48))
    assert pad_to_multiple(out, 16) is out

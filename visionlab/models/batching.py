"""The one batching path of the models: images of any sizes padded at the bottom and right
into one batch whose sides are multiples of the deepest stride, with their sizes remembered.

Padding at the bottom and right leaves pixel coordinates (and boxes) unchanged, so mapping
outputs back is a crop to ``[:H_i, :W_i]``. The R-CNN family pads with zeros
(torchvision's ``GeneralizedRCNNTransform.batch_images``); the FCNs pad with the
normalisation mean, which the backbone turns into zeros.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["batch_images", "pad_to_multiple"]


def _fill_tensor(fill: Sequence[float] | float, like: Tensor) -> Tensor:
    values = torch.as_tensor(fill, dtype=like.dtype, device=like.device).flatten()
    return values.view(1, -1, 1, 1) if values.numel() > 1 else values.view(1, 1, 1, 1)


def batch_images(
    images: Sequence[Tensor], size_divisible: int = 32, *, fill: Sequence[float] | float = 0.0
) -> tuple[Tensor, list[tuple[int, int]]]:
    """Stack images of different sizes into one batch padded at the bottom and right.

    Args:
        images: ``[Tensor[C, H_i, W_i]]`` (same C, dtype and device), e.g. float RGB in
            ``[0, 1]``.
        size_divisible: round the batch height and width up to multiples of this (so that
            every backbone stride divides them).
        fill: scalar or per-channel padding value.

    Returns:
        ``(batch Tensor[B, C, H, W], image_sizes [(H_i, W_i)])`` with ``H``, ``W`` the
        rounded maxima.

    Raises:
        ValueError: no images, or one that is not ``[C, H, W]``.
    """
    if len(images) == 0:
        raise ValueError("batch_images needs at least one image")
    if any(im.dim() != 3 for im in images):
        shapes = [tuple(im.shape) for im in images]
        raise ValueError(f"batch_images expects [C, H, W] tensors, got shapes {shapes}")
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    height += -height % size_divisible
    width += -width % size_divisible
    if all(s == (height, width) for s in sizes):
        return torch.stack(list(images)), sizes
    first = images[0]
    batch = first.new_empty((len(images), first.shape[0], height, width))
    batch.copy_(_fill_tensor(fill, first).expand_as(batch))
    for out, im in zip(batch, images):
        out[:, : im.shape[-2], : im.shape[-1]].copy_(im)
    return batch, sizes


def pad_to_multiple(x: Tensor, multiple: int, *, fill: Sequence[float] | float = 0.0) -> Tensor:
    """Pad a batch ``Tensor[B, C, H, W]`` at the bottom and right to multiples of
    ``multiple`` with ``fill`` (scalar or per channel); ``x`` itself when none is needed."""
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    fill_t = _fill_tensor(fill, x)
    out = F.pad(x - fill_t, (0, pad_w, 0, pad_h)) + fill_t
    out[..., :height, :width] = x  # exact copy, no (x - f) + f rounding
    return out

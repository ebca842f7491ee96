"""Pooling of regions into fixed-size features: spatial pyramid pooling (SPPNet, He et al.
2014) over whole maps or RoI windows, thin wrappers on torchvision's RoI Pool (Fast R-CNN)
and RoI Align (Mask R-CNN) kernels with one argument order, and RoI Align as matrix products
(:func:`roi_align_separable`, the fast CPU training path).

RoIs are either ``Tensor[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)`` or a list with one
``Tensor[K_i, 4]`` xyxy per image, always in input-image pixels; ``spatial_scale`` maps them
onto the feature map (1 / stride).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor

__all__ = ["roi_align", "roi_align_separable", "roi_pool", "spatial_pyramid_pool", "spp_rois"]

Rois = Tensor | list[Tensor]


def _check_features(features: Tensor) -> None:
    if not isinstance(features, Tensor) or features.dim() != 4:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features)
        raise ValueError(f"features must be Tensor[B, C, H, W], got {shape}")


def _rois_tensor(rois: Rois, features: Tensor) -> Tensor:
    """Validate ``rois`` and return them as ``Tensor[K, 5]`` in the features' dtype/device."""
    if isinstance(rois, list | tuple):
        for i, r in enumerate(rois):
            if not isinstance(r, Tensor) or r.dim() != 2 or r.shape[1] != 4:
                shape = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
                raise ValueError(f"boxes[{i}] must be Tensor[K, 4] xyxy, got {shape}")
        if len(rois) > features.shape[0]:
            raise ValueError(
                f"got boxes for {len(rois)} images but features hold {features.shape[0]}"
            )
        if not rois:
            return features.new_zeros((0, 5))
        idx = torch.cat(
            [torch.full_like(r[:, :1], i, dtype=features.dtype) for i, r in enumerate(rois)]
        )
        rois = torch.cat([idx.to(features.device), torch.cat(list(rois)).to(features)], dim=1)
        return rois
    if not isinstance(rois, Tensor) or rois.dim() != 2 or rois.shape[1] != 5:
        shape = tuple(rois.shape) if isinstance(rois, Tensor) else type(rois).__name__
        raise ValueError(
            "rois must be Tensor[K, 5] (batch_index, x1, y1, x2, y2) or a list of "
            f"Tensor[K_i, 4], got {shape}"
        )
    return rois.to(dtype=features.dtype, device=features.device)


def _check_levels(levels: Sequence[int]) -> tuple[int, ...]:
    levels = tuple(int(n) for n in levels)
    if not levels or min(levels) < 1:
        raise ValueError(f"levels must be positive bin counts, got {levels!r}")
    return levels


def spatial_pyramid_pool(
    features: Tensor | Sequence[Tensor],
    levels: Sequence[int] = (4, 2, 1),
    mode: str = "max",
) -> Tensor:
    """Spatial pyramid pooling: a fixed-length vector from a map of any size.

    Each level ``n`` splits the map into ``n x n`` bins (adaptive pooling: bin ``i`` spans
    ``floor(i * H / n)`` to ``ceil((i + 1) * H / n)``, never empty, even when ``H < n``) and
    pools each bin; the levels are concatenated, each flattened channel-major.

    Args:
        features: ``Tensor[B, C, H, W]``, or a sequence of windows ``Tensor[C, h_i, w_i]``
            (e.g. crops of one map) of any sizes.
        levels: bins per side for each pyramid level.
        mode: ``"max"`` (SPPNet) or ``"avg"``.

    Returns:
        ``Tensor[B, C * sum(n * n for n in levels)]`` (B = number of windows for a sequence).
    """
    levels = _check_levels(levels)
    if mode not in ("max", "avg"):
        raise ValueError(f"mode must be 'max' or 'avg', got {mode!r}")
    if not isinstance(features, Tensor):
        windows = list(features)
        for i, w in enumerate(windows):
            if not isinstance(w, Tensor) or w.dim() != 3 or 0 in w.shape[1:]:
                shape = tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__
                raise ValueError(f"window {i} must be a non-empty Tensor[C, h, w], got {shape}")
        if not windows:
            raise ValueError("spatial_pyramid_pool needs at least one window")
        return torch.cat([spatial_pyramid_pool(w[None], levels, mode) for w in windows])
    _check_features(features)
    if 0 in features.shape[2:]:
        raise ValueError(f"cannot pool an empty map of shape {tuple(features.shape)}")
    pool = F.adaptive_max_pool2d if mode == "max" else F.adaptive_avg_pool2d
    return torch.cat([pool(features, n).flatten(1) for n in levels], dim=1)


def spp_rois(
    features: Tensor,
    rois: Rois,
    spatial_scale: float = 1.0,
    levels: Sequence[int] = (6, 3, 2, 1),
) -> Tensor:
    """SPPNet's pyramid max pooling of image windows on a shared feature map.

    Each window is projected onto the map (corners rounded, as in SPPNet and RoI Pool) and
    pyramid-pooled with one RoI Pool per level: RoI Pool with output size ``n`` is an
    adaptive max over ``n x n`` bins of the window, never empty, so every window, even one
    smaller than ``n`` cells, gives the same length. The bins of a window that extends past
    the map are laid out over the whole window and then clipped to the map; windows wholly
    outside the map pool to 0.

    Args:
        features: ``Tensor[B, C, H, W]``.
        rois: ``Tensor[K, 5]`` ``(batch_index, x1, y1, x2, y2)`` or a list of per-image
            ``Tensor[K_i, 4]``, xyxy in image pixels.
        spatial_scale: feature cells per image pixel (1 / total stride).
        levels: bins per side for each level; SPPNet's detector uses (6, 3, 2, 1).

    Returns:
        ``Tensor[K, C * sum(n * n for n in levels)]``, laid out as :func:`spatial_pyramid_pool`.
    """
    _check_features(features)
    levels = _check_levels(levels)
    rois = _rois_tensor(rois, features)
    return torch.cat(
        [
            torchvision.ops.roi_pool(features, rois, (n, n), float(spatial_scale)).flatten(1)
            for n in levels
        ],
        dim=1,
    )


def roi_pool(
    features: Tensor,
    boxes: Rois,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """RoI max pooling (Fast R-CNN, Girshick 2015, section 2.1), torchvision's kernel.

    Args:
        features: ``Tensor[B, C, H, W]``.
        boxes: ``Tensor[K, 5]`` ``(batch_index, x1, y1, x2, y2)`` or list of ``Tensor[K_i, 4]``.
        output_size: ``n`` or ``(h, w)`` bins.
        spatial_scale: feature cells per image pixel.

    Returns:
        ``Tensor[K, C, h, w]``.
    """
    _check_features(features)
    rois = _rois_tensor(boxes, features)
    return torchvision.ops.roi_pool(features, rois, output_size, float(spatial_scale))


def roi_align(
    features: Tensor,
    boxes: Rois,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoI Align (Mask R-CNN, He et al. 2017, section 3), torchvision's kernel.

    Args:
        features: ``Tensor[B, C, H, W]``.
        boxes: ``Tensor[K, 5]`` ``(batch_index, x1, y1, x2, y2)`` or list of ``Tensor[K_i, 4]``.
        output_size: ``n`` or ``(h, w)`` bins.
        spatial_scale: feature cells per image pixel.
        sampling_ratio: bilinear samples per bin side; ``<= 0`` adapts to the RoI size.
        aligned: shift boxes by -0.5 cell so that pixel centres line up (Detectron2's choice);
            ``False`` reproduces the original Mask R-CNN / torchvision default.

    Returns:
        ``Tensor[K, C, h, w]``, differentiable with respect to ``features``.
    """
    _check_features(features)
    rois = _rois_tensor(boxes, features)
    return torchvision.ops.roi_align(
        features, rois, output_size, float(spatial_scale), int(sampling_ratio), bool(aligned)
    )


def _axis_weights(start: Tensor, length: Tensor, bins: int, samples: int, size: int) -> Tensor:
    """Bilinear weights ``Tensor[R, bins, size]`` of RoI Align along one axis: bin ``p``'s
    ``samples`` sample points, each spread over its two neighbouring cells, averaged."""
    bin_size = (length / bins)[:, None, None]  # [R, 1, 1]
    offsets = torch.arange(bins, device=start.device, dtype=start.dtype)[None, :, None]
    sub = (torch.arange(samples, device=start.device, dtype=start.dtype) + 0.5) / samples
    coord = start[:, None, None] + (offsets + sub[None, None, :]) * bin_size  # [R, bins, s]
    valid = (coord >= -1.0) & (coord <= size)  # samples far outside the map count as zero
    coord = coord.clamp(min=0)
    low = coord.floor().clamp(max=size - 1)
    high = (low + 1).clamp(max=size - 1)
    coord = torch.where(low >= size - 1, low, coord)
    frac = coord - low
    cells = torch.arange(size, device=start.device, dtype=start.dtype)  # [size]
    weight = (1 - frac)[..., None] * (cells == low[..., None]) + frac[..., None] * (
        cells == high[..., None]
    )  # [R, bins, s, size]
    return (weight * valid[..., None]).sum(dim=2) / samples


def roi_align_separable(
    features: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int = 2
) -> Tensor:
    """RoI Align (He et al. 2017) as one matrix product per image; equal to
    :func:`visionlab.ops.roi_align` with ``aligned=False`` and a fixed ``sampling_ratio``.

    Bilinear interpolation is separable, so the average of a bin's ``s x s`` samples is a
    fixed linear map of the feature map: the outer product of a row-weight and a
    column-weight vector. Stacking those maps for all RoIs of an image gives one matrix
    ``Tensor[R_i * P * P, H * W]``, and pooling is ``features_b @ map.T``. On the small maps
    of CPU detectors (8-16 cells a side) this runs several times faster than torchvision's
    CPU kernel, whose backward pass scatters one sample at a time; autograd gives the exact
    gradient of the same sum.

    Args:
        features: ``Tensor[B, C, H, W]``.
        rois: ``Tensor[R, 5]`` rows ``(batch_index, x1, y1, x2, y2)`` in image pixels.
        output_size: bins per side ``P``.
        spatial_scale: feature cells per image pixel.
        sampling_ratio: sample points per bin side (> 0).

    Returns:
        ``Tensor[R, C, P, P]``.
    """
    if sampling_ratio <= 0:
        raise ValueError("roi_align_separable needs a fixed sampling_ratio > 0")
    channels, height, width = features.shape[-3:]
    num, bins = len(rois), output_size * output_size
    if num == 0:
        return features.new_zeros((0, channels, output_size, output_size))
    boxes = rois[:, 1:].to(features.dtype) * spatial_scale
    extent = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1.0)  # [R, 2] (w, h)
    a_y = _axis_weights(boxes[:, 1], extent[:, 1], output_size, sampling_ratio, height)
    a_x = _axis_weights(boxes[:, 0], extent[:, 0], output_size, sampling_ratio, width)
    # [R, P, 1, H, 1] * [R, 1, P, 1, W] -> [R, P * P, H * W]
    weights = (a_y[:, :, None, :, None] * a_x[:, None, :, None, :]).reshape(num, bins, -1)
    image_idx = rois[:, 0].long()
    order = torch.argsort(image_idx, stable=True)
    counts = torch.bincount(image_idx, minlength=features.shape[0]).tolist()
    flat = features.flatten(2)  # [B, C, H * W]
    chunks = []
    for b, chunk in enumerate(weights[order].split(counts)):
        if len(chunk):
            pooled = flat[b] @ chunk.reshape(-1, height * width).T  # [C, R_b * P * P]
            chunks.append(pooled.reshape(channels, len(chunk), bins).transpose(0, 1))
    out = torch.cat(chunks)[torch.argsort(order)]  # back to the input order
    return out.reshape(num, channels, output_size, output_size)

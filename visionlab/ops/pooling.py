"""Pooling of regions into fixed-size features: spatial pyramid pooling (SPPNet, He et al.
2014) over whole maps or RoI windows, and thin wrappers on torchvision's RoI Pool (Fast R-CNN)
and RoI Align (Mask R-CNN) kernels with one argument order.

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

__all__ = ["roi_align", "roi_pool", "spatial_pyramid_pool", "spp_rois"]

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

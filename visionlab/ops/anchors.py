"""AnchorGenerator: the reference boxes of the RPN (Faster R-CNN, Ren et al. 2015, section 3.1).

At every cell of every feature level it places ``len(sizes) * len(aspect_ratios)`` boxes
centred on the cell's top-left image pixel. Anchor order is torchvision's: cell-major (rows,
then columns), then aspect ratio, then size, so the two generators are interchangeable.
Generated grids are cached per (image size, feature sizes, strides, dtype, device).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["AnchorGenerator"]

_CACHE_SIZE = 16


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int | float):
        return int(value), int(value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair (h, w), got {value!r}")
    return int(value[0]), int(value[1])


class AnchorGenerator:
    """Anchors for a set of feature levels.

    Args:
        sizes: per feature level, the anchor sizes (square root of the area, in pixels).
            A flat tuple of numbers means one size per level (torchvision's convention).
        aspect_ratios: per level, the ratios ``height / width``; a single tuple (or a single
            tuple of tuples) is used for every level.
        cache: keep the last few generated grids and return copies of them.
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]] | Sequence[float] = ((32, 64, 128),),
        aspect_ratios: Sequence[Sequence[float]] | Sequence[float] = ((0.5, 1.0, 2.0),),
        *,
        cache: bool = True,
    ) -> None:
        if len(sizes) == 0:
            raise ValueError("sizes must name at least one feature level")
        if not isinstance(sizes[0], Sequence):
            sizes = tuple((s,) for s in sizes)
        if len(aspect_ratios) == 0:
            raise ValueError("aspect_ratios must not be empty")
        if not isinstance(aspect_ratios[0], Sequence):
            aspect_ratios = (tuple(aspect_ratios),)
        if len(aspect_ratios) == 1:
            aspect_ratios = tuple(aspect_ratios) * len(sizes)
        if len(aspect_ratios) != len(sizes):
            raise ValueError(
                f"sizes has {len(sizes)} levels but aspect_ratios {len(aspect_ratios)}; give "
                "one tuple of ratios per level, or a single tuple for all levels"
            )
        for level, (s, r) in enumerate(zip(sizes, aspect_ratios)):
            if not s or not r or min(s) <= 0 or min(r) <= 0:
                raise ValueError(f"level {level}: sizes {s!r} and ratios {r!r} must be > 0")
        self.sizes = tuple(tuple(float(v) for v in s) for s in sizes)
        self.aspect_ratios = tuple(tuple(float(v) for v in r) for r in aspect_ratios)
        self.cell_anchors = [
            self._cell_anchors(s, r) for s, r in zip(self.sizes, self.aspect_ratios)
        ]
        self.cache = cache
        self._cache: OrderedDict[tuple, list[Tensor]] = OrderedDict()

    def __repr__(self) -> str:
        return f"AnchorGenerator(sizes={self.sizes}, aspect_ratios={self.aspect_ratios})"

    @staticmethod
    def _cell_anchors(sizes: tuple[float, ...], ratios: tuple[float, ...]) -> Tensor:
        """Zero-centred anchors ``Tensor[len(ratios) * len(sizes), 4]``, ratio-major, rounded."""
        scales = torch.tensor(sizes, dtype=torch.float32)
        h_ratios = torch.sqrt(torch.tensor(ratios, dtype=torch.float32))
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
        return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()

    def num_anchors_per_location(self) -> list[int]:
        """Anchors per feature-map cell, per level."""
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios)]

    def __call__(
        self,
        image_size: tuple[int, int],
        feature_map_sizes: Sequence[tuple[int, int]],
        strides: Sequence[int | tuple[int, int]] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> list[Tensor]:
        """Anchors per level.

        Args:
            image_size: ``(H, W)`` of the (padded) input image.
            feature_map_sizes: ``(h, w)`` of each level's feature map.
            strides: per level an int or ``(stride_h, stride_w)``; derived as
                ``(H // h, W // w)`` when omitted, as torchvision does.
            device, dtype: of the returned tensors (default CPU, float32).

        Returns:
            Per level ``Tensor[h * w * A, 4]`` xyxy anchors in image pixels, where ``A`` is
            that level's :meth:`num_anchors_per_location`.
        """
        if len(feature_map_sizes) != len(self.cell_anchors):
            raise ValueError(
                f"got {len(feature_map_sizes)} feature maps but the generator has "
                f"{len(self.cell_anchors)} levels of sizes/aspect ratios"
            )
        height, width = _pair(image_size, "image_size")
        grids = [_pair(s, "feature map size") for s in feature_map_sizes]
        if strides is None:
            if any(h <= 0 or w <= 0 for h, w in grids):
                raise ValueError(f"cannot derive strides from empty feature maps {grids}")
            stride_pairs = [(height // h, width // w) for h, w in grids]
        else:
            if len(strides) != len(grids):
                raise ValueError(f"got {len(strides)} strides for {len(grids)} feature maps")
            stride_pairs = [_pair(s, "stride") for s in strides]
        device = torch.device(device) if device is not None else torch.device("cpu")
        key = (tuple(grids), tuple(stride_pairs), device, dtype)
        if self.cache:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return [a.clone() for a in hit]
        anchors = [
            self._grid(base, grid, stride, device, dtype)
            for base, grid, stride in zip(self.cell_anchors, grids, stride_pairs)
        ]
        if self.cache:
            self._cache[key] = anchors
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
            return [a.clone() for a in anchors]
        return anchors

    @staticmethod
    def _grid(
        base: Tensor,
        grid: tuple[int, int],
        stride: tuple[int, int],
        device: torch.device,
        dtype: torch.dtype,
    ) -> Tensor:
        (grid_h, grid_w), (stride_h, stride_w) = grid, stride
        base = base.to(device=device, dtype=dtype)
        shift_x = torch.arange(grid_w, dtype=dtype, device=device) * stride_w  # [w]
        shift_y = torch.arange(grid_h, dtype=dtype, device=device) * stride_h  # [h]
        shifts = torch.empty(grid_h, grid_w, 1, 4, dtype=dtype, device=device)
        shifts[..., 0::2] = shift_x[None, :, None, None]
        shifts[..., 1::2] = shift_y[:, None, None, None]
        return (shifts + base).reshape(-1, 4)  # [h, w, A, 4] -> [h * w * A, 4]

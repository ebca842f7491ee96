"""Box utilities shared by every detector: format conversion, clipping, areas, IoU / GIoU and
non-maximum suppression (hard NMS on torchvision's kernels, soft NMS vectorised in torch).

Every box tensor is ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)`` absolute pixels unless a function
says otherwise (only :func:`box_convert` speaks other formats).
"""

from __future__ import annotations

import math

import torch
import torchvision
from torch import Tensor

__all__ = [
    "batched_nms",
    "batched_soft_nms",
    "box_area",
    "box_convert",
    "box_iou",
    "clip_boxes_to_image",
    "enclosing_boxes",
    "generalized_box_iou",
    "nms",
    "remove_small_boxes",
    "soft_nms",
]

_FORMATS = ("xyxy", "xywh", "cxcywh")
_SOFT_NMS_DENSE = 2048


def _check_boxes(boxes: Tensor, name: str = "boxes") -> None:
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be a Tensor[N, 4], got {type(boxes).__name__}")
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"{name} must have shape [..., 4], got {tuple(boxes.shape)}")


def _upcast(t: Tensor) -> Tensor:
    """Float32 for integer and half inputs, so products of coordinates cannot overflow."""
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    return t.float()


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert boxes between ``xyxy``, ``xywh`` (top-left corner, size) and ``cxcywh``.

    Args:
        boxes: ``Tensor[..., 4]`` in ``in_fmt``.
        in_fmt, out_fmt: one of ``"xyxy"``, ``"xywh"``, ``"cxcywh"``.

    Returns:
        ``Tensor[..., 4]`` in ``out_fmt``, same dtype and device (a new tensor even when the
        formats are equal).
    """
    _check_boxes(boxes)
    for fmt in (in_fmt, out_fmt):
        if fmt not in _FORMATS:
            raise ValueError(f"unknown box format {fmt!r}; expected one of {_FORMATS}")
    if in_fmt == out_fmt:
        return boxes.clone()
    a, b = boxes[..., :2], boxes[..., 2:]
    if in_fmt == "xywh":  # to xyxy
        b = a + b
    elif in_fmt == "cxcywh":
        half = 0.5 * b
        a, b = a - half, half.add_(a)
    if out_fmt == "xywh":  # from xyxy
        b = b - a
    elif out_fmt == "cxcywh":
        a, b = 0.5 * (a + b), b - a
    return torch.cat([a, b], dim=-1)


def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clip ``Tensor[..., 4]`` xyxy boxes to an image of ``size = (H, W)``.

    x coordinates end up in ``[0, W]`` and y coordinates in ``[0, H]``; returns a new tensor.
    """
    _check_boxes(boxes)
    height, width = int(size[0]), int(size[1])
    bounds = boxes.new_tensor([width, height, width, height])
    return boxes.clamp(min=0).clamp_(max=bounds)


def box_area(boxes: Tensor) -> Tensor:
    """Areas of ``Tensor[N, 4]`` xyxy boxes, as ``Tensor[N]`` (float32 for integer input)."""
    _check_boxes(boxes)
    boxes = _upcast(boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def enclosing_boxes(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """``Tensor[N, 4]``: the smallest box around each pair ``(boxes1[i], boxes2[i])`` (a
    relationship's union box)."""
    return torch.cat(
        [
            torch.minimum(boxes1[..., :2], boxes2[..., :2]),
            torch.maximum(boxes1[..., 2:], boxes2[..., 2:]),
        ],
        dim=-1,
    )


def _inter_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise intersection and union areas, both ``Tensor[N, M]``.

    Works per coordinate (no ``[N, M, 2]`` temporaries) and in place where it can; the
    arithmetic is the same as torchvision's, so results agree bit for bit.
    """
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    b1, b2 = _upcast(boxes1), _upcast(boxes2)
    w = torch.minimum(b1[:, None, 2], b2[None, :, 2]).sub_(torch.maximum(b1[:, None, 0], b2[:, 0]))
    h = torch.minimum(b1[:, None, 3], b2[None, :, 3]).sub_(torch.maximum(b1[:, None, 1], b2[:, 1]))
    inter = w.clamp_(min=0).mul_(h.clamp_(min=0))
    union = (area1[:, None] + area2).sub_(inter)
    return inter, union


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection over union.

    Args:
        boxes1: ``Tensor[N, 4]`` xyxy.
        boxes2: ``Tensor[M, 4]`` xyxy.

    Returns:
        ``Tensor[N, M]``; pairs whose union is empty (two zero-area boxes) get IoU 0, not NaN.
    """
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    inter, union = _inter_union(boxes1, boxes2)
    return inter.div_(union).nan_to_num_(nan=0.0)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU (Rezatofighi et al., CVPR 2019), in ``[-1, 1]``.

    Args:
        boxes1: ``Tensor[N, 4]`` xyxy.
        boxes2: ``Tensor[M, 4]`` xyxy.

    Returns:
        ``Tensor[N, M]``; as in :func:`box_iou`, an empty union counts as IoU 0, and an empty
        enclosing box (coincident zero-area boxes) adds no penalty.
    """
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    inter, union = _inter_union(boxes1, boxes2)
    iou = (inter / union).nan_to_num_(nan=0.0)
    b1, b2 = _upcast(boxes1), _upcast(boxes2)
    w = torch.maximum(b1[:, None, 2], b2[None, :, 2]).sub_(torch.minimum(b1[:, None, 0], b2[:, 0]))
    h = torch.maximum(b1[:, None, 3], b2[None, :, 3]).sub_(torch.minimum(b1[:, None, 1], b2[:, 1]))
    area_c = w.clamp_(min=0).mul_(h.clamp_(min=0))
    return iou - ((area_c - union) / area_c).nan_to_num_(nan=0.0)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices (``Tensor[K] int64``) of the xyxy boxes whose width and height are >= min_size."""
    _check_boxes(boxes)
    side = torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    return torch.where(side >= min_size)[0]


def _check_scored(boxes: Tensor, scores: Tensor) -> None:
    _check_boxes(boxes)
    if boxes.dim() != 2:
        raise ValueError(f"boxes must be Tensor[N, 4], got shape {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(
            f"scores must be Tensor[N] matching boxes [N, 4]; got {tuple(scores.shape)} "
            f"for boxes {tuple(boxes.shape)}"
        )


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Hard non-maximum suppression (torchvision's kernel).

    Args:
        boxes: ``Tensor[N, 4]`` xyxy.
        scores: ``Tensor[N]``.
        iou_threshold: boxes overlapping a kept box with IoU > this are dropped.

    Returns:
        ``Tensor[K] int64``: indices of the kept boxes, by decreasing score.
    """
    _check_scored(boxes, scores)
    return torchvision.ops.nms(boxes, scores.to(boxes.dtype), float(iou_threshold))


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Non-maximum suppression done independently per category ``idxs`` (torchvision's kernel).

    Args:
        boxes: ``Tensor[N, 4]`` xyxy.
        scores: ``Tensor[N]``.
        idxs: ``Tensor[N] int64``, the category of each box; boxes of different categories
            never suppress each other.
        iou_threshold: IoU above which a lower-scored box of the same category is dropped.

    Returns:
        ``Tensor[K] int64``: kept indices, by decreasing score.
    """
    _check_scored(boxes, scores)
    if idxs.shape != scores.shape:
        raise ValueError(f"idxs must be Tensor[N] like scores, got {tuple(idxs.shape)}")
    return torchvision.ops.batched_nms(boxes, scores.to(boxes.dtype), idxs, float(iou_threshold))


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    method: str = "linear",
    sigma: float = 0.5,
    iou_threshold: float = 0.3,
    score_threshold: float = 0.001,
) -> tuple[Tensor, Tensor]:
    """Soft non-maximum suppression (Bodla et al., "Soft-NMS", ICCV 2017, Algorithm 1).

    Repeatedly selects the highest-scoring remaining box and decays the scores of the others
    by their overlap with it instead of removing them:

    - ``"linear"``: ``s *= 1 - IoU`` for boxes with ``IoU > iou_threshold``;
    - ``"gaussian"``: ``s *= exp(-IoU**2 / sigma)`` for every box.

    A box whose (decayed) score falls below ``score_threshold`` is discarded. Each selection
    step is a handful of tensor ops over all boxes (no per-pair Python loop); ties pick the
    lowest index.

    Args:
        boxes: ``Tensor[N, 4]`` xyxy.
        scores: ``Tensor[N]``.

    Returns:
        ``(keep, kept_scores)``: ``Tensor[K] int64`` indices in selection order and
        ``Tensor[K]`` their decayed scores (non-increasing), in the dtype of ``scores``.
    """
    _check_scored(boxes, scores)
    if method not in ("linear", "gaussian"):
        raise ValueError(f"method must be 'linear' or 'gaussian', got {method!r}")
    if method == "gaussian" and sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    n = boxes.shape[0]
    device = boxes.device
    work = _upcast(scores).clone()
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=device), scores.new_empty(0)
    b = _upcast(boxes)

    def decay_factors(iou: Tensor) -> Tensor:
        if method == "linear":
            return torch.where(iou > iou_threshold, 1.0 - iou, 1.0)
        return iou.square().div_(-sigma).exp_()

    # Up to _SOFT_NMS_DENSE boxes one [N, N] matrix of decay factors (<= 16 MB) is cheaper
    # than N rows of IoU; beyond it each step computes the selected box's row.
    decay_all = decay_factors(box_iou(b, b)) if n <= _SOFT_NMS_DENSE else None
    areas = box_area(b)
    x1, y1, x2, y2 = b.unbind(dim=1)
    alive = work >= score_threshold
    neg_inf = torch.tensor(-math.inf, dtype=work.dtype, device=device)
    keep: list[int] = []
    kept = work.new_empty(n)
    for step in range(n):
        # one host sync per step: the index of the best live box, or the end
        i = int(torch.where(alive, work, neg_inf).argmax())
        if not bool(alive[i]):
            break
        keep.append(i)
        kept[step] = work[i]
        alive[i] = False
        if decay_all is not None:
            work.mul_(decay_all[i])
        else:  # IoU of the selected box with every box, [N]
            w = torch.minimum(x2, x2[i]).sub_(torch.maximum(x1, x1[i])).clamp_(min=0)
            h = torch.minimum(y2, y2[i]).sub_(torch.maximum(y1, y1[i])).clamp_(min=0)
            inter = w.mul_(h)
            work.mul_(decay_factors(inter.div_(areas + areas[i] - inter).nan_to_num_(nan=0.0)))
        alive &= work >= score_threshold
    keep_t = torch.tensor(keep, dtype=torch.int64, device=device)
    return keep_t, kept[: len(keep)].to(scores.dtype)


def batched_soft_nms(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor,
    method: str = "linear",
    sigma: float = 0.5,
    iou_threshold: float = 0.3,
    score_threshold: float = 0.001,
) -> tuple[Tensor, Tensor]:
    """:func:`soft_nms` done independently per category ``idxs`` (``Tensor[N] int64``).

    Boxes are shifted per category so that boxes of different categories never overlap, the
    same trick torchvision's ``batched_nms`` uses. Returns ``(keep, kept_scores)`` as
    :func:`soft_nms`, in selection order across all categories.
    """
    _check_scored(boxes, scores)
    if idxs.shape != scores.shape:
        raise ValueError(f"idxs must be Tensor[N] like scores, got {tuple(idxs.shape)}")
    if boxes.numel() == 0:
        return soft_nms(boxes, scores, method, sigma, iou_threshold, score_threshold)
    b = _upcast(boxes)
    offsets = idxs.to(b.dtype) * (b.max() - b.min() + 1)
    return soft_nms(b + offsets[:, None], scores, method, sigma, iou_threshold, score_threshold)

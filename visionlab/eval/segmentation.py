"""Semantic segmentation metrics from a confusion matrix: per-class IoU, mIoU, pixel accuracy,
mean class accuracy and frequency-weighted IoU (the four numbers of Long et al. 2015, FCN,
Section 5), with an ignore label (255) left out of everything; and two diagnostics that
split the error into *where* and *what*: ``fg_IoU`` (objects vs background, classes merged)
and ``fg_class_acc`` (the share of pixels that are foreground in both the ground truth and
the prediction which get the right class).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from visionlab.constants import IGNORE_INDEX
from visionlab.errors import VisionLabError

__all__ = ["SegmentationEvaluator", "confusion_matrix", "segmentation_scores"]


def confusion_matrix(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = IGNORE_INDEX
) -> Tensor:
    """Pixel confusion matrix (rows: ground truth, columns: prediction), by ``torch.bincount``.

    Args:
        pred: ``Tensor[..., H, W]`` int class indices in ``0..num_classes-1``.
        target: ``Tensor[..., H, W]`` int, same shape; pixels equal to ``ignore_index`` are
            left out (their prediction too).
        num_classes: C, background included.
        ignore_index: the "don't care" label (255 in VOC), or None.

    Returns:
        ``Tensor[C, C]`` int64 on the inputs' device: ``cm[t, p]`` = number of pixels of
        class ``t`` predicted as ``p``.

    Raises:
        ValueError: shapes differ, or a prediction is outside ``0..C-1``.
        VisionLabError: a target label is outside ``0..C-1`` and is not ``ignore_index``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.is_floating_point() or target.is_floating_point():
        raise ValueError("pred and target must be integer class maps (argmax the logits first)")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = (
        target != ignore_index
        if ignore_index is not None
        else torch.ones_like(target, dtype=torch.bool)
    )
    pred, target = pred[keep], target[keep]
    if target.numel():
        bad = (target < 0) | (target >= num_classes)
        if bad.any():
            value = int(target[bad][0])
            raise VisionLabError(
                f"segmentation target has label {value}, outside 0..{num_classes - 1} "
                f"and not the ignore index {ignore_index}"
            )
        if int(pred.min()) < 0 or int(pred.max()) >= num_classes:
            raise ValueError(f"predictions must be in 0..{num_classes - 1}")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes)


def segmentation_scores(cm: Tensor, class_names: Sequence[str] | None = None) -> dict:
    """Scores of a confusion matrix ``Tensor[C, C]`` (rows: ground truth).

    Returns:
        ``{"mIoU", "pixel_acc", "mean_acc", "fwIoU", "fg_IoU", "fg_class_acc",
        "per_class": {name: IoU}}`` as floats. A class absent from both prediction and
        ground truth has IoU NaN and is left out of the means (so is a class without ground
        truth from ``mean_acc``); NaN throughout when no pixel was counted. ``fg_IoU`` and
        ``fg_class_acc`` take class 0 as the background: a segmenter whose ``fg_IoU`` is high
        but ``fg_class_acc`` low finds the objects and misnames them.
    """
    cm = cm.detach().cpu().double()
    tp = cm.diagonal()
    gt_pixels, pred_pixels = cm.sum(1), cm.sum(0)
    union = gt_pixels + pred_pixels - tp
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
    acc = torch.where(gt_pixels > 0, tp / gt_pixels.clamp(min=1), nan)
    total = cm.sum()
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(tp))]
    seen = ~iou.isnan()
    both_fg = cm[1:, 1:].sum()
    fg_union = total - cm[0, 0]
    return {
        "mIoU": float(iou[seen].mean()) if seen.any() else float("nan"),
        "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        "mean_acc": float(acc.nanmean()) if (~acc.isnan()).any() else float("nan"),
        "fwIoU": float((gt_pixels[seen] * iou[seen]).sum() / total) if total > 0 else float("nan"),
        "fg_IoU": float(both_fg / fg_union) if fg_union > 0 else float("nan"),
        "fg_class_acc": float(cm[1:, 1:].trace() / both_fg) if both_fg > 0 else float("nan"),
        "per_class": {n: float(v) for n, v in zip(names, iou.tolist())},
    }


class SegmentationEvaluator:
    """Streaming semantic segmentation evaluation over a confusion matrix.

    ``update(pred, target)`` takes ``[B, H, W]`` or ``[H, W]`` int64 class maps (targets may
    hold ``ignore_index``), or, for ``pred``, logits ``[B, C, H, W]`` (argmax over C).
    ``compute()`` returns :func:`segmentation_scores`: ``mIoU``, ``pixel_acc``, ``mean_acc``,
    ``fwIoU``, ``fg_IoU``, ``fg_class_acc`` and ``per_class`` (name -> IoU; NaN for a class
    absent from both prediction and ground truth, left out of the mean). ``primary = "mIoU"``.

    Args:
        num_classes: C, background included.
        class_names: C names, or the C - 1 foreground names (``"background"`` is put first),
            or None (``"0"``, ``"1"``, ...).
        ignore_index: target label left out (255).
    """

    primary = "mIoU"

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        ignore_index: int | None = IGNORE_INDEX,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        names = [str(c) for c in class_names] if class_names is not None else None
        if names is not None and len(names) == num_classes - 1:
            names = ["background", *names]
        if names is not None and len(names) != num_classes:
            raise ValueError(f"{len(names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.class_names = names or [str(i) for i in range(num_classes)]
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        """Forget every pixel seen so far."""
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor | dict) -> None:
        """Add a batch. ``target`` may also be a dict with ``semantic``."""
        if isinstance(target, dict):
            target = target["semantic"]
        if pred.is_floating_point() and pred.ndim == target.ndim + 1:
            pred = pred.argmax(dim=-3)
        cm = confusion_matrix(pred, target.to(pred.device), self.num_classes, self.ignore_index)
        self.confusion += cm.cpu()

    def compute(self) -> dict:
        """Scores of every pixel seen since the last :meth:`reset`."""
        return segmentation_scores(self.confusion, self.class_names)

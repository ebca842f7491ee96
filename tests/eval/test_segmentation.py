"""Semantic segmentation metrics against a naive per-class computation with ignore 255."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from visionlab.errors import VisionLabError
from visionlab.eval.segmentation import SegmentationEvaluator, confusion_matrix


def _naive(pred: np.ndarray, target: np.ndarray, num_classes: int) -> dict:
    valid = target != 255
    ious = []
    for c in range(num_classes):
        p, t = (pred == c) & valid, (target == c) & valid
        union = (p | t).sum()
        ious.append((p & t).sum() / union if union else math.nan)
    return {
        "per_class": ious,
        "mIoU": float(np.nanmean(ious)),
        "pixel_acc": float(((pred == target) & valid).sum() / valid.sum()),
    }


def _random(seed: int, shape=(3, 17, 23), num_classes: int = 5):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes - 1, shape, generator=g)  # class 4 never in gt
    target[torch.rand(shape, generator=g) < 0.2] = 255
    pred = torch.where(
        torch.rand(shape, generator=g) < 0.6, target, torch.randint(0, 3, shape, generator=g)
    )
    pred[pred == 255] = 0
    return pred, target


@pytest.mark.parametrize("seed", range(3))
def test_matches_naive_with_ignore(seed):
    pred, target = _random(seed)
    ev = SegmentationEvaluator(5, ["a", "b", "c", "d"])  # foreground names: background added
    ev.update(pred[:2], target[:2])  # a batch [B, H, W]
    ev.update(pred[2], target[2])  # and a single [H, W]
    result = ev.compute()
    ref = _naive(pred.numpy(), target.numpy(), 5)
    assert result["mIoU"] == pytest.approx(ref["mIoU"])
    assert result["pixel_acc"] == pytest.approx(ref["pixel_acc"])
    assert list(result["per_class"]) == ["background", "a", "b", "c", "d"]
    np.testing.assert_allclose(list(result["per_class"].values()), ref["per_class"])
    assert math.isnan(result["per_class"]["d"])  # in neither prediction nor ground truth
    assert ev.primary == "mIoU"


def test_confusion_matrix_and_other_scores():
    target = torch.tensor([[0, 0, 1, 255], [1, 2, 2, 2]])
    pred = torch.tensor([[0, 1, 1, 2], [1, 2, 0, 2]])
    cm = confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    ev = SegmentationEvaluator(3)
    ev.update(pred, target)
    r = ev.compute()
    ious = [1 / 3, 2 / 3, 2 / 3]
    assert r["mIoU"] == pytest.approx(np.mean(ious))
    assert r["pixel_acc"] == pytest.approx(5 / 7)
    assert r["mean_acc"] == pytest.approx(np.mean([1 / 2, 1, 2 / 3]))
    assert r["fwIoU"] == pytest.approx((2 * ious[0] + 2 * ious[1] + 3 * ious[2]) / 7)
    # classes 1, 2 merged: foreground in both at 4 pixels, in either at 6 (the 255 is left out)
    assert r["fg_IoU"] == pytest.approx(4 / 6)
    assert r["fg_class_acc"] == pytest.approx(4 / 4)


def test_foreground_diagnostics_separate_finding_from_naming():
    target = torch.tensor([[0, 1, 1, 2, 2, 0]])
    swapped = torch.tensor([[0, 2, 2, 1, 1, 0]])  # every object found, every one misnamed
    ev = SegmentationEvaluator(3)
    ev.update(swapped, target)
    r = ev.compute()
    assert r["fg_IoU"] == 1.0 and r["fg_class_acc"] == 0.0 and r["per_class"]["1"] == 0.0
    empty = SegmentationEvaluator(3)
    empty.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long))
    assert math.isnan(empty.compute()["fg_IoU"]) and math.isnan(empty.compute()["fg_class_acc"])


def test_logits_and_target_dicts_are_accepted():
    pred, target = _random(4)
    logits = torch.nn.functional.one_hot(pred, 5).permute(0, 3, 1, 2).float()
    a, b = SegmentationEvaluator(5), SegmentationEvaluator(5)
    a.update(pred, target)
    b.update(logits, {"semantic": target})
    assert torch.equal(a.confusion, b.confusion)


def test_bad_labels():
    with pytest.raises(VisionLabError, match="label 7"):
        confusion_matrix(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 7), 3)
    with pytest.raises(ValueError, match="differ"):
        confusion_matrix(
            torch.zeros(2, 2, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), 3
        )
    with pytest.raises(ValueError, match="class names"):
        SegmentationEvaluator(5, ["a", "b"])

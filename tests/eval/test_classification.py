"""Top-k accuracy and the streaming classification evaluator."""

from __future__ import annotations

import math

import pytest
import torch

from visionlab.errors import VisionLabError
from visionlab.eval.classification import ClassificationEvaluator, topk_accuracy


def test_topk_hand_case():
    logits = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.1, 0.4], [0.3, 0.3, 0.4], [0.0, 0.1, 0.9]])
    labels = torch.tensor([1, 2, 0, 0])
    acc = topk_accuracy(logits, labels, ks=(1, 2, 5))
    assert acc["top1"] == pytest.approx(1 / 4)  # only the first
    assert acc["top2"] == pytest.approx(3 / 4)  # + second (0.4) and third (0.3 tie, index 0)
    assert acc["top5"] == 1.0  # k clipped to C = 3
    assert math.isnan(topk_accuracy(torch.zeros(0, 3), torch.zeros(0))["top1"])


def test_evaluator_streams_logits_and_prediction_dicts():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(50, 10, generator=g), torch.randint(0, 10, (50,), generator=g)
    ev = ClassificationEvaluator(10)
    for s in range(0, 50, 16):
        ev.update(logits[s : s + 16], {"labels": labels[s : s + 16]})
    result = ev.compute()
    ref = topk_accuracy(logits, labels)
    assert result["top1"] == pytest.approx(ref["top1"]) and result["top5"] == pytest.approx(
        ref["top5"]
    )
    ev2 = ClassificationEvaluator(10)
    preds = [{"labels": row.topk(5).indices, "scores": row.topk(5).values} for row in logits]
    ev2.update(preds, [{"labels": y} for y in labels])
    assert ev2.compute()["top1"] == result["top1"] and ev2.compute()["top5"] == result["top5"]
    per_class = result["per_class"]
    for c in range(10):
        mask = labels == c
        expected = (logits[mask].argmax(1) == c).float().mean().item() if mask.any() else math.nan
        assert per_class[str(c)] == pytest.approx(expected, nan_ok=True)
    assert ev.primary == "top1"


def test_bad_labels():
    with pytest.raises(VisionLabError, match=r"outside 0\.\.2"):
        topk_accuracy(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"\[B, 3\]"):
        ClassificationEvaluator(3).update(torch.zeros(2, 4), torch.tensor([0, 1]))

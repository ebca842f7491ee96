"""Task adapters: one interface (loss / predict / evaluator) for every task."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionlab.errors import ConfigError
from visionlab.tasks import get_task


class _Seg(nn.Module):
    """Logits at half resolution, as an FCN's coarse output before upsampling."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


def test_classification_loss_and_topk() -> None:
    task = get_task("classification", label_smoothing=0.1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    images, labels = torch.rand(6, 3, 4, 4), torch.tensor([0, 1, 2, 3, 4, 0])
    losses = task.loss(model, images, {"labels": labels})
    expected = F.cross_entropy(model(images), labels, label_smoothing=0.1)
    assert list(losses) == ["loss_classifier"] and torch.allclose(
        losses["loss_classifier"], expected
    )
    preds = task.predict(model, images, topk=3)
    assert len(preds) == 6 and preds[0]["labels"].shape == (3,)
    probs = model(images).softmax(1)
    assert torch.allclose(preds[2]["scores"][0], probs[2].max())
    assert preds[2]["labels"][0] == probs[2].argmax()
    evaluator = task.evaluator(["a", "b", "c", "d", "e"])
    evaluator.update(task.eval_outputs(model, images), task.eval_targets({"labels": labels}))
    assert evaluator.primary == "top1" and 0 <= evaluator.compute()["top1"] <= 1


def test_segmentation_loss_ignores_255_and_upsamples() -> None:
    task = get_task("segmentation")
    classes = ["cat", "dog"]
    assert task.num_model_classes(classes) == 3  # background + 2
    model = _Seg(3)
    images = torch.rand(2, 3, 8, 8)
    semantic = torch.randint(0, 3, (2, 8, 8))
    semantic[:, :2] = 255
    loss = task.loss(model, images, {"semantic": semantic})["loss_seg"]
    logits = F.interpolate(model(images), size=(8, 8), mode="bilinear", align_corners=False)
    keep = semantic != 255
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], semantic[keep])
    assert torch.allclose(loss, expected, atol=1e-6)
    all_ignored = torch.full((2, 8, 8), 255)
    zero = task.loss(model, images, {"semantic": all_ignored})["loss_seg"]
    assert zero.item() == 0.0 and zero.requires_grad  # not NaN
    preds = task.predict(model, images)
    assert preds[0]["semantic"].shape == (8, 8) and preds[0]["semantic"].dtype == torch.int64
    evaluator = task.evaluator(classes)
    evaluator.update(task.eval_outputs(model, images), task.eval_targets({"semantic": semantic}))
    assert set(evaluator.compute()["per_class"]) == {"background", "cat", "dog"}


class _Detector(nn.Module):
    """torchvision contract: losses in training, prediction dicts in eval."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        if self.training:
            return {"loss_classifier": self.w * 1.0, "loss_box": self.w * 2.0}
        boxes = torch.tensor([[1.0, 1.0, 4.0, 4.0], [0.0, 0.0, 2.0, 2.0]])
        return [
            {
                "boxes": boxes,
                "labels": torch.tensor([1, 2]),
                "scores": torch.tensor([0.9, 0.2]),
                "relations": torch.tensor([[0, 0, 1]]),
                "relation_scores": torch.tensor([0.5]),
            }
            for _ in images
        ]


def test_detection_forwards_and_filters_by_score() -> None:
    task = get_task("detection")
    model = _Detector()
    images = [torch.rand(3, 8, 8), torch.rand(3, 6, 6)]
    assert set(task.loss(model.train(), images, [{}, {}])) == {"loss_classifier", "loss_box"}
    preds = task.predict(model.eval(), images, score_threshold=0.5)
    assert preds[0]["boxes"].tolist() == [[1.0, 1.0, 4.0, 4.0]]
    assert preds[0]["relations"].shape == (0, 3)  # its object was dropped
    assert len(task.predict(model, images)[1]["boxes"]) == 2
    assert task.evaluator(["a", "b"]).primary == "AP"
    assert get_task("instance").evaluator(["a", "b"]).iou_type == "segm"


def test_unknown_task() -> None:
    with pytest.raises(ConfigError, match="unknown task 'clasification'"):
        get_task("clasification")

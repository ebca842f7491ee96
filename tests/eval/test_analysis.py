"""Error analysis (visionlab.eval.analysis) on hand-made predictions with known answers: the
detection confusion matrix, Hoiem et al.'s error breakdown, PR curves, AP by size."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from visionlab.eval.analysis import (
    AnalysisCollector,
    ap_by_size,
    detection_confusion,
    error_breakdown,
    iou_index,
    pr_curves,
    worst_images,
)
from visionlab.eval.coco_engine import evaluate_arrays
from visionlab.eval.detection import DetectionEvaluator


def _pred(boxes, labels, scores):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores, dtype=torch.float32),
    }


def _target(boxes, labels, **extra):
    t = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }
    return {**t, **{k: torch.tensor(v) for k, v in extra.items()}}


def _confusion(preds, targets, names, score_threshold=0.3):
    ev = DetectionEvaluator(names)
    ev.update(preds, targets)
    gt, dt = ev.arrays()
    match = evaluate_arrays(gt, dt, "bbox").dt_match[iou_index(0.5)]
    return detection_confusion(gt, dt, match, score_threshold=score_threshold), gt, dt


A, B, C = 1, 2, 3


def test_confusion_matrix_hand_made_counts():
    targets = [
        _target([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [A, B, C]),
        _target([[0, 0, 10, 10], [50, 50, 90, 90]], [B, A], iscrowd=[0, 1]),
    ]
    preds = [
        _pred(
            [
                [0, 0, 10, 10],  # A on the A object: correct
                [20, 20, 30, 30],  # C on the B object: a confusion (row b, column c)
                [60, 60, 70, 70],  # A on nothing: false positive
                [0, 0, 10, 10],  # A again on the A object: a duplicate, false positive
                [40, 40, 50, 50],  # B on the C object, under the threshold: not counted
            ],
            [A, C, A, A, B],
            [0.9, 0.8, 0.7, 0.6, 0.2],
        ),
        _pred([[1, 0, 11, 10], [55, 55, 70, 70]], [B, A], [0.9, 0.9]),  # B correct; A on crowd
    ]
    cm, gt, dt = _confusion(preds, targets, ["a", "b", "c"])
    expected = np.array(
        [  # columns: a, b, c, background (missed)
            [1, 0, 0, 0],  # a
            [0, 1, 1, 0],  # b
            [0, 0, 0, 1],  # c: the only detection on it scores 0.2
            [2, 0, 0, 0],  # background: two false A detections
        ]
    )
    np.testing.assert_array_equal(cm.matrix, expected)
    per_image = cm.per_image(gt, dt)
    assert per_image["missed"].tolist() == [1, 0]
    assert per_image["false"].tolist() == [2, 0]
    assert per_image["confused"].tolist() == [1, 0]
    worst = worst_images(cm, gt, dt, k=5)
    assert worst == [{"index": 0, "errors": 4, "missed": 1, "false": 2, "confused": 1}]
    # the score threshold moves the 0.2 detection from nowhere into row c, column b
    cm0, *_ = _confusion(preds, targets, ["a", "b", "c"], score_threshold=0.0)
    assert cm0.matrix[2].tolist() == [0, 1, 0, 0]


def test_confusion_prefers_the_own_class():
    # an A detection covers the B object better (IoU 1) than the A object (IoU 0.6): it is
    # still the A object's; the B object is missed, not confused
    targets = [_target([[0, 0, 10, 10], [0, 0, 10, 6]], [A, B])]
    preds = [_pred([[0, 0, 10, 6]], [A], [0.9])]
    cm, *_ = _confusion(preds, targets, ["a", "b"])
    np.testing.assert_array_equal(cm.matrix, [[1, 0, 0], [0, 0, 1], [0, 0, 0]])


def test_error_breakdown_each_category():
    # classes 1 and 2 are similar (one group), 3 and 4 are not
    targets = [
        _target(
            [[0, 0, 10, 10], [200, 0, 210, 10], [300, 0, 310, 10], [0, 30, 10, 40],
             [30, 0, 40, 10], [60, 0, 70, 10]],
            [1, 1, 1, 2, 3, 4],
        )
    ]  # fmt: skip
    preds = [
        _pred(
            [
                [0, 0, 10, 10],  # 1 on the 1 object: correct
                [5, 0, 15, 10],  # 1, IoU 1/3 with it: localization
                [0, 0, 10, 10],  # 1 again on it: a duplicate, localization
                [0, 2, 10, 12],  # 2 on the 1 object (similar class): similar
                [60, 0, 70, 10],  # 3 on the 4 object: other
                [100, 100, 110, 110],  # 4 on nothing: background
                [100, 0, 110, 10],  # 3 on nothing, below the top 1 of class 3: left out
            ],
            [1, 1, 1, 2, 3, 4, 3],
            [0.9, 0.8, 0.7, 0.9, 0.9, 0.9, 0.1],
        )
    ]
    counts = error_breakdown(preds, targets, 4, similar_groups=[[1, 2]])
    assert counts == {
        "correct": 1,
        "localization": 2,
        "similar": 1,
        "other": 1,
        "background": 1,
        "detections": 6,
    }
    # without similar-class groups every other class is similar
    plain = error_breakdown(preds, targets, 4)
    assert plain["similar"] == 2 and plain["other"] == 0 and plain["correct"] == 1


def test_error_breakdown_leaves_out_crowd_detections():
    targets = [_target([[0, 0, 10, 10], [50, 50, 90, 90]], [1, 1], iscrowd=[0, 1])]
    preds = [_pred([[60, 60, 80, 80], [0, 0, 10, 10]], [1, 1], [0.9, 0.8])]
    # the crowd detection is dropped first, so the one object's top-1 is the correct one
    assert error_breakdown(preds, targets, 1)["correct"] == 1


def _one_class_result():
    targets = [
        _target([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]], [1] * 4)
    ]
    preds = [
        _pred(
            [[0, 0, 10, 10], [100, 100, 110, 110], [20, 0, 30, 10], [40, 0, 50, 10]],
            [1, 1, 1, 1],
            [0.9, 0.8, 0.7, 0.6],
        )
    ]  # tp, fp, tp, tp: recall 0.75 at the end
    ev = DetectionEvaluator(["x"])
    ev.update(preds, targets)
    gt, dt = ev.arrays()
    return evaluate_arrays(gt, dt, "bbox"), gt


def test_pr_curve_recall_rises_and_precision_is_the_envelope():
    result, _ = _one_class_result()
    curve = pr_curves(result, ["x"])["0.5"]["x"]
    recall, precision = np.array(curve["recall"]), np.array(curve["precision"])
    assert np.all(np.diff(recall) > 0) and recall[0] == 0
    assert curve["max_recall"] == pytest.approx(0.75) and recall[-1] == pytest.approx(0.75)
    assert np.all(np.diff(precision) <= 0)
    assert precision[recall <= 0.25] == pytest.approx(1.0)
    assert precision[recall > 0.26] == pytest.approx(0.75)  # 3 of 4 at recall 0.75
    assert curve["AP"] == pytest.approx((26 * 1.0 + 50 * 0.75) / 101)
    assert curve["AP"] == pytest.approx(result.stats["AP50"])  # the evaluator's own AP50


def test_ap_by_size_uses_box_areas_for_boxes():
    # 10x10 (small), 50x50 (medium), 100x100 (large); the medium one is missed
    boxes = [[0, 0, 10, 10], [0, 20, 50, 70], [60, 0, 160, 100]]
    targets = [_target(boxes, [1, 1, 1])]
    preds = [_pred([boxes[0], boxes[2]], [1, 1], [0.9, 0.8])]
    ev = DetectionEvaluator(["x"])
    ev.update(preds, targets)
    gt, dt = ev.arrays()
    sizes = ap_by_size(evaluate_arrays(gt, dt, "bbox"), gt, ["x"])
    assert sizes["objects"] == {"small": 1, "medium": 1, "large": 1}
    assert sizes["all"] == pytest.approx({"small": 1.0, "medium": 0.0, "large": 1.0})
    assert sizes["per_class"]["x"] == sizes["all"]


def test_ap_by_size_uses_mask_areas_for_instances():
    # a 40x40 box (medium by its box) around a 20x20 mask (small by its pixels)
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[0, 10:30, 10:30] = True
    mask[0, 0, 0] = mask[0, 39, 39] = True  # the box corners: the box is 40x40
    target = {**_target([[0, 0, 40, 40]], [1]), "masks": mask}
    pred = {**_pred([[0, 0, 40, 40]], [1], [0.9]), "masks": mask}
    collector = AnalysisCollector(DetectionEvaluator(["x"], iou_type="segm"), "instance", ["x"])
    collector.update([pred], [target])
    assert collector.compute() == collector.evaluator.compute()  # metrics unchanged
    assert "mask area" in collector.gt_area
    gt, dt = collector.detections.arrays("segm")
    sizes = ap_by_size(evaluate_arrays(gt, dt, "segm"), gt, ["x"])
    assert sizes["objects"] == {"small": 1, "medium": 0, "large": 0}
    assert sizes["all"]["small"] == pytest.approx(1.0) and math.isnan(sizes["all"]["medium"])


def test_collector_keeps_relation_boxes_and_class_confusion():
    class Inner:
        primary = "x"

        def __init__(self):
            self.seen = 0

        def update(self, preds, targets):
            self.seen += 1

        def compute(self):
            return {"x": self.seen}

    rel = AnalysisCollector(Inner(), "relation", ["a", "b"])
    rel.update({"sgdet": [_pred([[0, 0, 5, 5]], [2], [0.5])]}, [_target([[0, 0, 5, 5]], [2])])
    assert rel.compute() == {"x": 1}
    assert rel.detections is not None and rel.detections.compute()["AP50"] == pytest.approx(1.0)
    cls = AnalysisCollector(Inner(), "classification", ["a", "b", "c"])
    logits = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 3.0, 0], [0, 0, 3.0]])
    cls.update(logits, torch.tensor([0, 1, 2, 2]))
    assert cls.class_confusion.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]

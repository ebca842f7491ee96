"""Error analysis of a model's predictions, the numbers behind ``visionlab eval --plots``:
precision/recall curves per class, AP by object size, a detection confusion matrix with a
background row and column, the images with the most errors, and the error breakdown of
Hoiem et al. (ECCV 2012) that YOLO reports (Redmon et al., CVPR 2016, Sec. 4.2).

Every detection matching here is the COCO engine's (:mod:`visionlab.eval.coco_engine`):
detections by score, each takes the best still-free ground truth of its class at IoU >= t.
:class:`AnalysisCollector` wraps a task's evaluator during ``visionlab.evaluate`` and keeps
what the analysis needs; the metrics it reports are the evaluator's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from visionlab.eval.coco_engine import (
    AREA_LABELS,
    AREA_RANGES,
    IOU_THRESHOLDS,
    RECALL_THRESHOLDS,
    CocoDetections,
    CocoEvalResult,
    CocoGroundTruth,
    evaluate_arrays,
)
from visionlab.eval.detection import DetectionEvaluator
from visionlab.eval.segmentation import confusion_matrix
from visionlab.ops.boxes import box_convert, box_iou

__all__ = [
    "HOIEM_CATEGORIES",
    "AnalysisCollector",
    "DetectionConfusion",
    "ap_by_size",
    "detection_confusion",
    "error_breakdown",
    "error_breakdown_arrays",
    "pr_curves",
    "worst_images",
]

HOIEM_CATEGORIES = ("correct", "localization", "similar", "other", "background")
# the IoU below which a detection covers no object at all (Hoiem et al.)
BACKGROUND_IOU = 0.1
SIZE_LABELS = AREA_LABELS[1:]  # small, medium, large
SIZE_STAT_KEYS = ("APs", "APm", "APl")
SIZE_RANGES = {
    "small": "area < 32^2 px",
    "medium": "32^2 <= area <= 96^2 px",
    "large": "area > 96^2 px",
}


def iou_index(iou: float) -> int:
    """Index of ``iou`` among the COCO IoU thresholds (0.5, 0.55, ..., 0.95)."""
    hits = np.flatnonzero(np.isclose(IOU_THRESHOLDS, iou))
    if not len(hits):
        raise ValueError(f"IoU {iou} is not one of the COCO thresholds 0.5, 0.55, ..., 0.95")
    return int(hits[0])


def xyxy(boxes: np.ndarray) -> Tensor:
    """The engine's ``[x, y, w, h]`` boxes as ``Tensor[N, 4]`` xyxy."""
    return box_convert(torch.as_tensor(boxes), "xywh", "xyxy")


def pr_curves(
    result: CocoEvalResult, class_names: Sequence[str], ious: Sequence[float] = (0.5, 0.75)
) -> dict[str, dict[str, dict[str, Any]]]:
    """Precision/recall curves per class from the COCO tables (area all, 100 detections).

    Returns:
        ``{"0.5": {class: {"AP", "max_recall", "recall": [R], "precision": [R]}}, ...}``:
        COCO's interpolated precision (monotone envelope) at the recall points 0, 0.01, ...
        up to the recall the class reaches; ``AP`` is their mean over all 101 points (the
        class's AP at that IoU). Classes without ground truth have no curve.
    """
    out = {}
    for iou in ious:
        t = iou_index(iou)
        per_class = {}
        for k, name in enumerate(class_names):
            precision = result.precision[t, :, k, 0, -1]
            if precision[0] < 0:  # no ground truth
                continue
            reached = float(result.recall[t, k, 0, -1])
            keep = reached + 1e-9 >= RECALL_THRESHOLDS
            per_class[name] = {
                "AP": float(precision.mean()),
                "max_recall": reached,
                "recall": RECALL_THRESHOLDS[keep].tolist(),
                "precision": precision[keep].tolist(),
            }
        out[f"{iou:g}"] = per_class
    return out


def ap_by_size(
    result: CocoEvalResult, gt: CocoGroundTruth, class_names: Sequence[str]
) -> dict[str, Any]:
    """AP@[.5:.95] by object size (COCO's area ranges, 100 detections).

    Returns:
        ``{"ranges": {size: rule}, "all": {size: AP}, "per_class": {class: {size: AP}},
        "objects": {size: number of ground-truth objects}}``; NaN where a size has no ground
        truth (the engine's -1).
    """
    all_classes = {
        size: (v if (v := result.stats[key]) > -1 else float("nan"))
        for size, key in zip(SIZE_LABELS, SIZE_STAT_KEYS)
    }
    per_class = {}
    for k, name in enumerate(class_names):
        row = {}
        for a, size in enumerate(SIZE_LABELS, start=1):
            p = result.precision[:, :, k, a, -1]
            row[size] = float(p[p > -1].mean()) if (p > -1).any() else float("nan")
        per_class[name] = row
    objects = {}
    for a, size in enumerate(SIZE_LABELS, start=1):
        lo, hi = AREA_RANGES[a]
        objects[size] = int(((gt.area >= lo) & (gt.area <= hi) & ~gt.ignore).sum())
    return {
        "ranges": dict(SIZE_RANGES),
        "all": all_classes,
        "per_class": per_class,
        "objects": objects,
    }


@dataclass
class DetectionConfusion:
    """A detection confusion matrix and where each object and detection went.

    ``matrix[C + 1, C + 1]``: rows are the ground-truth class (index ``c - 1`` for label
    ``c``) and, last, "background" (a detection on no object); columns the predicted class
    and, last, "background" (an object no detection found). ``gt_column [G]`` is the column
    of each ground truth (-1: ignored, crowd or difficult); ``dt_row [D]`` the row of each
    detection (-1: under the score threshold, or on an ignored ground truth).
    """

    matrix: np.ndarray
    gt_column: np.ndarray
    dt_row: np.ndarray

    def per_image(self, gt: CocoGroundTruth, dt: CocoDetections) -> dict[str, np.ndarray]:
        """``missed``, ``false`` and ``confused`` counts per image ``[I]``."""
        n_img, bg = len(gt.image_ids), len(self.matrix) - 1
        own = self.gt_column == gt.category
        confused = (self.gt_column >= 0) & (self.gt_column != bg) & ~own
        return {
            "missed": np.bincount(gt.image[self.gt_column == bg], minlength=n_img),
            "false": np.bincount(dt.image[self.dt_row == bg], minlength=n_img),
            "confused": np.bincount(gt.image[confused], minlength=n_img),
        }


def _agnostic_match(
    gt: CocoGroundTruth, dt: CocoDetections, gt_rows: np.ndarray, dt_rows: np.ndarray, iou: float
) -> np.ndarray:
    """The COCO matching of detections ``dt_rows`` to ground truth ``gt_rows`` with every
    class merged into one: per detection, the matched row of ``gt`` (or -1)."""
    n = len(gt_rows)
    merged_gt = CocoGroundTruth(
        image_ids=gt.image_ids,
        category_ids=[0],
        category_names=["object"],
        image=gt.image[gt_rows],
        category=np.zeros(n, dtype=np.int64),
        boxes=gt.boxes[gt_rows],
        area=gt.area[gt_rows],
        iscrowd=np.zeros(n, dtype=bool),
        ignore=np.zeros(n, dtype=bool),
        zero_id=np.zeros(n, dtype=bool),
        difficult=np.zeros(n, dtype=bool),
    )
    merged_dt = CocoDetections(
        image=dt.image[dt_rows],
        category=np.zeros(len(dt_rows), dtype=np.int64),
        boxes=dt.boxes[dt_rows],
        area=dt.area[dt_rows],
        scores=dt.scores[dt_rows],
    )
    match = evaluate_arrays(merged_gt, merged_dt, "bbox").dt_match[iou_index(iou)]
    return np.where(match >= 0, gt_rows[np.maximum(match, 0)], -1)


def detection_confusion(
    gt: CocoGroundTruth,
    dt: CocoDetections,
    match: np.ndarray,
    *,
    score_threshold: float,
    iou_threshold: float = 0.5,
) -> DetectionConfusion:
    """Confusion matrix of the detections scoring at least ``score_threshold``.

    First each detection takes an object of its own class (``match``: the COCO matching at
    ``iou_threshold``, :attr:`CocoEvalResult.dt_match`); then the detections left take the
    objects left of any other class by the same matching with the classes merged (a
    confusion: the object's row, the detection's column). A detection left over is a false
    positive (row "background"); an object left over is missed (column "background").
    Ground truth that is crowd or difficult counts nowhere, nor do detections on it.

    Args:
        gt, dt: the COCO engine's arrays (:meth:`DetectionEvaluator.arrays`).
        match: ``[D]`` matched ground-truth row of each detection at ``iou_threshold``.
    """
    n_cls = len(gt.category_ids)
    bg = n_cls
    gt_column = np.where(gt.ignore, -1, bg)
    dt_row = np.full(len(dt.scores), -1, dtype=np.int64)
    above = dt.scores >= score_threshold
    hit = np.flatnonzero(above & (match >= 0))
    hit = hit[~gt.ignore[match[hit]]]  # a detection on a crowd region counts nowhere
    dt_row[hit] = dt.category[hit]
    gt_column[match[hit]] = gt.category[match[hit]]
    left_dt = np.flatnonzero(above & (match < 0))
    left_gt = np.flatnonzero(gt_column == bg)
    cross = _agnostic_match(gt, dt, left_gt, left_dt, iou_threshold)
    took = cross >= 0
    dt_row[left_dt[took]] = gt.category[cross[took]]
    gt_column[cross[took]] = dt.category[left_dt[took]]
    dt_row[left_dt[~took]] = bg
    counted = gt_column >= 0
    size = (n_cls + 1) ** 2
    matrix = np.bincount(gt.category[counted] * (n_cls + 1) + gt_column[counted], minlength=size)
    matrix += np.bincount(bg * (n_cls + 1) + dt.category[dt_row == bg], minlength=size)
    return DetectionConfusion(matrix.reshape(n_cls + 1, n_cls + 1), gt_column, dt_row)


def worst_images(
    confusion: DetectionConfusion, gt: CocoGroundTruth, dt: CocoDetections, k: int
) -> list[dict[str, int]]:
    """The ``k`` images with the most errors (missed objects + false detections +
    confusions), most first (ties: earlier image first); images without error are left out.

    Returns:
        ``[{"index", "errors", "missed", "false", "confused"}]`` (``index``: the image's
        position in the evaluation order).
    """
    counts = confusion.per_image(gt, dt)
    errors = counts["missed"] + counts["false"] + counts["confused"]
    order = np.argsort(-errors, kind="stable")[:k]
    return [
        {"index": int(i), "errors": int(errors[i]), **{n: int(c[i]) for n, c in counts.items()}}
        for i in order
        if errors[i] > 0
    ]


def error_breakdown_arrays(
    gt: CocoGroundTruth,
    dt: CocoDetections,
    match: np.ndarray,
    similar_groups: Sequence[Sequence[int]] | None = None,
) -> dict[str, int]:
    """Hoiem et al.'s error breakdown of the top detections, as YOLO's Sec. 4.2 reports it.

    For each class with N objects, its N highest-scoring detections (detections on crowd or
    difficult ground truth left out first), each put in the first category that fits:
    ``correct``: matched to an object of its class at IoU >= 0.5 (``match``; one detection
    per object); ``localization``: IoU > 0.1 with an object of its class (a poor box, or a
    duplicate); ``similar``: IoU > 0.1 with an object of a class in its similar-class group;
    ``other``: IoU > 0.1 with an object of any other class; ``background``: IoU <= 0.1 with
    every object.

    Args:
        gt, dt: the COCO engine's arrays (:meth:`DetectionEvaluator.arrays`).
        match: ``[D]`` matched ground-truth row of each detection at IoU 0.5.
        similar_groups: groups of labels (1..C) whose classes are similar to each other;
            None: the dataset defines no groups and every other class counts as similar
            (``other`` is then 0).

    Returns:
        ``{category: count}`` over :data:`HOIEM_CATEGORIES`, and ``detections``: their sum.
    """
    n_cls = len(gt.category_ids)
    group = np.zeros(n_cls, dtype=np.int64)  # one group: every class similar
    if similar_groups is not None:
        group = np.arange(n_cls) + len(similar_groups)
        for g, labels in enumerate(similar_groups):
            group[np.asarray(labels, dtype=np.int64) - 1] = g
    on_ignored = (match >= 0) & gt.ignore[np.maximum(match, 0)]
    correct = (match >= 0) & ~on_ignored
    n_objects = np.bincount(gt.category[~gt.ignore], minlength=n_cls)
    top = []
    for c in range(n_cls):
        rows = np.flatnonzero((dt.category == c) & ~on_ignored)
        top.append(rows[np.argsort(-dt.scores[rows], kind="stable")[: n_objects[c]]])
    top = np.concatenate(top).astype(np.int64) if top else np.zeros(0, dtype=np.int64)
    kind = np.full(len(top), HOIEM_CATEGORIES.index("background"))
    g_xyxy, d_xyxy = xyxy(gt.boxes), xyxy(dt.boxes[top])
    objects = np.flatnonzero(~gt.ignore)
    for img in np.unique(dt.image[top]).tolist():
        d = np.flatnonzero(dt.image[top] == img)
        g = objects[gt.image[objects] == img]
        if not len(g):
            continue
        iou = box_iou(d_xyxy[d], g_xyxy[g]).numpy()  # [d, g]
        d_cls, g_cls = dt.category[top[d]][:, None], gt.category[g][None, :]
        same = g_cls == d_cls
        similar = ~same & (group[g_cls] == group[d_cls])

        def covers(where: np.ndarray, iou: np.ndarray = iou) -> np.ndarray:
            return (np.where(where, iou, 0.0) > BACKGROUND_IOU).any(axis=1)

        # the first category that fits wins: assign the later ones first
        kind[d[covers(~same & ~similar)]] = HOIEM_CATEGORIES.index("other")
        kind[d[covers(similar)]] = HOIEM_CATEGORIES.index("similar")
        kind[d[covers(same)]] = HOIEM_CATEGORIES.index("localization")
    kind[correct[top]] = HOIEM_CATEGORIES.index("correct")
    counts = np.bincount(kind, minlength=len(HOIEM_CATEGORIES))
    out = {name: int(n) for name, n in zip(HOIEM_CATEGORIES, counts)}
    out["detections"] = len(top)
    return out


def error_breakdown(
    preds: Sequence[Mapping[str, Tensor]],
    targets: Sequence[Mapping[str, Tensor]],
    num_classes: int,
    *,
    similar_groups: Sequence[Sequence[int]] | None = None,
) -> dict[str, int]:
    """Hoiem et al.'s error breakdown (:func:`error_breakdown_arrays`) of per-image
    predictions (``boxes [N, 4]`` xyxy, ``labels [N]`` in 1..C, ``scores [N]``) against
    targets (``boxes``, ``labels``, optional ``iscrowd`` / ``difficult``)."""
    evaluator = DetectionEvaluator([str(c) for c in range(1, num_classes + 1)])
    evaluator.update(preds, targets)
    gt, dt = evaluator.arrays()
    match = evaluate_arrays(gt, dt, "bbox").dt_match[iou_index(0.5)]
    return error_breakdown_arrays(gt, dt, match, similar_groups)


def evaluated(evaluator: DetectionEvaluator) -> dict[str, Any]:
    """The evaluator's engine results (:attr:`DetectionEvaluator.evaluated`), computing them
    once if its :meth:`~DetectionEvaluator.compute` has not run since its last images."""
    if not evaluator.evaluated:
        evaluator.compute()
    return evaluator.evaluated


def scores_and_errors(
    preds: Sequence[Mapping[str, Tensor]],
    targets: Sequence[Mapping[str, Tensor]],
    classes: Sequence[str],
) -> tuple[dict[str, float], dict[str, int]]:
    """The COCO box stats (``AP``, ``AP50``, ...; the plain numbers) and the error breakdown
    (:func:`error_breakdown_arrays`) of per-image predictions, from one evaluation."""
    evaluator = DetectionEvaluator(classes)
    evaluator.update(preds, targets)
    stats = {k: float(v) for k, v in evaluator.compute().items() if isinstance(v, int | float)}
    gt, dt = evaluator.evaluated["arrays"]
    match = evaluator.evaluated["bbox"].dt_match[iou_index(0.5)]
    return stats, error_breakdown_arrays(gt, dt, match)


class AnalysisCollector:
    """A task's evaluator, wrapped: ``update`` and ``compute`` are the evaluator's (the same
    metrics), and what the analysis needs is kept beside them.

    Detectors: the wrapped :class:`DetectionEvaluator` itself (its images, in order); relation
    models: a box :class:`DetectionEvaluator` fed their ``sgdet`` detections (the model on the
    image alone); segmentation: the evaluator's pixel confusion matrix; classification: a
    confusion matrix of the top-1 class (rows: true class).
    """

    def __init__(self, evaluator: Any, task: str, classes: Sequence[str]) -> None:
        self.evaluator = evaluator
        self.task = task
        self.classes = [str(c) for c in classes]
        self.primary = evaluator.primary
        # a relation evaluator that keeps no box evaluator of its own gets one here
        wraps_boxes = isinstance(evaluator, DetectionEvaluator) or hasattr(evaluator, "detection")
        own = task == "relation" and not wraps_boxes
        self._own = DetectionEvaluator(self.classes) if own else None
        self.class_confusion = torch.zeros(len(classes), len(classes), dtype=torch.int64)
        self.gt_area = "box area (w * h)"

    @property
    def detections(self) -> DetectionEvaluator | None:
        """The box evaluator holding the detections: the wrapped one, the relation
        evaluator's (:attr:`SceneGraphEvaluator.detection`, fed the ``sgdet`` detections), or
        this collector's own."""
        if isinstance(self.evaluator, DetectionEvaluator):
            return self.evaluator
        return getattr(self.evaluator, "detection", None) or self._own

    def update(self, preds: Any, targets: Any) -> None:
        self.evaluator.update(preds, targets)
        if self._own is not None:
            self._own.update(preds["sgdet"], targets)
        if self.detections is not None and targets:
            first = targets[0]
            if "area" in first:
                self.gt_area = "the annotation's 'area' field"
            elif "masks" in first:
                self.gt_area = "mask area (pixels, as pycocotools)"
        if self.task == "classification":
            top1 = (
                preds.argmax(dim=1)
                if isinstance(preds, Tensor)
                else torch.stack([torch.as_tensor(p["labels"]).reshape(-1)[0] for p in preds])
            )
            labels = torch.as_tensor(targets).reshape(-1)
            self.class_confusion += confusion_matrix(
                top1.cpu(), labels.cpu(), len(self.classes), ignore_index=None
            )

    def compute(self) -> dict[str, Any]:
        return self.evaluator.compute()

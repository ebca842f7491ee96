"""Detection metrics in the library's contracts: Pascal VOC mAP (2007 11-point and 2010+
all-point, ``difficult`` honoured) and the streaming :class:`DetectionEvaluator`, which
reports the COCO numbers (equal to pycocotools) and both VOC mAPs of a model's predictions.

:func:`coco_evaluate` (COCO files in, pycocotools' numbers out) lives in
:mod:`visionlab.eval.coco` and is re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from visionlab.data.records import encode_masks
from visionlab.errors import VisionLabError
from visionlab.eval.coco import coco_evaluate
from visionlab.eval.coco_engine import (
    STAT_KEYS,
    CocoDetections,
    CocoGroundTruth,
    evaluate_arrays,
    pair_index,
)

__all__ = [
    "MASK_PREFIX",
    "DetectionEvaluator",
    "coco_evaluate",
    "voc_ap",
    "voc_class_ap",
    "voc_map",
]

# instance segmentation reports the mask numbers beside the box numbers: mask_AP, mask_AP50, ...
MASK_PREFIX = "mask_"


def _np(x: Any, dtype: Any = None) -> np.ndarray:
    """A tensor (any device) or array-like as a numpy array."""
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """Area under a precision/recall curve as the VOC devkit computes it.

    Args:
        recall, precision: ``[N]`` cumulative values, detections in score order.
        use_07_metric: VOC2007's 11-point interpolated AP (mean of the best precision at
            recall >= 0, 0.1, ..., 1); else the 2010+ all-point AP (area under the monotone
            precision envelope).
    """
    recall, precision = _np(recall, np.float64), _np(precision, np.float64)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):  # the devkit's 11 points, same floats
            above = recall >= t
            ap += (float(precision[above].max()) if above.any() else 0.0) / 11.0
        return ap
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _box_iou_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of paired xyxy boxes ``[P, 4]`` (continuous coordinates: no +1 pixel)."""
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = union - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def voc_class_ap(
    detections: Mapping[str, Any],
    ground_truth: Mapping[str, Any],
    *,
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
) -> float:
    """VOC AP of one class (the devkit's ``VOCevaldet``, py-faster-rcnn's ``voc_eval``).

    Detections are taken by score (stable sort); each takes the ground truth of its image
    with the highest IoU (first one on ties, matched or not). IoU >= ``iou_threshold`` with
    a ``difficult`` ground truth: neither true nor false positive. Else with a ground truth
    not taken yet: true positive (and it is taken); otherwise a false positive.

    Args:
        detections: ``{"image_ids": [N], "scores": [N], "boxes": [N, 4]}`` (xyxy).
        ground_truth: ``{"image_ids": [M], "boxes": [M, 4], "difficult": [M]}`` (xyxy;
            ``difficult`` optional). Image ids are any hashable values (ints, strings).

    Returns:
        AP in [0, 1]; NaN when the class has no ground truth that is not difficult.
    """
    g_img = _np(ground_truth["image_ids"]).reshape(-1)
    g_box = _np(ground_truth["boxes"], np.float64).reshape(-1, 4)
    g_diff = _np(ground_truth.get("difficult", np.zeros(len(g_img))), bool).reshape(-1)
    d_img = _np(detections["image_ids"]).reshape(-1)
    d_score = _np(detections["scores"], np.float64).reshape(-1)
    d_box = _np(detections["boxes"], np.float64).reshape(-1, 4)
    npos = int((~g_diff).sum())
    if npos == 0:
        return float("nan")
    codes = np.unique(np.concatenate([g_img, d_img]), return_inverse=True)[1].reshape(-1)
    g_code, d_code = codes[: len(g_img)], codes[len(g_img) :]
    order = np.argsort(-d_score, kind="stable")
    d_code, d_box = d_code[order], d_box[order]
    g_order = np.argsort(g_code, kind="stable")  # file order kept inside an image
    g_code, g_box, g_diff = g_code[g_order], g_box[g_order], g_diff[g_order]
    starts = np.searchsorted(g_code, d_code, side="left")
    rows, cols = pair_index(starts, np.searchsorted(g_code, d_code, side="right") - starts)
    iou = _box_iou_pairs(d_box[rows], g_box[cols])
    best = np.full(len(d_code), -1.0)
    np.maximum.at(best, rows, iou)
    first = np.full(len(d_code), len(g_code))
    np.minimum.at(first, rows[iou == best[rows]], cols[iou == best[rows]])
    hit = np.flatnonzero(best >= iou_threshold)
    hit = hit[~g_diff[first[hit]]]  # difficult matches are left out entirely
    tp = np.zeros(len(d_code))
    fp = (best < iou_threshold).astype(np.float64)
    fp[hit] = 1.0
    taken_first = hit[np.unique(first[hit], return_index=True)[1]]
    tp[taken_first], fp[taken_first] = 1.0, 0.0
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(tp / npos, precision, use_07_metric)


def voc_map(
    detections: Mapping[Hashable, Mapping[str, Any]],
    ground_truth: Mapping[Hashable, Mapping[str, Any]],
    use_07_metric: bool = False,
    *,
    iou_threshold: float = 0.5,
) -> tuple[float, dict[Hashable, float]]:
    """Pascal VOC mAP: the mean over classes of :func:`voc_class_ap`.

    Args:
        detections: class -> ``{"image_ids": [N], "scores": [N], "boxes": [N, 4]}``.
        ground_truth: class -> ``{"image_ids": [M], "boxes": [M, 4], "difficult": [M]}``.
        use_07_metric: VOC2007 11-point AP, else the 2010+ all-point AP.
        iou_threshold: 0.5 in VOC.

    Returns:
        ``(mAP, {class: AP})`` over the classes of both mappings; a class without
        non-difficult ground truth gets NaN and is left out of the mean (NaN if none is left).
    """
    empty_dt = {"image_ids": [], "scores": [], "boxes": np.zeros((0, 4))}
    empty_gt = {"image_ids": [], "boxes": np.zeros((0, 4))}
    per_class = {}
    for c in dict.fromkeys([*ground_truth, *detections]):
        per_class[c] = voc_class_ap(
            detections.get(c, empty_dt),
            ground_truth.get(c, empty_gt),
            iou_threshold=iou_threshold,
            use_07_metric=use_07_metric,
        )
    valid = [v for v in per_class.values() if not math.isnan(v)]
    return (float(np.mean(valid)) if valid else float("nan")), per_class


def voc_inputs(gt: CocoGroundTruth, dt: CocoDetections) -> tuple[dict, dict]:
    """Per-class VOC inputs (see :func:`voc_map`) from COCO arrays, keyed by category name;
    ground truth ``difficult`` is ``gt.difficult`` (difficult, ignore or crowd)."""
    g_xyxy = np.concatenate([gt.boxes[:, :2], gt.boxes[:, :2] + gt.boxes[:, 2:]], axis=1)
    d_xyxy = np.concatenate([dt.boxes[:, :2], dt.boxes[:, :2] + dt.boxes[:, 2:]], axis=1)
    dets, gts = {}, {}
    for k, name in enumerate(gt.category_names):
        g, d = gt.category == k, dt.category == k
        gts[name] = {"image_ids": gt.image[g], "boxes": g_xyxy[g], "difficult": gt.difficult[g]}
        dets[name] = {"image_ids": dt.image[d], "scores": dt.scores[d], "boxes": d_xyxy[d]}
    return dets, gts


class DetectionEvaluator:
    """Streaming COCO + VOC evaluation of detection (or instance segmentation) predictions.

    ``update(preds, targets)`` takes per-image dicts in the library's contracts:
    predictions ``boxes [N, 4]`` xyxy, ``labels [N]`` in 1..C, ``scores [N]`` and for
    ``segm`` ``masks`` (``[N, H, W]`` bool, or ``[N, 1, H, W]`` probabilities, cut at 0.5);
    targets ``boxes``, ``labels``, optional ``iscrowd``, ``difficult``, ``area``,
    ``masks``. ``compute()`` returns the 12 COCO box stats (``AP`` ... ``ARl``, equal to
    pycocotools' ``bbox`` on the same data), ``per_class`` (class name -> box AP@[.5:.95],
    NaN without ground truth), ``voc07_mAP`` and ``voc_mAP`` (box AP@0.5, 11-point and
    all-point). ``segm`` (instance segmentation) adds, from the same images, the 12 mask
    stats (``mask_AP`` ... ``mask_ARl``, equal to pycocotools' ``segm``) and
    ``mask_per_class``.

    COCO rules with two additions: ``difficult`` ground truth is ignored like a crowd
    region (matched detections do not count, but the IoU is the plain one); the area of a
    ground truth for the area ranges is ``area`` when given, else its mask area, else its box
    area; a detection's is its box area for the box stats and its mask area for the mask
    stats. For VOC, crowd regions count as difficult. Images are numbered in the order they
    arrive. ``primary`` drives best-checkpoint tracking: ``"AP"`` (box AP@[.5:.95], the COCO
    headline number) for ``bbox``, ``"mask_AP"`` for ``segm``.

    Args:
        class_names: the C foreground class names (label k <-> ``class_names[k - 1]``).
        iou_type: ``"bbox"`` (boxes) or ``"segm"`` (boxes and masks).
    """

    def __init__(self, class_names: Sequence[str], iou_type: str = "bbox") -> None:
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
        self.class_names = [str(c) for c in class_names]
        self.iou_type = iou_type
        self.primary = MASK_PREFIX + "AP" if iou_type == "segm" else "AP"
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self._gt: list[dict[str, Any]] = []
        self._dt: list[dict[str, Any]] = []
        # the last compute's engine results, for what reads more than the stats (the error
        # analysis): "arrays" (gt, dt), "bbox" and, for segm, "segm" (CocoEvalResult)
        self.evaluated: dict[str, Any] = {}

    def _rles(self, masks: Any, n: int, what: str) -> list[dict]:
        if masks is None:
            raise ValueError(f"segm evaluation needs 'masks' in every {what}")
        m = masks if isinstance(masks, Tensor) else torch.as_tensor(np.asarray(masks))
        if m.ndim == 4 and m.shape[1] == 1:
            m = m[:, 0]
        if m.ndim != 3 or m.shape[0] != n:
            raise ValueError(f"{what} masks must be [N, H, W] with N = {n}, got {tuple(m.shape)}")
        return encode_masks(m)

    def _image(self, d: Mapping[str, Any], what: str, has_scores: bool) -> dict[str, Any]:
        boxes = _np(d["boxes"], np.float64).reshape(-1, 4)
        n = len(boxes)
        labels = _np(d["labels"], np.int64).reshape(-1)
        out = {"boxes": boxes, "labels": labels}
        if len(labels) != n:
            raise ValueError(f"{what}: {n} boxes but {len(labels)} labels")
        if n and (labels.min() < 1 or labels.max() > len(self.class_names)):
            bad = labels[(labels < 1) | (labels > len(self.class_names))][0]
            raise VisionLabError(
                f"{what} label {bad} is outside 1..{len(self.class_names)} "
                f"(the evaluator has {len(self.class_names)} classes)"
            )
        if has_scores:
            out["scores"] = _np(d["scores"], np.float64).reshape(-1)
            if len(out["scores"]) != n:
                raise ValueError(f"{what}: {n} boxes but {len(out['scores'])} scores")
        else:
            out["iscrowd"] = _np(d.get("iscrowd", np.zeros(n)), bool).reshape(-1)
            out["difficult"] = _np(d.get("difficult", np.zeros(n)), bool).reshape(-1)
        needs_masks = self.iou_type == "segm" or (not has_scores and "masks" in d)
        if needs_masks:
            out["rles"] = self._rles(d.get("masks"), n, what)
        box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        mask_area = None
        if "rles" in out:
            from pycocotools import mask as mask_utils

            mask_area = mask_utils.area(out["rles"]).astype(np.float64) if n else np.zeros(0)
        if has_scores:  # a detection: box area for the box stats, mask area for the masks'
            out["area"] = box_area
            out["mask_area"] = mask_area if mask_area is not None else box_area
        elif "area" in d:
            out["area"] = _np(d["area"], np.float64).reshape(-1)
        else:
            out["area"] = mask_area if mask_area is not None else box_area
        return out

    def update(self, preds: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]]):
        """Add a batch: one prediction dict and one target dict per image."""
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions for {len(targets)} targets")
        self.evaluated = {}  # stale once more images come
        for p, t in zip(preds, targets):
            self._dt.append(self._image(p, "prediction", has_scores=True))
            self._gt.append(self._image(t, "target", has_scores=False))

    def arrays(self, iou_type: str = "bbox") -> tuple[CocoGroundTruth, CocoDetections]:
        """Every image seen as the COCO engine's arrays (image ``k`` is the ``k``-th seen,
        label ``c`` is category index ``c - 1``); ``"segm"`` (an evaluator of masks): the
        detections' areas are their mask areas and they carry their RLEs."""

        def cat(items: list[dict], key: str, width: int = 0, dtype: Any = np.float64):
            parts = [i[key] for i in items]
            empty = np.zeros((0, width) if width else 0, dtype=dtype)
            return np.concatenate(parts).astype(dtype) if parts else empty

        def image_index(items: list[dict]) -> np.ndarray:
            counts = [len(i["labels"]) for i in items]
            return np.repeat(np.arange(len(items)), counts).astype(np.int64)

        def xywh(b: np.ndarray) -> np.ndarray:
            return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)

        segm = self.iou_type == "segm"
        iscrowd, difficult = (
            cat(self._gt, "iscrowd", dtype=bool),
            cat(self._gt, "difficult", dtype=bool),
        )
        gt = CocoGroundTruth(
            image_ids=list(range(len(self._gt))),
            category_ids=list(range(1, len(self.class_names) + 1)),
            category_names=self.class_names,
            image=image_index(self._gt),
            category=cat(self._gt, "labels", dtype=np.int64) - 1,
            boxes=xywh(cat(self._gt, "boxes", 4)),
            area=cat(self._gt, "area"),
            iscrowd=iscrowd,
            ignore=iscrowd | difficult,
            zero_id=np.zeros(len(iscrowd), dtype=bool),
            difficult=iscrowd | difficult,
            rles=[r for i in self._gt for r in i["rles"]] if segm else None,
        )
        dt = CocoDetections(
            image=image_index(self._dt),
            category=cat(self._dt, "labels", dtype=np.int64) - 1,
            boxes=xywh(cat(self._dt, "boxes", 4)),
            area=cat(self._dt, "area"),
            scores=cat(self._dt, "scores"),
        )
        return gt, self._mask_detections(dt) if iou_type == "segm" else dt

    def _mask_detections(self, dt: CocoDetections) -> CocoDetections:
        """``dt`` with the mask areas and RLEs: the same matching rules on the masks."""
        return replace(
            dt,
            area=np.concatenate([i["mask_area"] for i in self._dt] or [np.zeros(0)]),
            rles=[r for i in self._dt for r in i["rles"]],
        )

    def compute(self) -> dict[str, Any]:
        """The 12 COCO box stats, ``per_class``, ``voc07_mAP`` and ``voc_mAP`` of every image
        seen since the last :meth:`reset`, and for ``segm`` the 12 ``mask_*`` stats and
        ``mask_per_class`` (floats in [0, 1]; -1 / NaN without ground truth)."""
        gt, dt = self.arrays()
        boxes = evaluate_arrays(gt, dt, "bbox")
        self.evaluated = {"arrays": (gt, dt), "bbox": boxes}
        dets, gts = voc_inputs(gt, dt)
        voc07, _ = voc_map(dets, gts, use_07_metric=True)
        voc, _ = voc_map(dets, gts, use_07_metric=False)
        out: dict[str, Any] = dict(boxes.stats)
        mask_per_class = {}
        if self.iou_type == "segm":
            masks = self.evaluated["segm"] = evaluate_arrays(gt, self._mask_detections(dt), "segm")
            out.update({MASK_PREFIX + k: masks.stats[k] for k in STAT_KEYS})
            mask_per_class = {MASK_PREFIX + "per_class": masks.per_class}
        out.update(per_class=boxes.per_class, voc07_mAP=voc07, voc_mAP=voc)
        return {**out, **mask_per_class}

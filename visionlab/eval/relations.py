"""Visual relationship metrics: recall@K for the three protocols of Lu et al. 2016, "Visual
Relationship Detection with Language Priors" (ECCV), Section 5.

Triplets are ``(subject, predicate, object)``; per image, the K highest-scored predicted
triplets are matched greedily, best score first, each to an unmatched ground-truth triplet
with the same subject label, predicate and object label (the one with the highest overlap,
the first on ties), as the paper's evaluation code does. Recall@K = matched ground-truth
triplets / all ground-truth triplets, over the whole dataset.

- ``"relationship"``: subject and object boxes each IoU >= 0.5 with the ground truth's.
- ``"phrase"``: one box around subject and object, IoU >= 0.5 with the ground truth's.
- ``"predicate"``: the subject and object boxes and labels are the ground truth's (the model
  only predicts predicates); matched as ``"relationship"``, where this means the same pair
  with the right predicate.

How many predicates each pair may contribute is left to the caller (Lu et al. keep the best
one per pair; give several for the "no graph constraint" variant).

Input, per image, either triplet form::

    {"subject_boxes": [R, 4], "subject_labels": [R], "predicates": [R],
     "object_boxes": [R, 4], "object_labels": [R], "scores": [R] (predictions only)}

or the library's contract (DESIGN.md): ``{"boxes": [N, 4], "labels": [N], "relations":
[R, 3] (subject index, predicate, object index), "relation_scores": [R] (predictions)}``.
Boxes are xyxy, absolute pixels (continuous coordinates: IoU without the +1 pixel).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

__all__ = ["PROTOCOLS", "RelationEvaluator", "relation_recall", "relation_triplets"]

PROTOCOLS = ("relationship", "phrase", "predicate")
_FIELDS = ("subject_boxes", "subject_labels", "predicates", "object_boxes", "object_labels")


def relation_triplets(image: Mapping[str, Any], with_scores: bool) -> dict[str, Tensor]:
    """One image's triplets in the triplet form (see the module doc), from either form."""
    if "relations" in image:
        boxes = torch.as_tensor(image["boxes"], dtype=torch.float32).reshape(-1, 4)
        labels = torch.as_tensor(image["labels"]).reshape(-1)
        rel = torch.as_tensor(image["relations"]).reshape(-1, 3).long()
        out = {
            "subject_boxes": boxes[rel[:, 0]],
            "subject_labels": labels[rel[:, 0]],
            "predicates": rel[:, 1],
            "object_boxes": boxes[rel[:, 2]],
            "object_labels": labels[rel[:, 2]],
        }
        if with_scores:
            out["scores"] = torch.as_tensor(image["relation_scores"]).reshape(-1)
    else:
        keys = (*_FIELDS, "scores") if with_scores else _FIELDS
        missing = [k for k in keys if k not in image]
        if missing:
            raise ValueError(f"relation triplets need {missing} (or boxes/labels/relations)")
        out = {k: torch.as_tensor(image[k]) for k in keys}
        for k in ("subject_boxes", "object_boxes"):
            out[k] = out[k].float().reshape(-1, 4)
    n = len(out["predicates"])
    if any(len(v) != n for v in out.values()):
        raise ValueError(
            f"triplet fields differ in length: { {k: len(v) for k, v in out.items()} }"
        )
    return {k: v.detach().cpu() for k, v in out.items()}


def _union(a: Tensor, b: Tensor) -> Tensor:
    return torch.cat([torch.minimum(a[:, :2], b[:, :2]), torch.maximum(a[:, 2:], b[:, 2:])], 1)


def _image_hits(pred: dict, gt: dict, k_max: int, protocol: str, iou_threshold: float):
    """Per kept prediction (score order, at most k_max): does it match a new gt triplet."""
    order = torch.argsort(pred["scores"].double(), descending=True, stable=True)[:k_max]
    pred = {k: v[order] for k, v in pred.items()}
    n_pred, n_gt = len(order), len(gt["predicates"])
    if n_pred == 0 or n_gt == 0:
        return np.zeros(n_pred, dtype=bool)
    same = torch.ones(n_pred, n_gt, dtype=torch.bool)
    for key in ("subject_labels", "predicates", "object_labels"):
        same &= pred[key].reshape(-1, 1) == gt[key].reshape(1, -1)
    if protocol == "phrase":
        ov = box_iou(
            _union(pred["subject_boxes"], pred["object_boxes"]),
            _union(gt["subject_boxes"], gt["object_boxes"]),
        )
    else:
        ov = torch.minimum(
            box_iou(pred["subject_boxes"], gt["subject_boxes"]),
            box_iou(pred["object_boxes"], gt["object_boxes"]),
        )
    ov = torch.where(same & (ov >= iou_threshold), ov.double(), -1.0).numpy()
    hits = np.zeros(n_pred, dtype=bool)
    taken = np.zeros(n_gt, dtype=bool)
    for i in np.flatnonzero(ov.max(axis=1) >= 0):  # only predictions with a candidate
        row = np.where(taken, -1.0, ov[i])
        j = int(row.argmax())  # first on ties
        if row[j] >= 0:
            hits[i], taken[j] = True, True
    return hits


def relation_recall(
    preds: Sequence[Mapping[str, Any]],
    gts: Sequence[Mapping[str, Any]],
    k: Sequence[int] = (50, 100),
    protocol: str = "relationship",
    *,
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """Recall@K of visual relationship predictions (see the module doc for the input forms).

    Args:
        preds: per image, predicted triplets with ``scores``.
        gts: per image, ground-truth triplets.
        k: the K values.
        protocol: ``"relationship"``, ``"phrase"`` or ``"predicate"``.
        iou_threshold: 0.5 in Lu et al.

    Returns:
        ``{"R@50": float, "R@100": float}`` in [0, 1]; NaN when there is no ground truth.
    """
    hits, total = _recall_counts(preds, gts, k, protocol, iou_threshold)
    return {f"R@{kk}": hits[kk] / total if total else float("nan") for kk in k}


def _recall_counts(preds, gts, ks, protocol, iou_threshold) -> tuple[dict[int, int], int]:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions for {len(gts)} ground-truth images")
    hits, total = dict.fromkeys(ks, 0), 0
    for p, g in zip(preds, gts):
        p, g = relation_triplets(p, with_scores=True), relation_triplets(g, with_scores=False)
        image_hits = np.cumsum(_image_hits(p, g, max(ks), protocol, iou_threshold))
        total += len(g["predicates"])
        for kk in ks:
            hits[kk] += int(image_hits[min(kk, len(image_hits)) - 1]) if len(image_hits) else 0
    return hits, total


class RelationEvaluator:
    """Streaming :func:`relation_recall`: ``update(preds, targets)`` per batch (either input
    form), ``compute() -> {"R@50", "R@100"}``. ``primary = "R@50"`` (first K)."""

    def __init__(
        self,
        protocol: str = "relationship",
        ks: Sequence[int] = (50, 100),
        iou_threshold: float = 0.5,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.protocol, self.ks, self.iou_threshold = protocol, tuple(ks), iou_threshold
        self.primary = f"R@{self.ks[0]}"
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self.hits, self.total = dict.fromkeys(self.ks, 0), 0

    def update(self, preds: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]]):
        """Add a batch of per-image predictions and ground truths."""
        hits, total = _recall_counts(preds, targets, self.ks, self.protocol, self.iou_threshold)
        for k in self.ks:
            self.hits[k] += hits[k]
        self.total += total

    def compute(self) -> dict[str, float]:
        """Recall@K of every image seen since the last :meth:`reset`."""
        return {
            f"R@{k}": self.hits[k] / self.total if self.total else float("nan") for k in self.ks
        }

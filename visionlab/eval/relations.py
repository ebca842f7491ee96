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

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from visionlab.ops.boxes import enclosing_boxes

__all__ = [
    "MODES",
    "PROTOCOLS",
    "RelationEvaluator",
    "SceneGraphEvaluator",
    "rank_triplets",
    "relation_recall",
    "relation_triplets",
]

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


def _image_hits(pred: dict, gt: dict, k_max: int, protocol: str, iou_threshold: float):
    """Per kept prediction (score order, at most k_max): does it match a new gt triplet;
    and the kept predictions' predicates."""
    order = torch.argsort(pred["scores"].double(), descending=True, stable=True)[:k_max]
    pred = {k: v[order] for k, v in pred.items()}
    n_pred, n_gt = len(order), len(gt["predicates"])
    predicates = pred["predicates"].long().numpy()
    if n_pred == 0 or n_gt == 0:
        return np.zeros(n_pred, dtype=bool), predicates
    same = torch.ones(n_pred, n_gt, dtype=torch.bool)
    for key in ("subject_labels", "predicates", "object_labels"):
        same &= pred[key].reshape(-1, 1) == gt[key].reshape(1, -1)
    if protocol == "phrase":
        ov = box_iou(
            enclosing_boxes(pred["subject_boxes"], pred["object_boxes"]),
            enclosing_boxes(gt["subject_boxes"], gt["object_boxes"]),
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
    return hits, predicates


def relation_recall(
    preds: Sequence[Mapping[str, Any]],
    gts: Sequence[Mapping[str, Any]],
    k: Sequence[int] = (50, 100),
    protocol: str = "relationship",
    *,
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """Recall@K and mean recall@K of visual relationship predictions (see the module doc
    for the input forms).

    Args:
        preds: per image, predicted triplets with ``scores``.
        gts: per image, ground-truth triplets.
        k: the K values.
        protocol: ``"relationship"``, ``"phrase"`` or ``"predicate"``.
        iou_threshold: 0.5 in Lu et al.

    Returns:
        ``{"R@50", "R@100", "mR@50", "mR@100"}`` in [0, 1]: recall over every ground-truth
        triplet, and its mean over the predicates that have ground truth (mR@K, Chen et al.
        2019 and Tang et al. 2019: a model that learns only the frequent predicates scores
        low); NaN when there is no ground truth.
    """
    counts = _RecallCounts(k)
    counts.add(preds, gts, protocol, iou_threshold)
    return counts.compute()


class _RecallCounts:
    """Matched and total ground-truth triplets per predicate, per K."""

    def __init__(self, ks: Sequence[int]) -> None:
        self.ks = tuple(int(k) for k in ks)
        self.hits: dict[int, Counter] = {k: Counter() for k in self.ks}
        self.total: Counter = Counter()

    def add(self, preds, gts, protocol: str, iou_threshold: float) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if len(preds) != len(gts):
            raise ValueError(f"{len(preds)} predictions for {len(gts)} ground-truth images")
        for p, g in zip(preds, gts):
            p, g = relation_triplets(p, with_scores=True), relation_triplets(g, with_scores=False)
            hits, predicates = _image_hits(p, g, max(self.ks), protocol, iou_threshold)
            self.total.update(g["predicates"].long().tolist())
            for k in self.ks:
                self.hits[k].update(predicates[:k][hits[:k]].tolist())

    def compute(self) -> dict[str, float]:
        total = sum(self.total.values())
        out = {}
        for k in self.ks:
            out[f"R@{k}"] = sum(self.hits[k].values()) / total if total else float("nan")
        for k in self.ks:
            per = [self.hits[k][p] / n for p, n in self.total.items() if n]
            out[f"mR@{k}"] = float(np.mean(per)) if per else float("nan")
        return out

    def per_predicate(self, k: int) -> dict[int, float]:
        """Recall@``k`` of each predicate index that has ground truth."""
        return {p: self.hits[k][p] / n for p, n in sorted(self.total.items()) if n}


def rank_triplets(
    pairs: Tensor, scores: Tensor, k: int, graph_constraint: bool = True, *, stable: bool = True
) -> tuple[Tensor, Tensor]:
    """The ``k`` best triplets of one image from every pair's predicate scores.

    Args:
        pairs: ``Tensor[M, 2]`` (subject index, object index).
        scores: ``Tensor[M, P]`` triplet scores of each pair for each predicate.
        k: triplets kept.
        graph_constraint: one predicate per pair, its best (Lu et al. 2016); ``False``: any
            (pair, predicate), so a pair may appear with several predicates.
        stable: equal scores in pair order, by a stable sort; ``False``: by ``topk`` (the
            exported graphs: ONNX has no stable sort, and its TopK keeps equal scores in
            index order).

    Returns:
        ``(relations [R, 3] (subject, predicate, object), relation_scores [R])``, best first,
        ``R <= k``.
    """

    def best_first(values: Tensor) -> Tensor:
        if stable:
            return torch.argsort(values, descending=True, stable=True)[:k]
        return values.topk(torch.sym_min(k, values.shape[0])).indices

    if graph_constraint:  # no branch on the number of pairs: the exported graphs trace this
        best, predicate = scores.max(dim=1)
        top = best_first(best)
        rows, predicate, kept = top, predicate[top], best[top]
    else:
        flat = scores.reshape(-1)
        top = best_first(flat)
        n_pred = max(scores.shape[1], 1)
        rows, predicate, kept = top // n_pred, top % n_pred, flat[top]
    relations = torch.stack([pairs[rows, 0], predicate.long(), pairs[rows, 1]], dim=1)
    return relations.reshape(-1, 3), kept


class RelationEvaluator:
    """Streaming :func:`relation_recall`: ``update(preds, targets)`` per batch (either input
    form), ``compute() -> {"R@50", "R@100", "mR@50", "mR@100"}``. ``primary = "R@50"``
    (first K)."""

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
        self.counts = _RecallCounts(self.ks)

    def update(self, preds: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]]):
        """Add a batch of per-image predictions and ground truths."""
        self.counts.add(preds, targets, self.protocol, self.iou_threshold)

    def compute(self) -> dict[str, float]:
        """Recall@K and mean recall@K of every image seen since the last :meth:`reset`."""
        return self.counts.compute()

    def per_predicate(self, k: int) -> dict[int, float]:
        """Recall@``k`` of each predicate index with ground truth (since the last reset)."""
        return self.counts.per_predicate(k)


# test-time mode of a relation model -> the protocols scored on its triplets, each as
# ``<name>_R@K``: predicate classification (boxes and labels given: Lu et al.'s "predicate
# detection"), scene-graph classification (boxes given), relationship detection (image only:
# Lu et al.'s "relationship" and "phrase" detection)
MODES: dict[str, tuple[tuple[str, str], ...]] = {
    "predcls": (("predicate", "predicate"),),
    "sgcls": (("sgcls", "relationship"),),
    "sgdet": (("relationship", "relationship"), ("phrase", "phrase")),
}


class SceneGraphEvaluator:
    """Every metric of a relation model in one pass (``task: relation``).

    ``update(preds, targets)`` takes, per mode of :data:`MODES`, the model's per-image
    outputs with ``pairs [M, 2]`` and ``predicate_scores [M, P]`` (the ``relation_pairs``
    extra) beside ``boxes``, ``labels``, ``scores``; targets in the dataset contract. Each
    mode's triplets are ranked with and without the graph constraint
    (:func:`rank_triplets`, at most ``max(ks)`` per image) and scored as ``<name>_R@K``,
    ``<name>_mR@K`` and with the suffix ``_ng`` (no graph constraint); ``relationship_bound``
    is the fraction of ground-truth triplets whose subject and object are both among the
    paired detections with the right class at IoU >= 0.5 (what relationship detection
    could reach), and the box AP keys of the detector's ``sgdet`` detections
    (:class:`~visionlab.eval.detection.DetectionEvaluator`) stand beside them.
    ``<name>_per_predicate`` is ``{predicate name: R@50}`` (graph constraint).
    ``primary = "relationship_R@50"``.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        predicate_names: Sequence[str],
        ks: Sequence[int] = (20, 50, 100),
        iou_threshold: float = 0.5,
    ) -> None:
        self.class_names, self.predicate_names = list(class_names), list(predicate_names)
        self.ks, self.iou_threshold = tuple(ks), iou_threshold
        self.primary = "relationship_R@50"
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        from visionlab.eval.detection import DetectionEvaluator

        self.counts = {
            (name, ng): _RecallCounts(self.ks)
            for protocols in MODES.values()
            for name, _ in protocols
            for ng in (False, True)
        }
        self.detection = DetectionEvaluator(self.class_names)
        self.bound_hits, self.bound_total, self.sgdet_images = 0, 0, 0

    def update(
        self, preds: Mapping[str, Sequence[Mapping[str, Any]]], targets: Sequence[Mapping]
    ) -> None:
        """Add a batch: ``preds[mode]`` per-image outputs for the modes present."""
        unknown = sorted(set(preds) - set(MODES))
        if unknown:
            raise ValueError(f"unknown relation modes {unknown}; known: {list(MODES)}")
        for mode, outputs in preds.items():
            for ng in (False, True):
                ranked = [_ranked(out, max(self.ks), not ng) for out in outputs]
                for name, protocol in MODES[mode]:
                    self.counts[(name, ng)].add(ranked, targets, protocol, self.iou_threshold)
        if "sgdet" in preds:
            self.detection.update(
                [{k: o[k] for k in ("boxes", "labels", "scores")} for o in preds["sgdet"]],
                targets,
            )
            self.sgdet_images += len(targets)
            for out, target in zip(preds["sgdet"], targets):
                hits, total = _bound(out, target, self.iou_threshold)
                self.bound_hits += hits
                self.bound_total += total

    def compute(self) -> dict[str, Any]:
        """The metrics of every image seen since the last :meth:`reset` (class doc)."""
        out: dict[str, Any] = {}
        per_predicate: dict[str, dict[str, float]] = {}
        for (name, ng), counts in self.counts.items():
            if not counts.total:
                continue
            suffix = "_ng" if ng else ""
            out.update({f"{name}_{k}{suffix}": v for k, v in counts.compute().items()})
            if not ng and 50 in self.ks:
                per_predicate[name] = {
                    self.predicate_names[p] if p < len(self.predicate_names) else str(p): r
                    for p, r in counts.per_predicate(50).items()
                }
        if self.bound_total:
            out["relationship_bound"] = self.bound_hits / self.bound_total
        if self.sgdet_images:
            out.update(self.detection.compute())
        for name, table in per_predicate.items():
            out[f"{name}_per_predicate"] = table
        return out


def _ranked(out: Mapping[str, Any], k: int, graph_constraint: bool) -> dict[str, Tensor]:
    """One image's output as ``boxes``, ``labels``, ``relations``, ``relation_scores``,
    re-ranked from its pair scores."""
    pairs = torch.as_tensor(out["pairs"]).reshape(-1, 2).long()
    scores = torch.as_tensor(out["predicate_scores"]).float()
    scores = scores.reshape(len(pairs), -1) if scores.numel() else scores.new_zeros(0, 1)
    relations, relation_scores = rank_triplets(pairs, scores, k, graph_constraint)
    return {
        "boxes": out["boxes"],
        "labels": out["labels"],
        "relations": relations,
        "relation_scores": relation_scores,
    }


def _bound(out: Mapping[str, Any], target: Mapping[str, Any], iou_threshold: float):
    """``(gt triplets whose two objects a paired detection finds, gt triplets)``."""
    relations = torch.as_tensor(target["relations"]).reshape(-1, 3).long()
    if len(relations) == 0:
        return 0, 0
    used = torch.as_tensor(out["pairs"]).reshape(-1).long().unique()
    boxes = torch.as_tensor(out["boxes"]).float()[used].reshape(-1, 4)
    labels = torch.as_tensor(out["labels"])[used]
    gt_boxes = torch.as_tensor(target["boxes"]).float().reshape(-1, 4)
    gt_labels = torch.as_tensor(target["labels"])
    found = torch.zeros(len(gt_boxes), dtype=torch.bool)
    if len(boxes) and len(gt_boxes):
        same = gt_labels.reshape(-1, 1) == labels.reshape(1, -1)
        found = ((box_iou(gt_boxes, boxes) >= iou_threshold) & same).any(dim=1)
    both = found[relations[:, 0]] & found[relations[:, 2]]
    return int(both.sum()), len(relations)

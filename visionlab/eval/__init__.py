"""Metrics every result is judged by: detection (COCO AP/AR equal to pycocotools, Pascal VOC
mAP), semantic segmentation (mIoU), classification (top-k), visual relationships (recall@K)
and region proposals (recall, AR).

Every evaluator has ``update(preds, targets)``, ``compute() -> dict`` and ``primary`` (the
key used for best-checkpoint tracking). Names are imported lazily, on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "coco_evaluate": "visionlab.eval.coco",
    "DetectionEvaluator": "visionlab.eval.detection",
    "voc_ap": "visionlab.eval.detection",
    "voc_map": "visionlab.eval.detection",
    "SegmentationEvaluator": "visionlab.eval.segmentation",
    "confusion_matrix": "visionlab.eval.segmentation",
    "ClassificationEvaluator": "visionlab.eval.classification",
    "topk_accuracy": "visionlab.eval.classification",
    "RelationEvaluator": "visionlab.eval.relations",
    "relation_recall": "visionlab.eval.relations",
    "ProposalEvaluator": "visionlab.eval.proposals",
    "proposal_recall": "visionlab.eval.proposals",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'visionlab.eval' has no attribute {name!r}")

"""Faster R-CNN (Ren, He, Girshick and Sun, "Faster R-CNN: Towards Real-Time Object Detection
with Region Proposal Networks", NeurIPS 2015), optionally with a feature pyramid (Lin et al.,
"Feature Pyramid Networks for Object Detection", CVPR 2017).

The model is the two-stage skeleton (:class:`visionlab.models.two_stage.TwoStageDetector`)
with the region proposal network (:class:`visionlab.models.rpn.RPN`, sec. 3.1) as proposer
and the Fast R-CNN box head (:class:`visionlab.models.heads.RoIBoxPredictor`), trained by
"approximate joint training" (sec. 3.2: the losses summed, proposals treated as constants).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from visionlab.errors import VisionLabError
from visionlab.models.backbones import STRIDES
from visionlab.models.heads import settings_from
from visionlab.models.registry import register_model
from visionlab.models.rpn import RPN, RPNSettings
from visionlab.models.two_stage import TwoStageDetector, build_two_stage

__all__ = ["faster_rcnn", "faster_rcnn_arguments"]


def _check_strides(strides: Sequence[int], fpn: bool) -> tuple[int, ...]:
    strides = tuple(int(s) for s in strides)
    if not strides or any(s not in STRIDES for s in strides) or list(strides) != sorted(strides):
        raise VisionLabError(
            f"faster_rcnn: feature strides must be increasing values of {STRIDES}, got {strides}"
        )
    if not fpn and len(strides) != 1:
        raise VisionLabError("faster_rcnn: several feature strides need fpn=True")
    return strides


@register_model(
    "faster_rcnn",
    task="detection",
    summary="Faster R-CNN: RPN + RoI pooling/align box head, optional FPN (Ren et al. 2015)",
)
def faster_rcnn(
    *,
    num_classes: int = 91,
    backbone: str = "tiny_cnn",
    backbone_width: int = 16,
    pretrained_backbone: str | None = None,
    frozen_stride: int = 0,
    feature_stride: int = 16,
    fpn: bool = False,
    fpn_strides: Sequence[int] = (8, 16, 32),
    fpn_channels: int = 128,
    pooler: str = "roi_align",
    rpn: dict | None = None,
    box_head: dict | None = None,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    min_size: float = 1e-2,
) -> TwoStageDetector:
    """Build Faster R-CNN.

    Args:
        feature_stride: without FPN, the stride of the shared map (8, 16 or 32).
        fpn: use a feature pyramid over ``fpn_strides`` with ``fpn_channels`` channels.
        pooler: ``roi_pool`` or ``roi_align`` (overrides ``box_head["pooler"]``).
        rpn: :class:`RPNSettings` fields, e.g. ``{"anchor_sizes": [16, 32, 64]}``.
        The others: as for ``fast_rcnn``.
    """
    args = dict(locals())
    strides = _check_strides(fpn_strides if fpn else (feature_stride,), fpn)
    rpn_settings = settings_from(RPNSettings, rpn, "faster_rcnn rpn")
    # with FPN, RoIs of the middle anchor size pool from the level whose anchors have it
    per_level = len(rpn_settings.anchor_sizes) // len(strides)
    return build_two_stage(
        "faster_rcnn",
        args,
        proposer=lambda width: RPN(in_channels=width, strides=strides, settings=rpn_settings),
        strides=strides,
        # py-faster-rcnn's end-to-end recipe: every non-fg RoI is background
        box_defaults={"bg_iou_low": 0.0},
        fpn_channels=fpn_channels if fpn else None,
        canonical_size=rpn_settings.anchor_sizes[(len(strides) // 2) * per_level],
        size_divisible=max(strides),
    )


def faster_rcnn_arguments(builder: Callable[..., Any]) -> Callable[..., Any]:
    """Give a builder written ``(*, its own keywords, **faster_args)`` (Mask R-CNN's,
    the relation models') Faster R-CNN's argument list followed by its own keywords: the
    signature the registry and ``visionlab models`` read."""
    faster = list(inspect.signature(faster_rcnn).parameters.values())
    own = [
        p
        for p in inspect.signature(builder).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    builder.__signature__ = inspect.Signature([*faster, *own])  # type: ignore[attr-defined]
    return builder

"""Fast R-CNN (Girshick, "Fast R-CNN", ICCV 2015): selective-search regions, one
convolutional pass over the whole image, RoI pooling of each region on the shared feature
map, fully connected layers, and a softmax + box-regression multi-task loss trained end to end.

The model is the two-stage skeleton (:class:`visionlab.models.two_stage.TwoStageDetector`)
with a :class:`~visionlab.models.two_stage.SelectiveSearchProposer` (cached on disk;
``prepare_data`` searches a whole dataset before training) and the box head
:class:`visionlab.models.heads.RoIBoxPredictor` (sections 2.1-2.3).
"""

from __future__ import annotations

from visionlab.errors import VisionLabError
from visionlab.models.backbones import STRIDES
from visionlab.models.registry import register_model
from visionlab.models.two_stage import SelectiveSearchProposer, TwoStageDetector, build_two_stage

__all__ = ["fast_rcnn"]

SS_MODES = ("fast", "quality")


@register_model(
    "fast_rcnn",
    task="detection",
    summary="Fast R-CNN: selective search + RoI pooling + softmax/box regression (Girshick 2015)",
)
def fast_rcnn(
    *,
    num_classes: int = 91,
    backbone: str = "tiny_cnn",
    backbone_width: int = 16,
    pretrained_backbone: str | None = None,
    frozen_stride: int = 0,
    feature_stride: int = 16,
    pooler: str = "roi_pool",
    proposal_mode: str = "fast",
    max_proposals: int = 2000,
    search_size: int = 0,
    box_head: dict | None = None,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    min_size: float = 1e-2,
) -> TwoStageDetector:
    """Build Fast R-CNN.

    Args:
        num_classes: classes including background (filled in from the dataset by ``train``).
        backbone: a name of :func:`visionlab.models.backbones.list_backbones`.
        backbone_width: ``tiny_cnn``'s stem width.
        pretrained_backbone: a local weights file for the backbone (never downloaded).
        frozen_stride: freeze the backbone up to this stride's map (0: nothing; 4:
            torchvision's ``trainable_backbone_layers=3``; :meth:`Backbone.freeze_to`).
        feature_stride: stride of the shared map (8, 16 or 32).
        pooler: ``roi_pool`` (the paper's) or ``roi_align``.
        proposal_mode: selective search ``fast`` or ``quality``.
        max_proposals: regions kept per image.
        search_size: longer side (px) of the copy selective search runs on; 0 = as given.
        box_head: :class:`BoxHeadSettings` fields, e.g. ``{"fc_width": 256}``.
        score_thresh, nms_thresh, detections_per_img, min_size: the test-time
            :class:`~visionlab.models.postprocess.DetectionSettings`.
    """
    args = dict(locals())
    if proposal_mode not in SS_MODES:
        raise VisionLabError(f"fast_rcnn: proposal_mode must be one of {SS_MODES}")
    if feature_stride not in STRIDES:
        raise VisionLabError(f"fast_rcnn: feature_stride must be one of {STRIDES}")
    if not isinstance(search_size, int) or search_size < 0:
        raise VisionLabError(f"fast_rcnn: search_size must be a length in px >= 0: {search_size!r}")
    proposer = SelectiveSearchProposer(
        mode=proposal_mode, max_proposals=max_proposals, search_size=search_size
    )
    return build_two_stage(
        "fast_rcnn", args, proposer=lambda width: proposer, strides=(feature_stride,)
    )

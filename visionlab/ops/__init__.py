"""Pure tensor functions and small helper objects shared by every detector (no nn.Module state).

Boxes are ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)`` absolute pixels everywhere.
"""

from visionlab.ops.anchors import AnchorGenerator
from visionlab.ops.boxes import (
    batched_nms,
    batched_soft_nms,
    box_area,
    box_convert,
    box_iou,
    clip_boxes_to_image,
    enclosing_boxes,
    generalized_box_iou,
    nms,
    remove_small_boxes,
    soft_nms,
)
from visionlab.ops.coder import BoxCoder
from visionlab.ops.matching import BalancedSampler, Matcher
from visionlab.ops.pooling import (
    roi_align,
    roi_align_separable,
    roi_pool,
    spatial_pyramid_pool,
    spp_rois,
)
from visionlab.ops.proposals import proposal_recall, selective_search, sliding_windows

__all__ = [
    "AnchorGenerator",
    "BalancedSampler",
    "BoxCoder",
    "Matcher",
    "batched_nms",
    "batched_soft_nms",
    "box_area",
    "box_convert",
    "box_iou",
    "clip_boxes_to_image",
    "enclosing_boxes",
    "generalized_box_iou",
    "nms",
    "proposal_recall",
    "remove_small_boxes",
    "roi_align",
    "roi_align_separable",
    "roi_pool",
    "selective_search",
    "sliding_windows",
    "soft_nms",
    "spatial_pyramid_pool",
    "spp_rois",
]

"""Tiny settings of every registered detector, shared by the tests of tests/models (one
table: a new detector adds its row here, and the tests that iterate over the detectors fail
until it does)."""

from __future__ import annotations

# Tiny settings per registered detector, with a feature map below stride 32 where the model
# has one (the scenes recipes read stride 8), and the deepest stride each then reads.
TINY: dict[str, tuple[dict, int]] = {
    "fast_rcnn": ({"backbone_width": 4, "feature_stride": 8, "box_head": {"fc_width": 16}}, 8),
    "faster_rcnn": ({"backbone_width": 4, "box_head": {"fc_width": 16}}, 16),
    "faster_rcnn_fpn": (
        {
            "backbone_width": 4,
            "fpn": True,
            "fpn_strides": [8, 16],
            "fpn_channels": 8,
            "rpn": {"anchor_sizes": [16, 32]},
        },
        16,
    ),
    "mask_rcnn": (
        {"backbone_width": 4, "box_head": {"fc_width": 16}, "mask_head": {"width": 8}},
        16,
    ),
    "relation_rcnn": (
        {
            "backbone_width": 4,
            "box_head": {"fc_width": 16},
            "num_predicates": 2,
            "relation_head": {"width": 8, "embed_dim": 4},
        },
        16,
    ),
    "relation_freq": ({"backbone_width": 4, "box_head": {"fc_width": 16}, "num_predicates": 2}, 16),
    "rcnn": ({"backbone_width": 4, "input_size": 32, "fc_width": 16}, 32),
    "sppnet": ({"backbone_width": 4, "scales": [64], "feature_stride": 8, "fc_width": 16}, 8),
    "yolo": (
        {"backbone_width": 4, "input_size": 64, "head": "conv", "feature_stride": 8},
        8,
    ),
}

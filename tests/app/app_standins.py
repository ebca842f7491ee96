"""The untrained models of the web app's tests, one per task (tiny settings, scenes
classes; detectors keep every detection)."""

from __future__ import annotations

from visionlab.data.scenes import PREDICATES, SCENE_CLASSES

N = len(SCENE_CLASSES)
# task -> (model, its tiny settings): the models count classes as the engine does (detectors
# and FCNs with a background class); detectors keep every detection (score_thresh 0)
MODELS = {
    "classification": ("tiny_cnn", {"num_classes": N, "width": 4}),
    "segmentation": ("fcn8s", {"num_classes": N + 1, "fc_width": 16}),
    "detection": (
        "faster_rcnn",
        {
            "num_classes": N + 1,
            "backbone_width": 4,
            "box_head": {"fc_width": 16},
            "score_thresh": 0.0,
        },
    ),
    "instance": (
        "mask_rcnn",
        {
            "num_classes": N + 1,
            "backbone_width": 4,
            "box_head": {"fc_width": 16},
            "mask_head": {"width": 8},
            "score_thresh": 0.0,
        },
    ),
    "relation": (
        "relation_rcnn",
        {
            "num_classes": N + 1,
            "backbone_width": 4,
            "box_head": {"fc_width": 16},
            "num_predicates": len(PREDICATES),
            "relation_head": {"width": 8, "embed_dim": 4},
            "score_thresh": 0.0,
        },
    ),
}

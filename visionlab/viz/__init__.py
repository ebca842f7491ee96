"""Pictures wherever a person would rather look than read: detections, masks, relationships,
scene graphs, semantic maps, proposals, anchors, the YOLO grid, classification captions,
dataset contact sheets and training curves.

Drawing uses Pillow (built-in font, fixed colours per class) and returns RGB PIL images;
``image.save("x.png")`` writes them. Small images are drawn enlarged (nearest neighbour, by a
whole factor) until their longer side reaches ``min_size`` (512 by default), with boxes, masks
and cells scaled alike; labels are sized to their box and kept inside the picture, legends sit
in a panel to the right of the image, and masks are blended over it. Images may be float
``[3, H, W]`` tensors in [0, 1] or PIL images; boxes are always ``Tensor[N, 4]`` in
``(x1, y1, x2, y2)`` pixels.
"""

from __future__ import annotations

from visionlab.viz._common import PALETTE, class_name, color_for, to_pil, upscale, voc_palette
from visionlab.viz.boxes import (
    draw_anchors,
    draw_detections,
    draw_grid,
    draw_proposals,
    draw_relations,
    responsible_cells_of,
)
from visionlab.viz.dataset import draw_sample, image_grid, show_dataset
from visionlab.viz.graph import draw_scene_graph
from visionlab.viz.labels import draw_classification, draw_semantic, semantic_to_palette_png
from visionlab.viz.plots import plot_curves, plot_grouped_bars, read_metrics

__all__ = [
    "PALETTE",
    "class_name",
    "color_for",
    "draw_anchors",
    "draw_classification",
    "draw_detections",
    "draw_grid",
    "draw_proposals",
    "draw_relations",
    "draw_sample",
    "draw_scene_graph",
    "draw_semantic",
    "image_grid",
    "plot_curves",
    "plot_grouped_bars",
    "read_metrics",
    "responsible_cells_of",
    "semantic_to_palette_png",
    "show_dataset",
    "to_pil",
    "upscale",
    "voc_palette",
]

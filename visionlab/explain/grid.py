"""YOLO explained (Redmon et al., CVPR 2016): the S x S grid and the cells responsible for the
objects, every predictor's box of those cells with its confidence, the class-specific
confidences of the whole grid, and the detections."""

from __future__ import annotations

import torch

from visionlab.explain.common import (
    Scene,
    Step,
    cpu_tensors,
    detections_step,
    figure,
    figure_image,
    image_array,
    objects_of,
)
from visionlab.models.yolo import YOLO
from visionlab.models.yolo_loss import assign
from visionlab.viz import draw_detections, draw_grid


@torch.no_grad()
def yolo_steps(model: YOLO, scene: Scene) -> list[Step]:
    """YOLO: grid and responsible cells, the cells' predictors, class confidences,
    detections."""
    size, S, B = model.input_size, model.S, model.B
    h, w = scene.size
    # the network's input, resized as YOLO resizes it
    grid = model.grid(model._resize([scene.image], size))
    decoded = model.decode(grid["params"], size)  # [1, S, S, B, 4] input pixels
    confidence = grid["confidence"][0].clamp(0, 1).cpu()  # [S, S, B]
    # the detections from this very grid, post-processed as YOLO.detect does
    detections = cpu_tensors(model.postprocess(grid, [scene.size], size, with_grid=True)[0])
    objects = objects_of(scene, detections)
    to_input = torch.tensor([size / w, size / h, size / w, size / h])
    priors = model.priors if model.use_priors else None
    placed = assign([objects.boxes * to_input], [objects.labels], decoded, (size, size), priors)
    cells = torch.stack([placed.row, placed.col], dim=1).cpu()
    chooser = (
        "the prior whose shape matches the object best"
        if model.use_priors
        else "the predictor whose box overlaps the object most"
    )
    first = Step(
        "grid",
        "Grid and responsible cells",
        f"YOLO sees the image at {size} x {size} px as a {S} x {S} grid; the cell holding an "
        f"object's centre is responsible for it: {len(cells)} responsible "
        f"cell{'s' * (len(cells) != 1)} shaded, the objects drawn with their centres. "
        + objects.source,
        draw_grid(
            scene.image,
            S,
            cells,
            boxes=objects.boxes,
            labels=objects.labels,
            class_names=scene.classes,
        ),
        {"S": S, "B": B, "responsible_cells": cells.tolist(), "objects": len(objects.boxes)},
    )
    # every predictor of each responsible cell, in the scene's pixels
    unique = sorted({tuple(c) for c in cells.tolist()})
    base = draw_grid(scene.image, S, cells)
    factor = base.width / w
    boxes = [decoded[0, r, c].cpu() / to_input for r, c in unique]  # [B, 4] each
    drawn_boxes = torch.cat(boxes) if boxes else torch.zeros(0, 4)
    drawn_labels = torch.arange(1, B + 1).repeat(len(unique))
    drawn_scores = torch.cat([confidence[r, c] for r, c in unique]) if unique else torch.zeros(0)
    names = [f"box {b + 1}" for b in range(B)]
    responsible = [
        f"row {int(r)}, column {int(c)}: box {int(p) + 1}"
        for r, c, p in zip(placed.row, placed.col, placed.pred)
    ]
    second = Step(
        "predictors",
        "Each cell's boxes",
        f"Each cell predicts {B} boxes, each with a confidence (Pr(object) x IoU, clamped to "
        f"[0, 1]); drawn are all {B} boxes of the responsible cells. In training the one "
        f"responsible for an object is {chooser}"
        + (f" ({'; '.join(responsible)})." if responsible else "."),
        draw_detections(
            base, drawn_boxes * factor, drawn_labels, drawn_scores, names, min_size=None
        ),
        {
            "cells": [list(c) for c in unique],
            "boxes": [b.tolist() for b in boxes],
            "confidences": [confidence[r, c].tolist() for r, c in unique],
            "responsible_predictor": placed.pred.tolist(),
        },
    )
    return [first, second, _confidence_step(model, grid, scene), _detections(scene, detections)]


def _confidence_step(model: YOLO, grid: dict, scene: Scene) -> Step:
    """The best class-specific confidence of each cell, as a heat map over the image."""
    S, B = model.S, model.B
    scores = model.class_scores(grid)[0].reshape(S, S, B, -1)  # [S, S, B, C]
    best = scores.amax(dim=(2, 3)).cpu()
    h, w = scene.size
    fig = figure(6.4, 5.2)
    ax = fig.subplots()
    ax.imshow(image_array(scene.image), extent=(0, w, h, 0))
    heat = ax.imshow(best.numpy(), extent=(0, w, h, 0), cmap="inferno", alpha=0.6, vmin=0)
    ax.set_xticks([k * w / S for k in range(S + 1)], labels=[])
    ax.set_yticks([k * h / S for k in range(S + 1)], labels=[])
    ax.grid(color="white", linewidth=0.5)
    fig.colorbar(heat, ax=ax, label="best class-specific confidence")
    sentence = (
        "Class-specific confidence, Pr(class | object) x confidence (eq. 2), the best of each "
        f"cell's {B} boxes and {scores.shape[-1]} classes: these scores, thresholded, go to "
        "class-wise NMS."
    )
    facts = {"best_per_cell": best.tolist()}
    return Step("class_confidence", "Class-specific confidence", sentence, figure_image(fig), facts)


def _detections(scene: Scene, detections: dict) -> Step:
    step = detections_step(scene, detections, "YOLO")
    keep = detections["scores"] >= scene.score_threshold
    step.facts["cells"] = detections["cells"][keep].tolist()
    return step

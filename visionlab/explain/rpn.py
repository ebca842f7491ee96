"""The region proposal network explained (Faster R-CNN, Ren et al. 2015, sec. 3.1): the
anchors of one feature-map location, the anchors training would label positive and negative
(the model's own matcher and sampler), and the proposals before and after the RPN's NMS."""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import Tensor

from visionlab.explain.common import SHOWN_PROPOSALS, Objects, Scene, Step
from visionlab.models.batching import batch_images
from visionlab.models.rpn import RPN, label_anchors
from visionlab.models.two_stage import TwoStageDetector
from visionlab.ops import box_iou
from visionlab.viz import (
    draw_anchors,
    draw_detections,
    draw_proposals,
    image_grid,
    to_pil,
    upscale,
)

SHOWN_NEGATIVES = 40


class RPNView:
    """The RPN's inputs for one image: the padded batch, the feature maps and every anchor
    (per level, in the generator's order: cell-major, then anchor)."""

    @torch.no_grad()
    def __init__(self, model: TwoStageDetector, scene: Scene) -> None:
        self.model, self.rpn, self.scene = model, model.proposer, scene
        rpn: RPN = self.rpn
        batch, self.sizes = batch_images([scene.image], size_divisible=model.size_divisible)
        self.batch_shape = (int(batch.shape[-2]), int(batch.shape[-1]))
        self.features = model.features(batch)
        self.grids = [(int(f.shape[-2]), int(f.shape[-1])) for f in self.features]
        self.anchors_per_level = [
            a.cpu() for a in rpn.anchor_generator(self.batch_shape, self.grids, rpn.strides)
        ]
        self.per_location = rpn.anchor_generator.num_anchors_per_location()[0]

    def location_anchors(self, x: float, y: float) -> tuple[Tensor, list[tuple[int, int, int]]]:
        """The anchors of the cell holding pixel ``(x, y)`` on every level, and the cells
        ``(stride, row, col)``."""
        anchors, cells = [], []
        for level, (stride, (h, w)) in enumerate(zip(self.rpn.strides, self.grids)):
            row, col = min(int(y // stride), h - 1), min(int(x // stride), w - 1)
            start = (row * w + col) * self.per_location
            anchors.append(self.anchors_per_level[level][start : start + self.per_location])
            cells.append((stride, row, col))
        return torch.cat(anchors), cells

    @torch.no_grad()
    def proposals_before_nms(self) -> list[Tensor]:
        """What the RPN proposes with its NMS off (IoU 1 keeps every box) and no cap after
        it: the decoded, clipped top-N of each level."""
        unsuppressed = copy.copy(self.rpn)  # shares the weights; only its settings differ
        unsuppressed.settings = dataclasses.replace(
            self.rpn.settings,
            nms_thresh=1.0,
            post_nms_top_n_test=sum(map(len, self.anchors_per_level)),
        )
        proposals, _ = unsuppressed.eval()(
            [self.scene.image], self.features, self.batch_shape, self.sizes
        )
        return proposals


def anchors_step(view: RPNView, objects: Objects) -> Step:
    """Every anchor shape of one location: the cell holding the first object's centre (or
    the image's centre)."""
    s, (h, w) = view.rpn.settings, view.scene.size
    if len(objects.boxes):
        x, y = ((objects.boxes[0, :2] + objects.boxes[0, 2:]) / 2).tolist()
        where = "the cell holding the first object's centre"
    else:
        x, y, where = w / 2, h / 2, "the cell at the image's centre"
    anchors, cells = view.location_anchors(x, y)
    levels = ", ".join(f"row {r}, column {c} of the stride-{st} map" for st, r, c in cells)
    sentence = (
        f"The RPN's {view.per_location} anchors per location"
        + (f" on each of its {len(cells)} levels" if len(cells) > 1 else "")
        + f", here at {where}: {levels}. "
        f"Sizes {', '.join(f'{v:g}' for v in s.anchor_sizes)} px"
        + (f" (split over {len(cells)} FPN levels)" if len(cells) > 1 else "")
        + f" times ratios h/w {', '.join(f'{r:g}' for r in s.aspect_ratios)}; each shape has "
        "its colour, the image is drawn with a margin so anchors past its border show. "
        + objects.source
    )
    facts = {
        "anchors_per_location": view.per_location,
        "levels": len(cells),
        "anchors_drawn": len(anchors),
        "cells": [list(c) for c in cells],
        "anchors": anchors.tolist(),
    }
    picture = draw_anchors(view.scene.size, anchors, image=view.scene.image)
    return Step("anchors", "Anchors at one location", sentence, picture, facts)


def anchor_labels_step(view: RPNView, objects: Objects) -> Step:
    """The anchors training labels positive / negative against ``objects`` (the RPN's
    matcher), and the negatives its balanced sampler would draw."""
    s = view.rpn.settings
    anchors = torch.cat(view.anchors_per_level)
    labels = label_anchors(anchors, [objects.boxes], view.rpn.matcher)[0][0]
    pos, neg = labels == 1, labels == 0
    generator = torch.Generator().manual_seed(0)
    sampled_pos, sampled_neg = view.rpn.sampler([labels], generator=generator)
    negatives = anchors[sampled_neg[0]]
    negatives = negatives[torch.randperm(len(negatives), generator=generator)[:SHOWN_NEGATIVES]]
    panels = _anchor_panels(view.scene, [anchors[pos], negatives], objects)
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    best_iou = box_iou(objects.boxes, anchors[pos]).max(dim=0).values if n_pos else torch.zeros(0)
    n_sampled = int(sampled_neg[0].sum())
    titles = [f"{n_pos} positives", f"{len(negatives)} of the {n_sampled} sampled negatives"]
    sentence = (
        f"{objects.source} Training labels {n_pos} anchors positive (IoU at "
        f"least {s.fg_iou:g} with an object, or an object's best anchor), {n_neg} negative "
        f"(IoU below {s.bg_iou:g} with every object), {int((labels < 0).sum())} ignored in "
        f"between. The loss samples {int(sampled_pos[0].sum())} positives and "
        f"{int(sampled_neg[0].sum())} negatives ({s.batch_size_per_image} per image, at most "
        f"{s.positive_fraction:.0%} positive); right, {len(negatives)} of the sampled negatives."
    )
    facts = {
        "positives": n_pos,
        "negatives": n_neg,
        "ignored": int((labels < 0).sum()),
        "sampled_positives": int(sampled_pos[0].sum()),
        "sampled_negatives": int(sampled_neg[0].sum()),
        "positive_iou_min": float(best_iou.min()) if n_pos else None,
        "objects_are_ground_truth": objects.ground_truth,
    }
    picture = image_grid(panels, cols=2, titles=titles)
    return Step("anchor_labels", "Positive and negative anchors", sentence, picture, facts)


def _anchor_panels(scene: Scene, sets: list[Tensor], objects: Objects) -> list:
    """Each set of anchors drawn over the image (one margin for all, so the panels match),
    with the objects' boxes and labels on top."""
    h, w = scene.size
    _, factor = upscale(to_pil(scene.image))
    every = torch.cat(sets)
    over = torch.cat([-every[:, :2], every[:, 2:] - torch.tensor([w, h])], 1)
    reach = min(max(float(over.max()), 0.0), max(h, w)) if len(every) else 0.0
    margin = int(reach * factor) + 8
    panels = []
    for anchors in sets:
        picture = draw_anchors(
            scene.size, anchors, image=scene.image, max_anchors=len(anchors), margin=margin
        )
        panels.append(
            draw_detections(
                picture,
                objects.boxes * factor + margin,
                objects.labels,
                class_names=scene.classes,
                min_size=None,
            )
        )
    return panels


def proposal_steps(view: RPNView, after: Tensor) -> list[Step]:
    """The RPN's proposals before its NMS, and after (the model's own)."""
    s = view.rpn.settings
    before = view.proposals_before_nms()[0].cpu()
    first = (
        f"Every anchor, moved by its predicted deltas, is a candidate: the top "
        f"{s.pre_nms_top_n_test} by objectness per level, clipped to the image and without "
        f"boxes under {s.min_size:g} px, give {len(before)} proposals before NMS (the best "
        f"{min(len(before), SHOWN_PROPOSALS)} drawn, warm colours first)."
    )
    second = (
        f"NMS at IoU {s.nms_thresh:g} removes the near-duplicates and the best "
        f"{s.post_nms_top_n_test} are kept: {len(after)} proposals go to the box head."
    )
    return [
        Step(
            "proposals_before_nms",
            "Proposals before NMS",
            first,
            draw_proposals(view.scene.image, before, max_boxes=SHOWN_PROPOSALS),
            {"proposals": len(before)},
        ),
        Step(
            "proposals_after_nms",
            "Proposals after NMS",
            second,
            draw_proposals(view.scene.image, after, max_boxes=SHOWN_PROPOSALS),
            {"proposals": len(after)},
        ),
    ]

"""The exportable graph of Faster R-CNN, Mask R-CNN and the relation models
(``models/two_stage.py`` with an RPN): one image in, its detections (and masks, or pairs and
relations) out, the proposal and detection post-processing rewritten with masks instead of
the eager code's per-image Python branches.

What differs from the eager path, and why: the batch is one image (the eager skeleton
batches a list of images of different sizes in Python); with FPN every RoI is pooled from
every level and the level of its size selected by a mask (the eager pooler skips empty
levels, a data-dependent branch); masks are pasted for the whole image at once and cut to
each box (the eager code loops over the boxes). The numbers are the eager model's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionlab.eval.relations import rank_triplets
from visionlab.export.graphs import clip_to, nms, resize_input, scalar_like, select_detections
from visionlab.models.heads import _pool_level
from visionlab.models.relation_rcnn import all_pairs

# a relation model's outputs past the detections: per image, not per detection
RELATION_OUTPUTS = ("pairs", "predicate_scores", "relations", "relation_scores")


def _pool(model: nn.Module, features: list[Tensor], rois: Tensor, size: int, kind: str) -> Tensor:
    """``Tensor[R, C, size, size]`` of one image's ``rois`` (:class:`RoIPooler`'s levels)."""
    pooler = model.pooler
    indexed = torch.cat([torch.zeros_like(rois[:, :1]), rois], dim=1)  # image 0
    if len(features) == 1:
        return _pool_level(features[0], indexed, pooler.scales[0], size, kind)
    side = ((rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1])).clamp(min=1e-6).sqrt()
    level = torch.floor(pooler.canonical_level + torch.log2(side / pooler.canonical_size))
    level = level.clamp(0, len(features) - 1).long()
    out = None
    for k, (feat, scale) in enumerate(zip(features, pooler.scales)):
        pooled = _pool_level(feat, indexed, scale, size, kind)
        chosen = (level == k)[:, None, None, None]
        out = pooled if out is None else torch.where(chosen, pooled, out)
    return out


def _proposals(rpn: nn.Module, features: list[Tensor], batch_shape: tuple, size: tuple) -> Tensor:
    """:meth:`visionlab.models.rpn.RPN._proposals` for one image: ``Tensor[P, 4]``."""
    s = rpn.settings
    objectness, deltas = rpn.head(features)
    gen = rpn.anchor_generator
    top_boxes, top_scores, top_levels = [], [], []
    for level, (feat, base, stride) in enumerate(zip(features, gen.cell_anchors, rpn.strides)):
        anchors = gen._grid(base, tuple(feat.shape[-2:]), (stride, stride), feat.device, feat.dtype)
        scores, level_deltas = objectness[level][0], deltas[level][0]  # [N_l], [N_l, 4]
        top = scores.topk(torch.sym_min(s.pre_nms_top_n_test, scores.shape[0])).indices
        decoded = rpn.box_coder.decode(level_deltas[top], anchors[top])
        top_boxes.append(decoded)
        top_scores.append(scores[top])
        top_levels.append(torch.full_like(top, level))
    boxes = clip_to(torch.cat(top_boxes), *size)
    scores, levels = torch.cat(top_scores), torch.cat(top_levels)
    sides = boxes[:, 2:] - boxes[:, :2]
    keep = (sides.min(dim=1).values >= s.min_size).nonzero().squeeze(1)
    boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
    extent = scalar_like(boxes, torch.sym_max(*batch_shape)) + 1
    keep = nms(boxes + (levels.to(boxes.dtype) * extent)[:, None], scores, s.nms_thresh)
    return boxes[keep[: s.post_nms_top_n_test]]


def _paste(masks: Tensor, boxes: Tensor, height: int, width: int, threshold: float) -> Tensor:
    """:func:`visionlab.models.mask_rcnn.paste_masks` for all boxes at once."""
    x1, y1, x2, y2 = boxes.unbind(1)
    xs = torch.arange(width, device=masks.device, dtype=masks.dtype) + 0.5
    ys = torch.arange(height, device=masks.device, dtype=masks.dtype) + 0.5
    gx = (xs[None] - x1[:, None]) / (x2 - x1).clamp(min=1e-6)[:, None]  # [N, W]
    gy = (ys[None] - y1[:, None]) / (y2 - y1).clamp(min=1e-6)[:, None]  # [N, H]
    n = boxes.shape[0]
    grid = torch.stack(
        [
            (2 * gx - 1)[:, None, :].expand(n, height, width),
            (2 * gy - 1)[:, :, None].expand(n, height, width),
        ],
        dim=-1,
    )
    sampled = F.grid_sample(masks[:, None], grid, align_corners=False)[:, 0]
    # the pixels of the eager window [floor(x1), ceil(x2)) x [floor(y1), ceil(y2))
    inside_x = (xs[None] >= x1.floor()[:, None]) & (xs[None] < x2.ceil()[:, None])
    inside_y = (ys[None] >= y1.floor()[:, None]) & (ys[None] < y2.ceil()[:, None])
    return (sampled >= threshold) & inside_y[:, :, None] & inside_x[:, None, :]


class _OneImage:
    """What :meth:`RelationHead.logits` reads of an :class:`RoIBatch`, for one traced image:
    its size and pooling from its features."""

    def __init__(self, model: nn.Module, features: list[Tensor], size: tuple) -> None:
        self.model, self.features, self.image_sizes = model, features, [size]

    def pool(self, rois: Sequence[Tensor], output_size: int, kind: str = "roi_align") -> Tensor:
        return _pool(self.model, self.features, rois[0], output_size, kind)


def _relations(
    head: nn.Module, batch: _OneImage, boxes: Tensor, scores: Tensor, labels: Tensor
) -> tuple[Tensor, ...]:
    """:meth:`RelationHead.forward` for one image's detections: ``pairs [M, 2]`` and
    ``predicate_scores [M, P]`` of every ordered pair of the objects kept, and the ranked
    ``relations [R, 3]``, ``relation_scores [R]``."""
    s = head.settings
    if s.object_nms < 1:
        objects = nms(boxes.float(), scores.float(), s.object_nms)[: s.max_objects]
    else:
        objects = torch.arange(boxes.shape[0], device=boxes.device)[: s.max_objects]
    kept, kept_scores = boxes[objects], scores[objects].float()
    pairs = all_pairs(kept.shape[0], kept.device)
    logits = head.logits(batch, [kept], [labels[objects]], [pairs])
    probs = logits.float().softmax(dim=1)[:, 1:]
    triplets = kept_scores[pairs[:, 0], None] * kept_scores[pairs[:, 1], None] * probs
    pairs = objects[pairs]  # indices into the detections
    ranked = rank_triplets(pairs, triplets, s.relations_per_image, s.graph_constraint, stable=False)
    return (pairs, triplets, *ranked)


class TwoStageGraph(nn.Module):
    """One image ``[1, 3, H, W]`` in [0, 1] -> ``boxes [M, 4]``, ``scores [M]``, ``labels
    [M]``, ``batch_index [M]`` (zeros) and, for Mask R-CNN, ``masks [M, H, W]`` bool: the
    detections in the input's pixels (resized to the model's image size inside)."""

    one_image = True  # the batch dimension is 1: proposals are selected for one image

    def __init__(self, model: nn.Module, image_size: int | None) -> None:
        super().__init__()
        self.model, self.image_size = model, image_size
        self.has_masks = "mask" in model.roi_heads
        self.has_relations = "relation" in model.roi_heads
        self.outputs = ("boxes", "scores", "labels", "batch_index") + (
            ("masks",) if self.has_masks else ()
        )
        if self.has_relations:
            self.outputs += RELATION_OUTPUTS

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        model = self.model
        height, width = images.shape[-2:]
        x = resize_input(images, self.image_size)
        size = tuple(x.shape[-2:])
        # batch_images' zero padding, with no branch on whether any is needed
        pad_h, pad_w = -size[0] % model.size_divisible, -size[1] % model.size_divisible
        batch = F.pad(x, (0, pad_w, 0, pad_h))
        features = model.features(batch)
        proposals = _proposals(model.proposer, features, tuple(batch.shape[-2:]), size)
        head = model.roi_heads["box"]
        hs = head.settings
        logits, deltas = head.head(_pool(model, features, proposals, hs.pool_size, hs.pooler))
        scores = logits.float().softmax(dim=-1)[:, 1:]
        sets = deltas.shape[1] // 4
        boxes = head.box_coder.decode(deltas.float(), proposals.float()).reshape(-1, sets, 4)
        boxes = boxes[:, 1:] if sets > 1 else boxes[:, 0]
        found = select_detections(scores[None], boxes[None], size, head.detection_settings)
        det_boxes, det_scores, labels, image = found
        scale = torch.stack(
            [scalar_like(x, width) / size[1], scalar_like(x, height) / size[0]]
        ).repeat(2)
        outputs = (det_boxes * scale, det_scores, labels, image)
        if self.has_relations:
            batch = _OneImage(model, features, size)
            head = model.roi_heads["relation"]
            return (*outputs, *_relations(head, batch, det_boxes, det_scores, labels))
        if not self.has_masks:
            return outputs
        mask_head, ms = model.roi_heads["mask"], model.roi_heads["mask"].settings
        # MaskHead.logits, indexed by shape instead of len() (a traced count has no value)
        pooled = _pool(model, features, det_boxes, ms.pool_size, ms.pooler)
        logits = mask_head.predictor(F.relu(mask_head.upsample(mask_head.convs(pooled))))
        rows = torch.arange(logits.shape[0], device=logits.device)
        picked = logits[:, 0] if ms.class_agnostic else logits[rows, labels - 1]
        masks = _paste(picked.sigmoid().float(), det_boxes.float(), *size, ms.mask_thresh)
        masks = F.interpolate(masks[:, None].float(), size=(height, width), mode="nearest")
        return (*outputs, masks[:, 0] > 0.5)

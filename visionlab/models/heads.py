"""The box predictor shared by the R-CNN family: RoI features in, class scores and per-class
box deltas out, trained with Fast R-CNN's multi-task loss (Girshick, ICCV 2015).

Fast R-CNN sections: 2.1 RoI pooling to a fixed grid; 2.2 / fig. 1 fully connected layers,
a softmax over ``K + 1`` classes and ``4 K`` class-specific deltas
(:class:`visionlab.ops.BoxCoder`); 2.3 the multi-task loss and the minibatch sampling
(25% foreground at IoU >= 0.5, background in ``[0.1, 0.5)``); 2.4 / 3 per-class decoding
and NMS, by :func:`visionlab.models.postprocess.postprocess_detections`.

The second stage of Fast and Faster R-CNN is :class:`RoIHeads`, named heads run in order on
one :class:`RoIBatch`; its box head is :class:`RoIBoxPredictor` (:class:`RoIPooler` +
:class:`BoxHead` + sampling + loss + :func:`decode_detections`). On CPU, training pools with
:func:`visionlab.ops.roi_align_separable` (same numbers, a faster backward).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionlab.errors import VisionLabError
from visionlab.models.postprocess import DetectionSettings, postprocess_detections
from visionlab.ops import (
    BalancedSampler,
    BoxCoder,
    Matcher,
    box_iou,
    roi_align,
    roi_align_separable,
    roi_pool,
)

__all__ = [
    "BoxHead",
    "BoxHeadSettings",
    "RoIBatch",
    "RoIBoxPredictor",
    "RoIHeads",
    "RoIPooler",
    "decode_detections",
    "fast_rcnn_loss",
    "sample_proposals",
]

POOLERS = ("roi_pool", "roi_align")


@dataclass
class BoxHeadSettings:
    """Settings of the RoI box head (Fast R-CNN, Girshick 2015, sections 2.1-2.4).

    Attributes:
        pooler: ``"roi_pool"`` (Fast R-CNN's max pooling) or ``"roi_align"`` (Mask R-CNN).
        pool_size: RoI pooling grid ``pool_size x pool_size`` (7 for VGG16 in the paper).
        fc_width: width of the two fully connected layers (4096 in the paper).
        batch_size_per_image: RoIs sampled per image in training (the paper: 128 / 2 images).
        positive_fraction: fraction of foreground RoIs in a sample (0.25).
        fg_iou: IoU with a ground-truth box at or above which a RoI is foreground (0.5).
        bg_iou_low: lower IoU bound of background RoIs (0.1; 0.0 samples every
            non-foreground RoI, as py-faster-rcnn's end-to-end recipe).
        add_gt_as_proposals: add the ground-truth boxes to each image's RoIs in training.
        box_weights: :class:`BoxCoder` weights ``(wx, wy, ww, wh)`` (target normalisation).
        smooth_l1_beta: the smooth L1 transition point (1.0 in the paper).
    """

    pooler: str = "roi_align"
    pool_size: int = 7
    fc_width: int = 256
    batch_size_per_image: int = 64
    positive_fraction: float = 0.25
    fg_iou: float = 0.5
    bg_iou_low: float = 0.1
    add_gt_as_proposals: bool = True
    box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    smooth_l1_beta: float = 1.0

    def __post_init__(self) -> None:
        if self.pooler not in POOLERS:
            raise VisionLabError(f"box head: pooler must be one of {POOLERS}, got {self.pooler!r}")
        if not 0 <= self.bg_iou_low <= self.fg_iou <= 1:
            raise VisionLabError(
                f"box head: need 0 <= bg_iou_low ({self.bg_iou_low}) <= fg_iou ({self.fg_iou}) <= 1"
            )
        self.box_weights = tuple(float(w) for w in self.box_weights)


def settings_from(cls: type, value: object, where: str) -> object:
    """A settings dataclass from ``value``: an instance, a dict of its fields, or None."""
    import dataclasses

    from visionlab.models.registry import did_you_mean

    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise VisionLabError(f"{where}: expected a mapping of settings, got {value!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in value:
        if key not in names:
            hint = did_you_mean(key, names)
            raise VisionLabError(f"{where}: unknown setting {key!r}{hint}; known: {names}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
    return cls(**kwargs)


# --------------------------------------------------------------------------- head


class BoxHead(nn.Module):
    """Two fully connected layers, then the class scores and per-class box deltas
    (Fast R-CNN, fig. 1).

    Args:
        in_channels: channels of the pooled RoI features.
        pool_size: side of the pooled grid.
        num_classes: classes including background (``K + 1``).
        fc_width: width of the two hidden layers.
    """

    def __init__(self, *, in_channels: int, pool_size: int, num_classes: int, fc_width: int):
        super().__init__()
        self.fc6 = nn.Linear(in_channels * pool_size * pool_size, fc_width)
        self.fc7 = nn.Linear(fc_width, fc_width)
        self.cls_score = nn.Linear(fc_width, num_classes)
        self.bbox_pred = nn.Linear(fc_width, num_classes * 4)
        # the paper's initialisation: zero-mean Gaussians, std 0.01 (scores), 0.001 (deltas)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.zeros_(layer.bias)

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """``pooled Tensor[R, C, P, P]`` -> ``(class_logits [R, K+1], box_deltas [R, 4(K+1)])``."""
        x = F.relu(self.fc6(pooled.flatten(1)))
        x = F.relu(self.fc7(x))
        return self.cls_score(x), self.bbox_pred(x)


# --------------------------------------------------------------------------- training


def sample_proposals(
    proposals: Sequence[Tensor],
    targets: Sequence[dict],
    *,
    matcher: Matcher,
    sampler: BalancedSampler,
    box_coder: BoxCoder,
    add_gt: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[list[Tensor], Tensor, Tensor, list[Tensor]]:
    """Label proposals by IoU with the ground truth and sample a balanced minibatch.

    Best IoU ``>= matcher.high_threshold``: foreground (its gt's class); in ``[low, high)``:
    background; below: ignored, except in an image without objects (all background).

    Args:
        proposals: per image ``Tensor[P_i, 4]`` xyxy.
        targets: per image ``{"boxes": Tensor[G_i, 4], "labels": Tensor[G_i] (1..K)}``.
        matcher: ``Matcher(fg_iou, bg_iou_low)``.
        sampler: ``BalancedSampler(batch_size_per_image, positive_fraction)``.
        box_coder: encodes regression targets.
        add_gt: append the gt boxes to each image's proposals first.
        generator: makes the draw reproducible.

    Returns:
        ``(sampled_proposals [Tensor[S_i, 4]], labels Tensor[S] int64 (0 = background),
        regression_targets Tensor[S, 4], matched_gt [Tensor[S_i]])``, ``S = sum S_i``;
        ``matched_gt`` indexes each proposal's ground truth in its image.
    """
    labels_per_image, matched_per_image, index_per_image, props = [], [], [], []
    for boxes, target in zip(proposals, targets):
        gt_boxes = target["boxes"].to(boxes.dtype)
        if add_gt and gt_boxes.numel():
            boxes = torch.cat([boxes, gt_boxes])
        props.append(boxes)
        if gt_boxes.numel() == 0:
            zeros = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
            labels_per_image.append(zeros)
            matched_per_image.append(boxes)  # no regression target is used
            index_per_image.append(zeros)
            continue
        matches = matcher(box_iou(gt_boxes, boxes))  # [P]
        labels = target["labels"].to(boxes.device)[matches.clamp(min=0)]
        labels = labels.masked_fill(matches == Matcher.BETWEEN_THRESHOLDS, 0)
        labels = labels.masked_fill(matches == Matcher.BELOW_LOW_THRESHOLD, -1)
        labels_per_image.append(labels)
        matched_per_image.append(gt_boxes[matches.clamp(min=0)])
        index_per_image.append(matches.clamp(min=0))
    pos_masks, neg_masks = sampler(labels_per_image, generator=generator)
    sampled, labels, matched, indices = [], [], [], []
    for boxes, lab, gt, index, pos, neg in zip(
        props, labels_per_image, matched_per_image, index_per_image, pos_masks, neg_masks
    ):
        keep = torch.where(pos | neg)[0]
        sampled.append(boxes[keep])
        labels.append(lab[keep].clamp(min=0))
        matched.append(gt[keep])
        indices.append(index[keep])
    all_boxes = torch.cat(sampled)
    regression_targets = box_coder.encode(torch.cat(matched), all_boxes)
    return sampled, torch.cat(labels), regression_targets, indices


def fast_rcnn_loss(
    class_logits: Tensor,
    box_deltas: Tensor,
    labels: Tensor,
    regression_targets: Tensor,
    *,
    smooth_l1_beta: float = 1.0,
) -> dict[str, Tensor]:
    """Fast R-CNN's multi-task loss (section 2.3, eq. 1-3).

    Args:
        class_logits: ``Tensor[S, K+1]``.
        box_deltas: ``Tensor[S, 4(K+1)]``, class ``k``'s deltas at columns ``4k..4k+3``.
        labels: ``Tensor[S] int64``, 0 = background.
        regression_targets: ``Tensor[S, 4]`` encoded deltas of each RoI's matched gt box.
        smooth_l1_beta: smooth L1 transition point.

    Returns:
        ``{"loss_classifier": log loss averaged over the S RoIs, "loss_box_reg": smooth L1
        of the foreground RoIs' true-class deltas, summed and divided by S}``.
    """
    if labels.numel() == 0:
        zero = class_logits.sum() * 0.0 + box_deltas.sum() * 0.0
        return {"loss_classifier": zero, "loss_box_reg": zero}
    loss_cls = F.cross_entropy(class_logits.float(), labels)
    fg = torch.where(labels > 0)[0]
    deltas = box_deltas.reshape(len(labels), -1, 4)[fg, labels[fg]]  # [F, 4]
    loss_box = (
        F.smooth_l1_loss(
            deltas.float(), regression_targets[fg], beta=smooth_l1_beta, reduction="sum"
        )
        / labels.numel()
    )
    return {"loss_classifier": loss_cls, "loss_box_reg": loss_box}


# --------------------------------------------------------------------------- test time


def decode_detections(
    class_logits: Tensor,
    box_deltas: Tensor,
    proposals: Sequence[Tensor],
    image_sizes: Sequence[tuple[int, int]],
    *,
    box_coder: BoxCoder,
    settings: DetectionSettings,
) -> list[dict[str, Tensor]]:
    """Per-RoI class logits and per-class deltas to detections (Fast R-CNN sec. 3): softmax,
    then :func:`~visionlab.models.postprocess.postprocess_detections`, which decodes only
    the (RoI, class) pairs past ``settings.score_thresh``.

    Args:
        class_logits: ``Tensor[R, K+1]`` of all images' RoIs, in order; column 0 background.
        box_deltas: ``Tensor[R, 4(K+1)]`` per-class deltas, or ``Tensor[R, 4]`` class-agnostic
            deltas (zeros: the RoIs themselves are the boxes).
        proposals: per image ``Tensor[R_i, 4]`` xyxy RoIs (``sum R_i = R``).
        image_sizes: per image ``(H, W)`` to clip to.
        box_coder, settings: the deltas' coder, the post-processor's settings.

    Returns:
        Per image ``{"boxes": Tensor[N, 4], "labels": Tensor[N] 1..K, "scores": Tensor[N]}``.
    """
    counts = [len(p) for p in proposals]
    scores_all = F.softmax(class_logits.float(), dim=-1)
    sets = box_deltas.shape[1] // 4  # K + 1 per-class sets, or 1 class-agnostic
    per_class = sets > 1
    results = []
    for scores, deltas, rois, size in zip(
        scores_all.split(counts), box_deltas.float().split(counts), proposals, image_sizes
    ):
        deltas = deltas.reshape(-1, 4)  # [R_i * sets, 4]: set j of RoI r in row r * sets + j

        def decode(rows: Tensor, labels: Tensor, deltas=deltas, rois=rois) -> Tensor:
            picked = deltas.index_select(0, rows * sets + labels if per_class else rows)
            return box_coder.decode(picked, rois.index_select(0, rows).float())

        results.append(postprocess_detections(scores[:, 1:], decode, size, settings))
    return results


# --------------------------------------------------------------------------- module


def _indexed(rois: Sequence[Tensor]) -> Tensor:
    """Per-image ``Tensor[R_i, 4]`` -> ``Tensor[R, 5]`` rows ``(image index, x1, y1, x2, y2)``."""
    boxes = torch.cat(list(rois))
    image_idx = torch.repeat_interleave(
        torch.arange(len(rois), device=boxes.device),
        torch.tensor([len(r) for r in rois], device=boxes.device),
    )
    return torch.cat([image_idx[:, None].to(boxes.dtype), boxes], dim=1)


@dataclass(frozen=True)
class RoIPooler:
    """Pools per-image RoIs from the shared map, or with FPN from the level of each RoI's
    size (Lin et al. 2017, eq. 1: ``k = floor(k0 + log2(sqrt(wh) / canonical_size))``).

    Args:
        scales: feature cells per image pixel of each map, finest first (``1 / stride``).
        canonical_level: index of the level that pools RoIs of side ``canonical_size``.
        canonical_size: that side in pixels (smaller RoIs go one level finer per halving).
    """

    scales: tuple[float, ...]
    canonical_level: int = 0
    canonical_size: float = 64.0

    def __call__(
        self, features: Sequence[Tensor], rois: Sequence[Tensor], output_size: int, kind: str
    ) -> Tensor:
        """``Tensor[R, C, P, P]`` (``P = output_size``) of the per-image RoIs
        ``[Tensor[R_i, 4]]`` with ``kind`` ``roi_pool`` or ``roi_align``."""
        if len(features) == 1:
            return _pool_level(features[0], list(rois), self.scales[0], output_size, kind)
        indexed = _indexed(rois)  # [R, 5]
        boxes = indexed[:, 1:]
        side = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1e-6).sqrt()
        level = torch.floor(self.canonical_level + torch.log2(side / self.canonical_size))
        level = level.clamp(0, len(features) - 1).long()
        out = boxes.new_zeros((len(boxes), features[0].shape[1], output_size, output_size))
        for k, (feat, scale) in enumerate(zip(features, self.scales)):
            idx = torch.where(level == k)[0]
            if len(idx):
                pooled = _pool_level(feat, indexed[idx], scale, output_size, kind)
                out[idx] = pooled.to(out.dtype)
        return out


def _pool_level(
    features: Tensor, rois: Tensor | list, scale: float, size: int, kind: str
) -> Tensor:
    if kind == "roi_pool":
        return roi_pool(features, rois, size, scale)
    # training on CPU: the matrix form, whose backward is fast; torchvision's kernel
    # is the faster forward-only pass (inference) and the GPU path
    if features.device.type == "cpu" and torch.is_grad_enabled() and features.requires_grad:
        if isinstance(rois, list):
            rois = _indexed(rois).to(features.dtype)
        return roi_align_separable(features, rois, size, scale, sampling_ratio=2)
    return roi_align(features, rois, size, scale, sampling_ratio=2)


@dataclass
class RoIBatch:
    """What the RoI heads of a two-stage detector see for one batch.

    Attributes:
        features: the shared maps ``[Tensor[B, C, h_l, w_l]]``, finest first (one without
            FPN).
        proposals: per image ``Tensor[P_i, 4]`` xyxy input pixels (detached).
        image_sizes: per image ``(H_i, W_i)``.
        pooler: the :class:`RoIPooler` of ``features``.
        targets: training only, per image ``boxes`` / ``labels`` (and what a head needs).
        shared: what one head leaves for the heads after it (the box head's ``"rois"``,
            ``"labels"``, ``"matched_gt"`` in training).
    """

    features: list[Tensor]
    proposals: list[Tensor]
    image_sizes: list[tuple[int, int]]
    pooler: RoIPooler
    targets: list[dict[str, Tensor]] | None = None
    shared: dict[str, object] = field(default_factory=dict)
    given: list[dict[str, Tensor]] | None = None

    def pool(self, rois: Sequence[Tensor], output_size: int, kind: str = "roi_align") -> Tensor:
        """``Tensor[R, C, P, P]`` features of per-image ``rois`` (:class:`RoIPooler`)."""
        return self.pooler(self.features, rois, output_size, kind)


class RoIHeads(nn.ModuleDict):
    """The second stage of a two-stage detector: named heads run in order on one
    :class:`RoIBatch`, the box head first.

    Each head is called ``head(batch, detections) -> (detections, losses)``: ``([],
    {"loss_*": ...})`` in training; in eval the box head makes the per-image detection dicts
    and a later head adds its keys to them (a mask head its ``masks``).
    """

    def forward(self, batch: RoIBatch) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """``(detections, losses)``: per-image dicts in eval, ``{}`` losses; the reverse in
        training."""
        detections: list[dict[str, Tensor]] = []
        losses: dict[str, Tensor] = {}
        for head in self.values():
            detections, head_losses = head(batch, detections)
            losses.update(head_losses)
        return detections, losses


class RoIBoxPredictor(nn.Module):
    """The box head of :class:`RoIHeads`: RoI pooling + :class:`BoxHead` + sampling + loss +
    decoding; in training it leaves ``"rois"``, ``"labels"``, ``"matched_gt"`` in
    ``batch.shared`` for the heads after it.

    Args:
        in_channels: channels of the feature maps.
        num_classes: classes including background.
        settings: :class:`BoxHeadSettings`.
        detection: test-time :class:`~visionlab.models.postprocess.DetectionSettings`.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        settings: BoxHeadSettings | None = None,
        detection: DetectionSettings | None = None,
    ) -> None:
        super().__init__()
        self.settings = s = settings or BoxHeadSettings()
        self.detection_settings = detection or DetectionSettings()
        self.num_classes = int(num_classes)
        self.head = BoxHead(
            in_channels=in_channels,
            pool_size=s.pool_size,
            num_classes=num_classes,
            fc_width=s.fc_width,
        )
        self.box_coder = BoxCoder(s.box_weights)
        self.matcher = Matcher(s.fg_iou, s.bg_iou_low, allow_low_quality_matches=False)
        self.sampler = BalancedSampler(s.batch_size_per_image, s.positive_fraction)

    def forward(
        self, batch: RoIBatch, detections: list[dict[str, Tensor]] | None = None
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Score the proposals of ``batch``.

        Returns:
            ``(detections, losses)``: in training ``([], {"loss_classifier", "loss_box_reg"})``;
            in eval (per-image detection dicts, ``{}``), see :func:`decode_detections`.
        """
        s = self.settings
        if self.training:
            rois, labels, regression_targets, matched_gt = sample_proposals(
                batch.proposals,
                batch.targets,
                matcher=self.matcher,
                sampler=self.sampler,
                box_coder=self.box_coder,
                add_gt=s.add_gt_as_proposals,
            )
            batch.shared.update(rois=rois, labels=labels, matched_gt=matched_gt)
            logits, deltas = self.head(batch.pool(rois, s.pool_size, s.pooler))
            losses = fast_rcnn_loss(
                logits, deltas, labels, regression_targets, smooth_l1_beta=s.smooth_l1_beta
            )
            return [], losses
        if batch.given is not None:
            return self.given_detections(batch), {}
        logits, deltas = self.head(batch.pool(batch.proposals, s.pool_size, s.pooler))
        detections = decode_detections(
            logits,
            deltas,
            batch.proposals,
            batch.image_sizes,
            box_coder=self.box_coder,
            settings=self.detection_settings,
        )
        return detections, {}

    def given_detections(self, batch: RoIBatch) -> list[dict[str, Tensor]]:
        """Detections on ``batch.given`` boxes, in their order: given ``labels`` are kept
        (scores 1); without, each box gets its best foreground class and that class's
        probability (no box regression, no NMS: scene-graph classification)."""
        sizes = [len(p) for p in batch.proposals]  # the given boxes are the proposals
        fg = batch.proposals[0].new_zeros((sum(sizes), self.num_classes - 1))
        if sum(sizes) and any(g.get("labels") is None for g in batch.given):
            s = self.settings
            logits, _ = self.head(batch.pool(batch.proposals, s.pool_size, s.pooler))
            fg = logits.float().softmax(dim=1)[:, 1:]
        out = []
        for g, boxes, probs in zip(batch.given, batch.proposals, fg.split(sizes)):
            if g.get("labels") is not None:
                labels, scores = g["labels"].long(), boxes.new_ones(len(boxes))
            else:
                scores, best = probs.max(dim=1)
                labels = best + 1
            out.append({"boxes": boxes, "labels": labels, "scores": scores})
        return out

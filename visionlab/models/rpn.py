"""The region proposal network of Faster R-CNN (Ren, He, Girshick and Sun, NeurIPS 2015, sec. 3.1).

A 3x3 convolution slides over the shared map(s), then two sibling 1x1 convolutions give an
objectness score and 4 box deltas for each of ``A`` anchors per location. Training (sec.
3.1.2): anchors labelled by IoU with the ground truth, a balanced sample, log loss plus
smooth L1; proposals: decoded anchors, top-N, NMS, top-N (sec. 3.3). Labelling and proposal
selection are vectorised over the batch (one IoU matrix, one NMS call).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionlab.errors import VisionLabError
from visionlab.ops import AnchorGenerator, BalancedSampler, BoxCoder, Matcher, batched_nms, box_iou

__all__ = ["RPN", "RPNHead", "RPNSettings", "label_anchors"]


@dataclass
class RPNSettings:
    """Settings of the region proposal network (Faster R-CNN, sec. 3.1 and 3.3).

    Attributes:
        anchor_sizes: anchor sizes (square root of the area, px); with FPN, split over the
            levels in order.
        aspect_ratios: anchor ratios ``height / width`` (0.5, 1, 2 in the paper).
        fg_iou: IoU at or above which an anchor is positive (0.7).
        bg_iou: IoU below which an anchor is negative (0.3).
        batch_size_per_image: anchors sampled per image (256).
        positive_fraction: at most this fraction positive (0.5: the paper's 1:1).
        pre_nms_top_n_train, pre_nms_top_n_test: proposals kept per image (per level with
            FPN) before NMS.
        post_nms_top_n_train, post_nms_top_n_test: proposals kept per image after NMS.
        nms_thresh: NMS IoU over proposals (0.7).
        min_size: drop proposals with a side below this (px).
        box_weights: :class:`BoxCoder` weights of the anchor deltas ((1, 1, 1, 1)).
        smooth_l1_beta: smooth L1 transition point (1/9, the reference implementations').
    """

    anchor_sizes: tuple[float, ...] = (16.0, 32.0, 64.0)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    fg_iou: float = 0.7
    bg_iou: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    pre_nms_top_n_train: int = 1000
    pre_nms_top_n_test: int = 500
    post_nms_top_n_train: int = 300
    post_nms_top_n_test: int = 100
    nms_thresh: float = 0.7
    min_size: float = 1.0
    box_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    smooth_l1_beta: float = 1.0 / 9

    def __post_init__(self) -> None:
        if not 0 <= self.bg_iou <= self.fg_iou <= 1:
            raise VisionLabError(
                f"rpn: need 0 <= bg_iou ({self.bg_iou}) <= fg_iou ({self.fg_iou}) <= 1"
            )
        if not self.anchor_sizes or not self.aspect_ratios:
            raise VisionLabError("rpn: anchor_sizes and aspect_ratios must not be empty")
        self.anchor_sizes = tuple(float(s) for s in self.anchor_sizes)
        self.aspect_ratios = tuple(float(r) for r in self.aspect_ratios)
        self.box_weights = tuple(float(w) for w in self.box_weights)


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then 1x1 objectness (``A``) and 1x1 deltas (``4A``), shared by levels.

    Args:
        in_channels: channels of the feature map(s).
        num_anchors: anchors per location ``A``.
    """

    def __init__(self, *, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)  # the paper: Gaussian, std 0.01
            nn.init.zeros_(layer.bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level ``Tensor[B, C, h, w]`` -> per level objectness ``[B, h*w*A]`` and deltas
        ``[B, h*w*A, 4]``, in the anchor generator's order (cell-major, then anchor)."""
        objectness, deltas = [], []
        for x in features:
            t = F.relu(self.conv(x))
            b = x.shape[0]
            objectness.append(self.cls_logits(t).permute(0, 2, 3, 1).reshape(b, -1))
            # [B, A*4, h, w] -> [B, h, w, A*4] -> [B, h*w*A, 4]
            deltas.append(self.bbox_pred(t).permute(0, 2, 3, 1).reshape(b, -1, 4))
        return objectness, deltas


def label_anchors(
    anchors: Tensor, gt_boxes: Sequence[Tensor], matcher: Matcher
) -> tuple[Tensor, Tensor]:
    """RPN anchor labels (Faster R-CNN sec. 3.1.2) for a batch of images sharing ``anchors``.

    Args:
        anchors: ``Tensor[N, 4]`` xyxy, the same for every image of the batch.
        gt_boxes: per image ``Tensor[G_i, 4]`` xyxy (``G_i`` may be 0).
        matcher: ``Matcher(fg_iou, bg_iou, allow_low_quality_matches=True)``.

    Returns:
        ``(labels Tensor[B, N] int64, matched_gt Tensor[B, N, 4])``: 1 positive, 0 negative,
        -1 ignored; ``matched_gt`` is the matched gt box of each anchor (anything for
        non-positives).
    """
    batch = len(gt_boxes)
    labels = anchors.new_zeros((batch, len(anchors)), dtype=torch.int64)
    matched = anchors.new_zeros((batch, len(anchors), 4))
    for i, gt in enumerate(gt_boxes):
        if gt.numel() == 0:
            continue  # negatives only
        matches = matcher(box_iou(gt, anchors))  # [N]
        labels[i] = (matches >= 0).long()
        labels[i].masked_fill_(matches == Matcher.BETWEEN_THRESHOLDS, -1)
        matched[i] = gt[matches.clamp(min=0)]
    return labels, matched


class RPN(nn.Module):
    """Region proposal network: :class:`RPNHead` + anchors + labelling + loss + proposals.

    A proposer of :class:`~visionlab.models.two_stage.TwoStageDetector`.

    Args:
        in_channels: channels of the feature map(s).
        strides: image pixels per feature cell of each level, finest first (one without
            FPN).
        settings: :class:`RPNSettings`.
    """

    def __init__(
        self, *, in_channels: int, strides: Sequence[int], settings: RPNSettings | None = None
    ) -> None:
        super().__init__()
        self.settings = s = settings or RPNSettings()
        self.strides = tuple(int(x) for x in strides)
        num_levels = len(self.strides)
        if len(s.anchor_sizes) % num_levels:
            raise VisionLabError(
                f"rpn: {len(s.anchor_sizes)} anchor sizes do not split over {num_levels} FPN levels"
            )
        k = len(s.anchor_sizes) // num_levels
        sizes = tuple(s.anchor_sizes[i * k : (i + 1) * k] for i in range(num_levels))
        self.anchor_generator = AnchorGenerator(sizes, (s.aspect_ratios,))
        num_anchors = self.anchor_generator.num_anchors_per_location()
        if len(set(num_anchors)) != 1:
            raise VisionLabError("rpn: every level needs the same number of anchors")
        self.head = RPNHead(in_channels=in_channels, num_anchors=num_anchors[0])
        self.box_coder = BoxCoder(s.box_weights)
        self.matcher = Matcher(s.fg_iou, s.bg_iou, allow_low_quality_matches=True)
        self.sampler = BalancedSampler(s.batch_size_per_image, s.positive_fraction)

    def forward(
        self,
        images: Sequence[Tensor],
        features: Sequence[Tensor],
        batch_shape: tuple[int, int],
        image_sizes: Sequence[tuple[int, int]],
        targets: Sequence[dict] | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Propose regions.

        Args:
            images: the input images (unused: the RPN reads the features).
            features: per level ``Tensor[B, C, h, w]``, at :attr:`strides`.
            batch_shape: ``(H, W)`` of the padded batch.
            image_sizes: per image ``(H_i, W_i)`` (proposals are clipped to them).
            targets: training only, per image ``boxes``.

        Returns:
            ``(proposals, losses)``: per image ``Tensor[P_i, 4]`` xyxy (detached), and in
            training ``{"loss_objectness", "loss_rpn_box_reg"}`` (``{}`` in eval).
        """
        objectness, deltas = self.head(features)
        grid = [tuple(f.shape[-2:]) for f in features]
        anchors_per_level = self.anchor_generator(
            batch_shape, grid, self.strides, device=features[0].device, dtype=features[0].dtype
        )
        level_counts = [len(a) for a in anchors_per_level]
        anchors = torch.cat(anchors_per_level)  # [N, 4]
        objectness_all = torch.cat(objectness, dim=1)  # [B, N]
        deltas_all = torch.cat(deltas, dim=1)  # [B, N, 4]
        proposals = self._proposals(
            anchors, objectness_all.detach(), deltas_all.detach(), level_counts, image_sizes
        )
        if not self.training:
            return proposals, {}
        return proposals, self.losses(anchors, objectness_all, deltas_all, targets)

    def losses(
        self, anchors: Tensor, objectness: Tensor, deltas: Tensor, targets: Sequence[dict]
    ) -> dict[str, Tensor]:
        """Objectness log loss and smooth L1 on the sampled anchors (sec. 3.1.2, eq. 1).

        Args:
            anchors: ``Tensor[N, 4]``; objectness ``Tensor[B, N]``; deltas ``Tensor[B, N, 4]``.

        Returns:
            ``{"loss_objectness", "loss_rpn_box_reg"}``, both normalised by the number of
            sampled anchors (the paper's ``N_cls``; ``lambda`` absorbs the rest).
        """
        gt = [t["boxes"].to(anchors.dtype) for t in targets]
        labels, matched = label_anchors(anchors, gt, self.matcher)  # [B, N], [B, N, 4]
        pos, neg = self.sampler(list(labels))
        pos, neg = torch.stack(pos), torch.stack(neg)  # [B, N] bool
        sampled = pos | neg
        num = sampled.sum().clamp(min=1)
        loss_obj = (
            F.binary_cross_entropy_with_logits(
                objectness[sampled].float(), pos[sampled].float(), reduction="sum"
            )
            / num
        )
        b_idx, a_idx = torch.where(pos)
        if len(a_idx):
            target = self.box_coder.encode(matched[b_idx, a_idx], anchors[a_idx])
            loss_box = (
                F.smooth_l1_loss(
                    deltas[b_idx, a_idx].float(),
                    target,
                    beta=self.settings.smooth_l1_beta,
                    reduction="sum",
                )
                / num
            )
        else:
            loss_box = deltas.sum() * 0.0
        return {"loss_objectness": loss_obj, "loss_rpn_box_reg": loss_box}

    def _proposals(
        self,
        anchors: Tensor,
        objectness: Tensor,
        deltas: Tensor,
        level_counts: list[int],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[Tensor]:
        """Top-N per level, decode, clip, drop small boxes, one NMS for the whole batch, then
        top-N per image (sec. 3.3)."""
        s = self.settings
        pre_n = s.pre_nms_top_n_train if self.training else s.pre_nms_top_n_test
        post_n = s.post_nms_top_n_train if self.training else s.post_nms_top_n_test
        batch = objectness.shape[0]
        # per level top-k, all images at once: [B, k] indices into the N anchors
        top_idx, level_ids, start = [], [], 0
        for level, count in enumerate(level_counts):
            k = min(pre_n, count)
            idx = objectness[:, start : start + count].topk(k, dim=1).indices + start
            top_idx.append(idx)
            level_ids.append(torch.full((k,), level, device=anchors.device))
            start += count
        idx = torch.cat(top_idx, dim=1)  # [B, K]
        levels = torch.cat(level_ids)  # [K]
        k = idx.shape[1]
        scores = torch.gather(objectness, 1, idx).reshape(-1)  # [B * K]
        chosen_deltas = torch.gather(deltas, 1, idx[..., None].expand(-1, -1, 4)).reshape(-1, 4)
        boxes = self.box_coder.decode(chosen_deltas, anchors[idx.reshape(-1)])  # [B * K, 4]
        image_ids = torch.arange(batch, device=anchors.device).repeat_interleave(k)
        # clip each image's boxes to its own size
        sizes = torch.tensor(image_sizes, dtype=boxes.dtype, device=boxes.device)  # [B, 2] (H, W)
        limits = sizes[:, [1, 0, 1, 0]][image_ids]  # [B * K, 4]
        boxes = torch.minimum(boxes.clamp(min=0), limits)
        wh = boxes[:, 2:] - boxes[:, :2]
        keep = torch.where(wh.min(dim=1).values >= s.min_size)[0]
        boxes, scores, image_ids = boxes[keep], scores[keep], image_ids[keep]
        group = image_ids * len(level_counts) + levels.repeat(batch)[keep]
        keep = batched_nms(boxes, scores, group, s.nms_thresh)  # by decreasing score
        boxes, image_ids = boxes[keep], image_ids[keep]
        # stable sort by image keeps each image's boxes in decreasing score order
        order = torch.sort(image_ids, stable=True).indices
        boxes, image_ids = boxes[order], image_ids[order]
        counts = torch.bincount(image_ids, minlength=batch).tolist()
        return [b[:post_n] for b in boxes.split(counts)]

"""Faster R-CNN (Ren, He, Girshick and Sun, "Faster R-CNN: Towards Real-Time Object Detection
with Region Proposal Networks", NeurIPS 2015), optionally with a feature pyramid (Lin et al.,
"Feature Pyramid Networks for Object Detection", CVPR 2017).

One convolutional pass gives the shared features; the region proposal network
(:mod:`visionlab.models.rpn`, sec. 3.1) proposes regions on them, and the Fast R-CNN box
predictor (:class:`visionlab.models.heads.RoIBoxPredictor`) pools each proposal (RoI pooling
or RoI align, a setting) and classifies and refines it. Training is the paper's
"approximate joint training" (sec. 3.2): RPN and detector losses are summed and
back-propagated in one pass, the proposals being treated as constants (no gradient through
their coordinates). Images without objects train the RPN and the detector on negatives only.

Backbones come from :mod:`visionlab.models.backbones` (``tiny_cnn`` is the CPU default;
``resnet18``, ``resnet50``, ``vgg16``, ...). Without FPN the detector uses one map
(``feature_stride``, 16 as the paper's conv5_3 of VGG16); with FPN the maps at strides
``fpn_strides`` become a top-down pyramid, the RPN runs on every level (one anchor size per
level) and each RoI pools from the level of its size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from visionlab.errors import VisionLabError
from visionlab.models.backbones import STRIDES, Backbone, build_backbone
from visionlab.models.batching import batch_images
from visionlab.models.detector import Detector, attach_proposals
from visionlab.models.heads import (
    POOLERS,
    BoxHeadSettings,
    RoIBoxPredictor,
    settings_from,
)
from visionlab.models.postprocess import DetectionSettings, reject_nested_knobs
from visionlab.models.registry import register_model
from visionlab.models.rpn import RPN, RPNSettings

__all__ = ["FPN", "FasterRCNN", "faster_rcnn"]


class FPN(nn.Module):
    """Feature pyramid (Lin et al. 2017, sec. 3, fig. 3): 1x1 lateral convolutions, nearest
    2x top-down upsampling with element-wise addition, and a 3x3 convolution per level.

    Args:
        in_channels: channels of each input level, finest first.
        out_channels: channels of every output level (256 in the paper).
    """

    def __init__(self, *, in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Per level ``Tensor[B, C_l, h_l, w_l]`` (finest first) -> ``[B, out, h_l, w_l]``."""
        top = self.lateral[-1](features[-1])
        outs = [self.output[-1](top)]
        for feat, lateral, output in zip(
            reversed(features[:-1]), reversed(self.lateral[:-1]), reversed(self.output[:-1])
        ):
            top = lateral(feat) + F.interpolate(top, size=feat.shape[-2:], mode="nearest")
            outs.insert(0, output(top))
        return outs


class FasterRCNN(Detector):
    """Backbone (+ FPN) -> RPN -> RoI box predictor, in the detector contract
    (:class:`~visionlab.models.detector.Detector`).

    ``forward(images, targets)`` returns ``{"loss_objectness", "loss_rpn_box_reg",
    "loss_classifier", "loss_box_reg"}`` in training and, in eval, per image
    ``{"boxes": Tensor[N, 4] xyxy, "labels": Tensor[N] (1..K), "scores": Tensor[N]}``;
    with ``extras=("proposals",)`` each eval dict also holds ``proposals: Tensor[P, 4]``
    (the RPN's, in input pixels).

    Args:
        backbone: a :class:`Backbone`.
        num_classes: classes including background (``K + 1``).
        feature_strides: the backbone maps used: one stride without FPN, several with.
        fpn_channels: FPN width; ``None`` = no FPN (``feature_strides`` must be one stride).
        rpn: :class:`RPNSettings`.
        box_head: :class:`BoxHeadSettings`.
        detection: test-time :class:`~visionlab.models.postprocess.DetectionSettings`.
    """

    supported_extras: ClassVar[frozenset[str]] = frozenset({"proposals"})

    def __init__(
        self,
        *,
        backbone: Backbone,
        num_classes: int,
        feature_strides: Sequence[int] = (16,),
        fpn_channels: int | None = None,
        rpn: RPNSettings | None = None,
        box_head: BoxHeadSettings | None = None,
        detection: DetectionSettings | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_strides = tuple(int(s) for s in feature_strides)
        backbone.use_up_to(max(self.feature_strides))  # the deeper stages never run
        channels = [backbone.feature_channels[f"stride{s}"] for s in self.feature_strides]
        self.fpn = FPN(in_channels=channels, out_channels=fpn_channels) if fpn_channels else None
        width = fpn_channels or channels[0]
        self.rpn = RPN(in_channels=width, num_levels=len(self.feature_strides), settings=rpn)
        self.roi_heads = RoIBoxPredictor(
            in_channels=width,
            spatial_scale=1.0 / self.feature_strides[0],
            num_classes=num_classes,
            settings=box_head,
            detection=detection,
        )
        if self.fpn is not None:
            # RoIs of the middle anchor size pool from the level whose anchors have that size
            sizes = self.rpn.settings.anchor_sizes
            per_level = len(sizes) // len(self.feature_strides)
            self.roi_heads.set_levels(
                [1.0 / s for s in self.feature_strides],
                canonical_level=len(self.feature_strides) // 2,
                canonical_size=sizes[(len(self.feature_strides) // 2) * per_level],
            )

    def features(self, batch: Tensor) -> list[Tensor]:
        """Shared feature maps of a padded batch ``Tensor[B, 3, H, W]``, finest first."""
        maps = self.backbone.feature_maps(batch, strides=self.feature_strides)
        levels = [maps[f"stride{s}"] for s in self.feature_strides]
        return self.fpn(levels) if self.fpn is not None else levels

    def _run(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None
    ) -> tuple[list[dict[str, Tensor]], list[Tensor], dict[str, Tensor]]:
        """``(detections, proposals, losses)``: detections in eval, losses in training."""
        batch, sizes = batch_images(images, size_divisible=max(self.feature_strides))
        feats = self.features(batch)
        proposals, rpn_losses = self.rpn(
            feats, self.feature_strides, tuple(batch.shape[-2:]), sizes, targets
        )
        roi_feats: Tensor | list[Tensor] = feats if self.fpn is not None else feats[0]
        detections, det_losses = self.roi_heads(roi_feats, proposals, sizes, targets)
        return detections, proposals, {**rpn_losses, **det_losses}

    def losses(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        return self._run(images, targets)[2]

    def detect(self, images: list[Tensor], extras: frozenset[str]) -> list[dict[str, Tensor]]:
        detections, proposals, _ = self._run(images, None)
        if "proposals" in extras:
            attach_proposals(detections, proposals)
        return detections


def _check_strides(strides: Sequence[int], fpn: bool) -> tuple[int, ...]:
    strides = tuple(int(s) for s in strides)
    if not strides or any(s not in STRIDES for s in strides) or list(strides) != sorted(strides):
        raise VisionLabError(
            f"faster_rcnn: feature strides must be increasing values of {STRIDES}, got {strides}"
        )
    if not fpn and len(strides) != 1:
        raise VisionLabError("faster_rcnn: several feature strides need fpn=True")
    return strides


@register_model(
    "faster_rcnn",
    task="detection",
    summary="Faster R-CNN: RPN + RoI pooling/align box head, optional FPN (Ren et al. 2015)",
)
def faster_rcnn(
    *,
    num_classes: int = 91,
    backbone: str = "tiny_cnn",
    backbone_width: int = 16,
    pretrained_backbone: str | None = None,
    frozen_stride: int = 0,
    feature_stride: int = 16,
    fpn: bool = False,
    fpn_strides: Sequence[int] = (8, 16, 32),
    fpn_channels: int = 128,
    pooler: str = "roi_align",
    rpn: dict | None = None,
    box_head: dict | None = None,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    min_size: float = 1e-2,
) -> FasterRCNN:
    """Build Faster R-CNN.

    Args:
        num_classes: classes including background (filled in from the dataset by ``train``).
        backbone: a name of :func:`visionlab.models.backbones.list_backbones`.
        backbone_width: ``tiny_cnn``'s stem width.
        pretrained_backbone: a local weights file for the backbone (never downloaded).
        frozen_stride: freeze the backbone up to this stride's map (0: nothing; 4: the stem
            and the stride-4 stage, torchvision's ``trainable_backbone_layers=3``): no
            gradients, batch norms fixed, a cheaper step; meant for a pretrained backbone.
        feature_stride: without FPN, the stride of the shared map (8, 16 or 32).
        fpn: use a feature pyramid over ``fpn_strides`` with ``fpn_channels`` channels.
        pooler: ``roi_pool`` or ``roi_align`` (overrides ``box_head["pooler"]``).
        rpn: :class:`RPNSettings` fields, e.g. ``{"anchor_sizes": [16, 32, 64]}``.
        box_head: :class:`BoxHeadSettings` fields, e.g. ``{"fc_width": 256}``.
        score_thresh, nms_thresh, detections_per_img, min_size: test time, the
            :class:`~visionlab.models.postprocess.DetectionSettings` (the papers'
            class-wise NMS IoU is 0.3; 0.5 is torchvision's and this default).
    """
    if pooler not in POOLERS:
        raise VisionLabError(f"faster_rcnn: pooler must be one of {POOLERS}, got {pooler!r}")
    strides = _check_strides(fpn_strides if fpn else (feature_stride,), fpn)
    rpn_settings = settings_from(RPNSettings, rpn, "faster_rcnn rpn")
    reject_nested_knobs(box_head, "faster_rcnn box_head")
    box = dict(box_head or {})
    box.setdefault("pooler", pooler)
    if "bg_iou_low" not in box:
        box["bg_iou_low"] = 0.0  # py-faster-rcnn's end-to-end recipe: every non-fg RoI
    box_settings = settings_from(BoxHeadSettings, box, "faster_rcnn box_head")
    if num_classes < 2:
        raise VisionLabError(f"faster_rcnn: num_classes counts background, got {num_classes}")
    model = FasterRCNN(
        backbone=build_backbone(
            backbone,
            pretrained=pretrained_backbone,
            width=backbone_width,
            frozen_stride=frozen_stride,
        ),
        num_classes=num_classes,
        feature_strides=strides,
        fpn_channels=fpn_channels if fpn else None,
        rpn=rpn_settings,
        box_head=box_settings,
        detection=DetectionSettings(
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            min_size=min_size,
        ),
    )
    return model

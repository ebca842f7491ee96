"""Fast R-CNN (Girshick, "Fast R-CNN", ICCV 2015): selective-search regions, one
convolutional pass over the whole image, RoI pooling of each region on the shared feature
map, fully connected layers, and a softmax + box-regression multi-task loss trained end to end.

The parts are :class:`visionlab.models.heads.RoIBoxPredictor` (sections 2.1-2.3: RoI pooling
7x7, two FC layers, multi-task loss, minibatches of 2 images x 64 RoIs with 25% foreground at
IoU >= 0.5 and background at IoU in [0.1, 0.5)) and :func:`visionlab.ops.selective_search`
("fast" mode, cached on disk) for the regions (section 4 uses selective search's quality
mode on PASCAL; the fast mode is R-CNN's). Selective search runs on the CPU at ~0.1 s per
128 px image, so :meth:`FastRCNN.prepare_data` computes it for a whole dataset once, with a
progress bar, before training; a horizontally flipped image reuses its original's regions,
mirrored. Boxes are ``Tensor[N, 4]`` xyxy pixels throughout.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from visionlab.errors import VisionLabError
from visionlab.models.backbones import STRIDES, Backbone
from visionlab.models.faster_rcnn import build_detector_backbone
from visionlab.models.heads import (
    POOLERS,
    BoxHeadSettings,
    RoIBoxPredictor,
    batch_images,
    check_detection_inputs,
    settings_from,
)
from visionlab.models.registry import register_model

__all__ = ["FastRCNN", "cached_selective_search", "fast_rcnn"]

SS_MODES = ("fast", "quality")


def cached_selective_search(image: Tensor, mode: str = "fast", max_boxes: int = 2000) -> Tensor:
    """Selective-search boxes of ``image`` ``Tensor[3, H, W]`` (CPU result ``Tensor[K, 4]``).

    A cache miss whose mirror image is cached returns the mirrored boxes of that image (a
    horizontal flip is the training augmentation), so one pass over a dataset serves both.
    """
    from visionlab.ops import proposals as ss

    image = image.detach().cpu()
    folder = ss.default_cache_dir()
    bgr = ss._to_bgr_uint8(image)
    for flipped in (False, True):
        key = ss._cache_key(np.ascontiguousarray(bgr[:, ::-1]) if flipped else bgr, mode)
        boxes = ss._load_cached(folder / key[:2] / f"{key}.npy")
        if boxes is not None:
            out = torch.from_numpy(np.ascontiguousarray(boxes[:max_boxes]))
            if flipped:
                width = image.shape[-1]
                out = torch.stack([width - out[:, 2], out[:, 1], width - out[:, 0], out[:, 3]], 1)
            return out
    return ss.selective_search(image, mode, max_boxes, cache=True)


class FastRCNN(nn.Module):
    """Selective search -> backbone -> RoI pooling -> FC -> softmax + box regression.

    Follows torchvision's detector contract: ``forward(images, targets)`` returns
    ``{"loss_classifier", "loss_box_reg"}`` in training; in eval, per image ``{"boxes",
    "labels", "scores"}`` (+ ``proposals: Tensor[P, 4]``, selective search's, when
    ``return_proposals`` is True).

    Args:
        backbone: a :class:`Backbone`.
        num_classes: classes including background.
        feature_stride: stride of the shared feature map (16 = VGG16's conv5_3 in the paper).
        box_head: :class:`BoxHeadSettings`.
        proposal_mode: selective search mode, ``fast`` or ``quality``.
        max_proposals: regions per image (the paper: ~2000).
    """

    def __init__(
        self,
        *,
        backbone: Backbone,
        num_classes: int,
        feature_stride: int = 16,
        box_head: BoxHeadSettings | None = None,
        proposal_mode: str = "fast",
        max_proposals: int = 2000,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_stride = int(feature_stride)
        self.roi_heads = RoIBoxPredictor(
            in_channels=backbone.feature_channels[f"stride{self.feature_stride}"],
            spatial_scale=1.0 / self.feature_stride,
            num_classes=num_classes,
            settings=box_head,
        )
        self.proposal_mode = proposal_mode
        self.max_proposals = int(max_proposals)
        self.return_proposals = False

    def propose(self, images: Sequence[Tensor]) -> list[Tensor]:
        """Selective-search regions per image, ``Tensor[P_i, 4]`` on the images' device."""
        return [
            cached_selective_search(im, self.proposal_mode, self.max_proposals).to(im.device)
            for im in images
        ]

    def features(self, batch: Tensor) -> Tensor:
        """The shared map ``Tensor[B, C, H / s, W / s]`` of a padded batch."""
        return self.backbone.feature_maps(batch, strides=(self.feature_stride,))[
            f"stride{self.feature_stride}"
        ]

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """See the class docstring; ``images`` are ``Tensor[3, H, W]`` in ``[0, 1]``."""
        check_detection_inputs(images, targets, self.training)
        proposals = self.propose(images)
        batch, sizes = batch_images(images, size_divisible=32)
        detections, losses = self.roi_heads(self.features(batch), proposals, sizes, targets)
        if self.training:
            return losses
        if self.return_proposals:
            for det, props in zip(detections, proposals):
                det["proposals"] = props
        return detections

    def prepare_data(self, datasets: Iterable[Any], image_size: int | None = None) -> None:
        """Compute (and cache on disk) selective search for every image of ``datasets``,
        as evaluation resizes them to ``image_size``, with a progress bar. Called by
        ``visionlab train`` before the first step; cached images cost a file read."""
        import copy

        from tqdm.auto import tqdm

        from visionlab.data.transforms import build_transforms

        transform = build_transforms("detection", False, image_size)
        for dataset in datasets:
            if dataset is None:
                continue
            plain = copy.copy(dataset)
            plain.transforms = transform
            name = getattr(dataset, "split", "")
            for i in tqdm(range(len(plain)), desc=f"selective search {name}", unit="img"):
                image, _ = plain[i]
                cached_selective_search(image, self.proposal_mode, self.max_proposals)

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.roi_heads.parameters())


@register_model(
    "fast_rcnn",
    task="detection",
    summary="Fast R-CNN: selective search + RoI pooling + softmax/box regression (Girshick 2015)",
)
def fast_rcnn(
    *,
    num_classes: int = 91,
    backbone: str = "tiny_cnn",
    backbone_width: int = 16,
    pretrained_backbone: str | None = None,
    feature_stride: int = 16,
    pooler: str = "roi_pool",
    proposal_mode: str = "fast",
    max_proposals: int = 2000,
    box_head: dict | None = None,
) -> FastRCNN:
    """Build Fast R-CNN.

    Args:
        num_classes: classes including background (filled in from the dataset by ``train``).
        backbone: a name of :func:`visionlab.models.backbones.list_backbones`.
        backbone_width: ``tiny_cnn``'s stem width.
        pretrained_backbone: a local weights file for the backbone (never downloaded).
        feature_stride: stride of the shared map (8, 16 or 32).
        pooler: ``roi_pool`` (the paper's) or ``roi_align``.
        proposal_mode: selective search ``fast`` or ``quality``.
        max_proposals: regions kept per image.
        box_head: :class:`BoxHeadSettings` fields, e.g. ``{"fc_width": 256}``.
    """
    if pooler not in POOLERS:
        raise VisionLabError(f"fast_rcnn: pooler must be one of {POOLERS}, got {pooler!r}")
    if proposal_mode not in SS_MODES:
        raise VisionLabError(f"fast_rcnn: proposal_mode must be one of {SS_MODES}")
    if feature_stride not in STRIDES:
        raise VisionLabError(f"fast_rcnn: feature_stride must be one of {STRIDES}")
    if num_classes < 2:
        raise VisionLabError(f"fast_rcnn: num_classes counts background, got {num_classes}")
    box = dict(box_head or {})
    box.setdefault("pooler", pooler)
    return FastRCNN(
        backbone=build_detector_backbone(backbone, pretrained_backbone, backbone_width),
        num_classes=num_classes,
        feature_stride=feature_stride,
        box_head=settings_from(BoxHeadSettings, box, "fast_rcnn box_head"),
        proposal_mode=proposal_mode,
        max_proposals=max_proposals,
    )

"""Mask R-CNN (He, Gkioxari, Dollar and Girshick, "Mask R-CNN", ICCV 2017): Faster R-CNN
with a mask head beside the box head.

The model is Faster R-CNN's two-stage skeleton
(:class:`visionlab.models.two_stage.TwoStageDetector`) with one more entry in its
:class:`~visionlab.models.heads.RoIHeads`, :class:`MaskHead`:

- section 3, "RoIAlign": each RoI is pooled at ``14 x 14`` from the shared features (the
  FPN level of its size with FPN) by RoI align (RoI pooling as an ablation, Table 2c);
- section 3, "Network Architecture" / fig. 4 (right): four 3x3 convolutions, a 2x2
  transposed convolution of stride 2 to ``28 x 28``, and a 1x1 convolution to one mask
  per class (``K`` masks; class-agnostic, one mask, as an ablation);
- section 3, "Mask Representation" and eq. 1: the loss ``L_mask`` is the average binary
  cross-entropy of per-pixel sigmoids, on the ground-truth class's mask only, for the
  foreground RoIs the box head sampled; the target is the RoI's matched instance mask
  cropped and resized to ``28 x 28`` (RoI align of the mask, thresholded at 0.5);
- section 3.1, "Inference": masks are predicted for the final boxes (after NMS), the
  predicted class's mask resized to the box, pasted into the image and binarised at 0.5.

Predictions carry ``masks: Tensor[N, H, W]`` bool in the input image's pixels besides
``boxes``, ``labels`` and ``scores``; training adds ``loss_mask``. Targets need ``masks:
Tensor[G, H, W]`` (bool or 0/1) with the boxes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionlab.errors import VisionLabError
from visionlab.models.faster_rcnn import faster_rcnn, faster_rcnn_arguments
from visionlab.models.heads import POOLERS, RoIBatch, settings_from
from visionlab.models.registry import register_model
from visionlab.models.two_stage import TwoStageDetector
from visionlab.ops import roi_align

__all__ = ["MaskHead", "MaskHeadSettings", "mask_rcnn", "mask_targets", "paste_masks"]


@dataclass
class MaskHeadSettings:
    """Settings of :class:`MaskHead` (He et al. 2017, section 3).

    Attributes:
        pooler: ``roi_align`` (the paper's) or ``roi_pool`` (Table 2c's ablation).
        pool_size: RoI grid side (14); the masks are twice that (28).
        width: channels of the four convolutions (256 in the paper).
        num_convs: 3x3 convolutions before the upsampling (4).
        class_agnostic: one mask for every class instead of one per class (Table 2b).
        mask_thresh: binarisation threshold of the pasted probabilities (0.5).
    """

    pooler: str = "roi_align"
    pool_size: int = 14
    width: int = 256
    num_convs: int = 4
    class_agnostic: bool = False
    mask_thresh: float = 0.5

    def __post_init__(self) -> None:
        if self.pooler not in POOLERS:
            raise VisionLabError(f"mask head: pooler must be one of {POOLERS}, got {self.pooler!r}")
        if self.pool_size < 1 or self.width < 1 or self.num_convs < 0:
            raise VisionLabError("mask head: pool_size and width must be >= 1, num_convs >= 0")
        if not 0 < self.mask_thresh < 1:
            raise VisionLabError(
                f"mask head: mask_thresh must be in (0, 1), got {self.mask_thresh}"
            )


def mask_targets(gt_masks: Tensor, rois: Tensor, size: int) -> Tensor:
    """Each RoI's instance mask cropped to the RoI and resized to ``size x size``: RoI
    align of the 0/1 mask at the cells' centres (``aligned=True``: pixel ``k`` covers
    ``[k, k + 1)``, as boxes count), then >= 0.5.

    Args:
        gt_masks: ``Tensor[R, H, W]``, the matched instance's mask for each RoI.
        rois: ``Tensor[R, 4]`` xyxy pixels.
        size: the mask side.

    Returns:
        ``Tensor[R, size, size]`` float in {0, 1}.
    """
    if len(rois) == 0:
        return gt_masks.new_zeros((0, size, size), dtype=torch.float32)
    index = torch.arange(len(rois), device=rois.device, dtype=rois.dtype)[:, None]
    boxes = torch.cat([index, rois], dim=1).float()
    crops = roi_align(gt_masks[:, None].float(), boxes, size, 1.0, sampling_ratio=2, aligned=True)
    return (crops[:, 0] >= 0.5).float()


def paste_masks(
    masks: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float = 0.5
) -> Tensor:
    """Paste ``M x M`` mask probabilities into the image, each stretched over its box,
    binarised at ``threshold``; parts of a box outside the image are cut.

    Each image pixel centre inside a box samples the mask bilinearly at the matching point
    (``grid_sample``, zeros beyond the mask's border, so its edge falls off smoothly
    instead of ending at the box's side), the inverse of :func:`mask_targets`.

    Args:
        masks: ``Tensor[N, M, M]`` probabilities.
        boxes: ``Tensor[N, 4]`` xyxy pixels.
        image_size: ``(H, W)``.

    Returns:
        ``Tensor[N, H, W]`` bool.
    """
    height, width = image_size
    out = torch.zeros((len(masks), height, width), dtype=torch.bool, device=masks.device)
    for k, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        xa, ya = max(int(x1), 0), max(int(y1), 0)
        xb, yb = min(int(-(-x2 // 1)), width), min(int(-(-y2 // 1)), height)
        if xb <= xa or yb <= ya:
            continue
        xs = (torch.arange(xa, xb, device=masks.device) + 0.5 - x1) / max(x2 - x1, 1e-6)
        ys = (torch.arange(ya, yb, device=masks.device) + 0.5 - y1) / max(y2 - y1, 1e-6)
        grid = torch.stack(torch.meshgrid(2 * ys - 1, 2 * xs - 1, indexing="ij")[::-1], dim=-1)
        sampled = F.grid_sample(
            masks[k][None, None].float(), grid[None].float(), align_corners=False
        )[0, 0]
        out[k, ya:yb, xa:xb] = sampled >= threshold
    return out


class MaskHead(nn.Module):
    """The mask branch of :class:`~visionlab.models.heads.RoIHeads` (module docstring).

    Called after the box head: in training on the foreground RoIs it sampled
    (``batch.shared``), returning ``{"loss_mask"}``; in eval on the final boxes, adding
    ``masks: Tensor[N, H, W]`` bool to each detection dict.

    Args:
        in_channels: channels of the feature maps.
        num_classes: classes including background.
        settings: :class:`MaskHeadSettings`.
    """

    def __init__(
        self, *, in_channels: int, num_classes: int, settings: MaskHeadSettings | None = None
    ) -> None:
        super().__init__()
        self.settings = s = settings or MaskHeadSettings()
        self.num_classes = int(num_classes)
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(s.num_convs):
            layers += [nn.Conv2d(channels, s.width, 3, padding=1), nn.ReLU(inplace=True)]
            channels = s.width
        self.convs = nn.Sequential(*layers)
        self.upsample = nn.ConvTranspose2d(channels, s.width, 2, stride=2)
        self.predictor = nn.Conv2d(s.width, 1 if s.class_agnostic else num_classes - 1, 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def logits(self, batch: RoIBatch, rois: list[Tensor], labels: Tensor) -> Tensor:
        """``Tensor[R, 2P, 2P]`` mask logits of the per-image ``rois`` for their ``labels``
        (``Tensor[R]`` in 1..K; ignored when class-agnostic)."""
        s = self.settings
        x = batch.pool(rois, s.pool_size, s.pooler)
        x = F.relu(self.upsample(self.convs(x)))
        x = self.predictor(x)  # [R, K or 1, 2P, 2P]
        if s.class_agnostic:
            return x[:, 0]
        return x[torch.arange(len(x), device=x.device), labels - 1]

    def forward(
        self, batch: RoIBatch, detections: list[dict[str, Tensor]]
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            return detections, {"loss_mask": self.loss(batch)}
        boxes = [d["boxes"] for d in detections]
        labels = torch.cat([d["labels"] for d in detections])
        if len(labels) == 0:
            for d, (h, w) in zip(detections, batch.image_sizes):
                d["masks"] = torch.zeros((0, h, w), dtype=torch.bool, device=d["boxes"].device)
            return detections, {}
        probs = self.logits(batch, boxes, labels).sigmoid().float()
        for d, p, size in zip(detections, probs.split([len(b) for b in boxes]), batch.image_sizes):
            d["masks"] = paste_masks(p, d["boxes"].float(), size, self.settings.mask_thresh)
        return detections, {}

    def loss(self, batch: RoIBatch) -> Tensor:
        """Eq. 1's ``L_mask`` over the box head's sampled foreground RoIs."""
        if batch.targets is None or any("masks" not in t for t in batch.targets):
            raise VisionLabError(
                "mask_rcnn: every training target needs 'masks' Tensor[G, H, W] (an instance "
                "task dataset: task: instance)"
            )
        rois_all: list[Tensor] = batch.shared["rois"]  # per image, sampled by the box head
        labels_all: Tensor = batch.shared["labels"]
        fg_rois, fg_labels, targets = [], [], []
        for rois, labels, matched, target in zip(
            rois_all,
            labels_all.split([len(r) for r in rois_all]),
            batch.shared["matched_gt"],
            batch.targets,
        ):
            keep = torch.where(labels > 0)[0]
            rois, labels = rois[keep], labels[keep]
            fg_rois.append(rois)
            fg_labels.append(labels)
            if len(rois) == 0:
                continue
            gt_masks = target["masks"].to(rois.device)[matched[keep]]
            targets.append(mask_targets(gt_masks, rois, 2 * self.settings.pool_size))
        labels = torch.cat(fg_labels)
        if len(labels) == 0:  # no foreground RoI: a zero that keeps the graph
            return sum(p.sum() for p in self.parameters()) * 0.0
        logits = self.logits(batch, fg_rois, labels)
        return F.binary_cross_entropy_with_logits(logits.float(), torch.cat(targets))


@register_model(
    "mask_rcnn",
    task="instance",
    summary="Mask R-CNN: Faster R-CNN + a RoI-align mask head, per-class masks (He et al. 2017)",
)
@faster_rcnn_arguments
def mask_rcnn(*, mask_head: dict | None = None, **faster_args: Any) -> TwoStageDetector:
    """Build Mask R-CNN: :func:`~visionlab.models.faster_rcnn.faster_rcnn` with its
    arguments (backbone, ``pretrained_backbone``, FPN, RPN, box head, test-time knobs), and
    a :class:`MaskHead` after the box head.

    Args:
        mask_head: :class:`MaskHeadSettings` fields, e.g. ``{"width": 64}``.
        **faster_args: :func:`~visionlab.models.faster_rcnn.faster_rcnn`'s arguments. The box
            part is built first, so from one seed it starts as Faster R-CNN does.
    """
    settings = settings_from(MaskHeadSettings, mask_head, "mask_rcnn mask_head")
    model = faster_rcnn(**faster_args)
    model.roi_heads["mask"] = MaskHead(
        in_channels=model.feature_width,
        num_classes=model.roi_heads["box"].num_classes,
        settings=settings,
    )
    return model

"""SPPNet for detection (He, Zhang, Ren, Sun, "Spatial Pyramid Pooling in Deep Convolutional
Networks for Visual Recognition", ECCV 2014, section 4 "SPP-net for object detection").

The convolutional layers run once per image; each selective-search window is projected onto
the feature map and pooled by a spatial pyramid (:func:`visionlab.ops.spp_rois`) into a
fixed-length vector for R-CNN's fc6, fc7, SVMs and box regressors: SPPNet is a
:class:`~visionlab.models.rcnn.RegionDetector` whose region features come from
:class:`PyramidRegions`. Several ``scales`` give the paper's multi-scale extraction: each
window is pooled at the scale where its area is closest to ``target_size`` squared.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from visionlab.errors import VisionLabError
from visionlab.models.backbones import STRIDES, Backbone
from visionlab.models.rcnn import RENAMED_BACKBONE_ARGS, RegionDetector, build_region_detector
from visionlab.models.registry import register_model
from visionlab.ops import spp_rois

__all__ = ["PyramidRegions"]


class PyramidRegions:
    """SPPNet's region features (a :class:`~visionlab.models.rcnn.RegionFeatures`): the conv
    map once per image (and scale), each window pooled by a spatial pyramid.

    Args:
        scales: image scales (shorter side, pixels); one = single-scale testing.
        levels: pyramid bins per side, e.g. ``(6, 3, 2, 1)`` (paper) or ``(4, 2, 1)``.
        feature_stride: which backbone map to pool (4, 8, 16 or 32).
        target_size: multi-scale: pick the scale where a window is closest to this side.
    """

    def __init__(
        self,
        *,
        scales: Sequence[int],
        levels: Sequence[int],
        feature_stride: int,
        target_size: int,
    ) -> None:
        if feature_stride not in STRIDES:
            raise VisionLabError(f"sppnet: feature_stride must be one of {STRIDES}")
        if not scales or min(scales) < 1:
            raise VisionLabError(f"sppnet: scales must be positive sizes, got {scales!r}")
        self.scales = tuple(int(s) for s in scales)
        self.levels = tuple(int(n) for n in levels)
        self.feature_stride = int(feature_stride)
        self.target_size = int(target_size)
        self.pool_dim = 0  # known once a backbone is set up

    def setup(self, backbone: Backbone) -> int:
        backbone.use_up_to(self.feature_stride)  # the deeper stages never run
        channels = backbone.feature_channels[f"stride{self.feature_stride}"]
        self.pool_dim = channels * sum(n * n for n in self.levels)
        return self.pool_dim

    def feature_map(
        self, backbone: Backbone, images: Sequence[Tensor], scale: int
    ) -> tuple[Tensor, list[float]]:
        """Conv map ``Tensor[B, C, h, w]`` of the images resized so their shorter side is
        ``scale`` (all images must share one size), and each image's resize factor."""
        sizes = {tuple(img.shape[-2:]) for img in images}
        if len(sizes) != 1:
            raise VisionLabError("sppnet: images of one call must share a size")
        h, w = sizes.pop()
        factor = scale / min(h, w)
        batch = torch.stack(list(images))
        if abs(factor - 1) > 1e-6:
            out = (max(1, round(h * factor)), max(1, round(w * factor)))
            batch = F.interpolate(batch, size=out, mode="bilinear", align_corners=False)
        key = f"stride{self.feature_stride}"
        fmap = backbone.feature_maps(batch, strides=(self.feature_stride,))[key]
        return fmap, [factor] * len(images)

    def scale_choice(self, boxes: Tensor, image_min_side: int) -> Tensor:
        """Index into ``scales`` per window: the scale where its area is closest to
        ``target_size ** 2`` (SPPNet sec. 4, multi-scale)."""
        area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1).prod(dim=1)  # [K]
        factors = torch.tensor([s / image_min_side for s in self.scales], device=boxes.device)
        scaled = area[:, None] * factors[None, :] ** 2  # [K, S]
        return (scaled - self.target_size**2).abs().argmin(dim=1)

    def __call__(
        self,
        backbone: Backbone,
        images: Sequence[Tensor],
        boxes: Sequence[Tensor],
        *,
        chunk: int = 0,
    ) -> Tensor:
        """``Tensor[sum K_i, pool_dim]``; images of one size share a conv pass (``chunk``
        is not used: the windows cost no backbone pass of their own)."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(tuple(img.shape[-2:]), []).append(i)
        out: list[Tensor | None] = [None] * len(images)
        for idx in groups.values():
            imgs = [images[i] for i in idx]
            bxs = [boxes[i] for i in idx]
            choice = [self.scale_choice(b, min(imgs[0].shape[-2:])) for b in bxs]
            per_image = [b.new_zeros((len(b), self.pool_dim)) for b in bxs]
            for s_idx, scale in enumerate(self.scales):
                picked = [c == s_idx for c in choice]
                if not any(bool(m.any()) for m in picked):
                    continue
                fmap, factors = self.feature_map(backbone, imgs, scale)
                pooled = self._pool(fmap, [b[m] for b, m in zip(bxs, picked)], factors)
                for j, (m, p) in enumerate(zip(picked, pooled)):
                    per_image[j] = per_image[j].index_put((m,), p.to(per_image[j].dtype))
            for i, p in zip(idx, per_image):
                out[i] = p
        return torch.cat([o for o in out if o is not None])

    def _pool(self, fmap: Tensor, boxes: list[Tensor], factors: list[float]) -> list[Tensor]:
        scaled = [b.to(fmap.dtype) * f for b, f in zip(boxes, factors)]
        pooled = spp_rois(fmap, scaled, 1.0 / self.feature_stride, self.levels)
        return list(pooled.split([len(b) for b in boxes]))


@register_model(
    "sppnet",
    task="detection",
    summary="SPPNet (2014): one conv pass, spatial pyramid pooling, SVMs + box regression",
    renamed_args=RENAMED_BACKBONE_ARGS,
)
def sppnet(
    *,
    num_classes: int = 8,
    backbone: str = "tiny_cnn",
    backbone_width: int = 16,
    pretrained_backbone: str | None = None,
    scales: list[int] | tuple[int, ...] = (256,),
    levels: list[int] | tuple[int, ...] = (4, 2, 1),
    feature_stride: int = 16,
    target_size: int = 64,
    fc_width: int = 256,
    dropout: float = 0.5,
    proposals: dict | None = None,
    finetune: dict | None = None,
    svm: dict | None = None,
    box_reg: dict | None = None,
    test: dict | None = None,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.3,
    detections_per_img: int = 100,
    min_size: float = 1e-2,
) -> RegionDetector:
    """SPPNet on a visionlab backbone: a :class:`~visionlab.models.rcnn.RegionDetector`
    with :class:`PyramidRegions` (``scales``, ``levels``, ``feature_stride``,
    ``target_size``); the other arguments are ``rcnn``'s."""
    regions = PyramidRegions(
        scales=scales, levels=levels, feature_stride=feature_stride, target_size=target_size
    )
    return build_region_detector("sppnet", regions, locals())

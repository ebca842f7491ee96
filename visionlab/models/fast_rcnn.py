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
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

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

__all__ = ["FastRCNN", "cached_selective_search", "fast_rcnn"]

SS_MODES = ("fast", "quality")


def cached_selective_search(
    image: Tensor, mode: str = "fast", max_boxes: int = 2000, search_size: int = 0
) -> Tensor:
    """Selective-search boxes of ``image`` ``Tensor[3, H, W]`` (CPU result ``Tensor[K, 4]``).

    With ``search_size`` > 0 the search runs on the image resized so its longer side is that
    many pixels, and the boxes are mapped back (R-CNN's ``ProposalSettings.search_size``).
    A cache miss whose mirror image is cached returns the mirrored boxes of that image (a
    horizontal flip is the training augmentation), so one pass over a dataset serves both.
    The cache is keyed by the image as given (and ``search_size``), whose mirror is exact;
    a resized copy's pixels need not be.
    """
    from visionlab.ops import clip_boxes_to_image
    from visionlab.ops import proposals as ss

    image = image.detach().cpu()
    folder = ss.default_cache_dir()
    bgr = ss._to_bgr_uint8(image)
    key_mode = mode if search_size <= 0 else f"{mode}|search_size={search_size}"
    own_key = ss._cache_key(bgr, key_mode)
    for flipped in (False, True):
        key = ss._cache_key(np.ascontiguousarray(bgr[:, ::-1]), key_mode) if flipped else own_key
        boxes = ss._load_cached(folder / key[:2] / f"{key}.npy")
        if boxes is not None:
            out = torch.from_numpy(np.ascontiguousarray(boxes[:max_boxes]))
            if flipped:
                width = image.shape[-1]
                out = torch.stack([width - out[:, 2], out[:, 1], width - out[:, 0], out[:, 3]], 1)
            return out
    if search_size <= 0:
        return ss.selective_search(image, mode, max_boxes, cache=True)
    search, factor = ss.resize_longer(image.float(), search_size)
    found = ss.selective_search(search, mode, None, cache=False)
    boxes = clip_boxes_to_image(found / factor, tuple(image.shape[-2:])).float()
    ss._save_atomic(folder / own_key[:2] / f"{own_key}.npy", boxes.numpy())
    return boxes[:max_boxes]


_PREPARE: tuple[Any, tuple[str, int, int]] | None = None  # read by forked search workers


def _search_one(dataset: Any, settings: tuple[str, int, int], index: int) -> None:
    image, _ = dataset[index]
    cached_selective_search(image, *settings)


def _search_forked(index: int) -> None:
    assert _PREPARE is not None
    _search_one(*_PREPARE, index)


class FastRCNN(Detector):
    """Selective search -> backbone -> RoI pooling -> FC -> softmax + box regression.

    The detector contract (:class:`~visionlab.models.detector.Detector`): training returns
    ``{"loss_classifier", "loss_box_reg"}``; eval, per image ``{"boxes", "labels",
    "scores"}`` (+ ``proposals: Tensor[P, 4]``, selective search's, with
    ``extras=("proposals",)``).

    Args:
        backbone: a :class:`Backbone`.
        num_classes: classes including background.
        feature_stride: stride of the shared feature map (16 = VGG16's conv5_3 in the paper).
        box_head: :class:`BoxHeadSettings`.
        detection: test-time :class:`~visionlab.models.postprocess.DetectionSettings`.
        proposal_mode: selective search mode, ``fast`` or ``quality``.
        max_proposals: regions per image (the paper: ~2000).
        search_size: run selective search on the image enlarged (or shrunk) so its longer
            side is this many pixels, boxes mapped back; 0 = the image as given.
    """

    supported_extras: ClassVar[frozenset[str]] = frozenset({"proposals"})

    def __init__(
        self,
        *,
        backbone: Backbone,
        num_classes: int,
        feature_stride: int = 16,
        box_head: BoxHeadSettings | None = None,
        detection: DetectionSettings | None = None,
        proposal_mode: str = "fast",
        max_proposals: int = 2000,
        search_size: int = 0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_stride = int(feature_stride)
        backbone.use_up_to(self.feature_stride)  # the deeper stages never run
        self.roi_heads = RoIBoxPredictor(
            in_channels=backbone.feature_channels[f"stride{self.feature_stride}"],
            spatial_scale=1.0 / self.feature_stride,
            num_classes=num_classes,
            settings=box_head,
            detection=detection,
        )
        self.proposal_mode = proposal_mode
        self.max_proposals = int(max_proposals)
        self.search_size = int(search_size)

    def propose(self, images: Sequence[Tensor]) -> list[Tensor]:
        """Selective-search regions per image, ``Tensor[P_i, 4]`` on the images' device."""
        return [
            cached_selective_search(
                im, self.proposal_mode, self.max_proposals, self.search_size
            ).to(im.device)
            for im in images
        ]

    def features(self, batch: Tensor) -> Tensor:
        """The shared map ``Tensor[B, C, H / s, W / s]`` of a padded batch."""
        return self.backbone.feature_maps(batch, strides=(self.feature_stride,))[
            f"stride{self.feature_stride}"
        ]

    def _heads(
        self,
        images: list[Tensor],
        proposals: list[Tensor],
        targets: list[dict[str, Tensor]] | None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        batch, sizes = batch_images(images, size_divisible=32)
        return self.roi_heads(self.features(batch), proposals, sizes, targets)

    def losses(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        return self._heads(images, self.propose(images), targets)[1]

    def detect(self, images: list[Tensor], extras: frozenset[str]) -> list[dict[str, Tensor]]:
        proposals = self.propose(images)
        detections, _ = self._heads(images, proposals, None)
        if "proposals" in extras:
            attach_proposals(detections, proposals)
        return detections

    def prepare_data(
        self,
        datasets: Iterable[Any],
        *,
        image_size: int | None = None,
        workers: int | None = None,
    ) -> None:
        """Compute (and cache on disk) selective search for every image of ``datasets``,
        as evaluation resizes them to ``image_size``, with a progress bar. Called by
        ``visionlab train`` before the first step; cached images cost a file read. The
        search is serial inside OpenCV, so images are spread over ``workers`` processes
        (default: one per CPU core, at most 4; 1 = in this process)."""
        import copy
        import multiprocessing
        import os

        from tqdm.auto import tqdm

        from visionlab.data.transforms import build_transforms

        if workers is None:
            workers = min(4, os.cpu_count() or 1)
        can_fork = "fork" in multiprocessing.get_all_start_methods()
        transform = build_transforms("detection", False, image_size)
        settings = (self.proposal_mode, self.max_proposals, self.search_size)
        for dataset in datasets:
            if dataset is None:
                continue
            plain = copy.copy(dataset)
            plain.transforms = transform
            bar = tqdm(
                total=len(plain),
                desc=f"selective search {getattr(dataset, 'split', '')}",
                unit="img",
            )
            if workers <= 1 or not can_fork or len(plain) < 2 * workers:
                for i in range(len(plain)):
                    _search_one(plain, settings, i)
                    bar.update()
            else:  # forked workers inherit the dataset; each task is an index
                global _PREPARE
                _PREPARE = (plain, settings)
                try:
                    with multiprocessing.get_context("fork").Pool(
                        workers, initializer=torch.set_num_threads, initargs=(1,)
                    ) as pool:
                        for _ in pool.imap_unordered(_search_forked, range(len(plain)), 8):
                            bar.update()
                finally:
                    _PREPARE = None
            bar.close()


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
    frozen_stride: int = 0,
    feature_stride: int = 16,
    pooler: str = "roi_pool",
    proposal_mode: str = "fast",
    max_proposals: int = 2000,
    search_size: int = 0,
    box_head: dict | None = None,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    min_size: float = 1e-2,
) -> FastRCNN:
    """Build Fast R-CNN.

    Args:
        num_classes: classes including background (filled in from the dataset by ``train``).
        backbone: a name of :func:`visionlab.models.backbones.list_backbones`.
        backbone_width: ``tiny_cnn``'s stem width.
        pretrained_backbone: a local weights file for the backbone (never downloaded).
        frozen_stride: freeze the backbone up to this stride's map (0: nothing; 4: the stem
            and the stride-4 stage, torchvision's ``trainable_backbone_layers=3``): no
            gradients, batch norms fixed, a cheaper step; meant for a pretrained backbone.
        feature_stride: stride of the shared map (8, 16 or 32).
        pooler: ``roi_pool`` (the paper's) or ``roi_align``.
        proposal_mode: selective search ``fast`` or ``quality``.
        max_proposals: regions kept per image.
        search_size: longer side (px) of the copy selective search runs on; 0 = as given.
            The scenes' 128 px images give ~130 boxes and 74% recall at IoU 0.5 as they
            are, ~220 boxes and 96% at 256 (R-CNN's setting).
        box_head: :class:`BoxHeadSettings` fields, e.g. ``{"fc_width": 256}``.
        score_thresh, nms_thresh, detections_per_img, min_size: test time, the
            :class:`~visionlab.models.postprocess.DetectionSettings` (the papers'
            class-wise NMS IoU is 0.3; 0.5 is torchvision's and this default).
    """
    if pooler not in POOLERS:
        raise VisionLabError(f"fast_rcnn: pooler must be one of {POOLERS}, got {pooler!r}")
    if proposal_mode not in SS_MODES:
        raise VisionLabError(f"fast_rcnn: proposal_mode must be one of {SS_MODES}")
    if feature_stride not in STRIDES:
        raise VisionLabError(f"fast_rcnn: feature_stride must be one of {STRIDES}")
    if not isinstance(search_size, int) or search_size < 0:
        raise VisionLabError(f"fast_rcnn: search_size must be a length in px >= 0: {search_size!r}")
    if num_classes < 2:
        raise VisionLabError(f"fast_rcnn: num_classes counts background, got {num_classes}")
    reject_nested_knobs(box_head, "fast_rcnn box_head")
    box = dict(box_head or {})
    box.setdefault("pooler", pooler)
    return FastRCNN(
        backbone=build_backbone(
            backbone,
            pretrained=pretrained_backbone,
            width=backbone_width,
            frozen_stride=frozen_stride,
        ),
        num_classes=num_classes,
        feature_stride=feature_stride,
        box_head=settings_from(BoxHeadSettings, box, "fast_rcnn box_head"),
        proposal_mode=proposal_mode,
        max_proposals=max_proposals,
        search_size=search_size,
        detection=DetectionSettings(
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            min_size=min_size,
        ),
    )

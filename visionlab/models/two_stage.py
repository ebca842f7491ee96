"""The two-stage skeleton of Fast, Faster and Mask R-CNN: backbone (+ FPN) -> proposer -> RoI
heads, the shape of torchvision's ``GeneralizedRCNN``.

A proposer is a module called ``proposer(images, features, batch_shape, image_sizes,
targets) -> (proposals, losses)`` with per-image detached ``Tensor[P_i, 4]`` xyxy proposals:
:class:`SelectiveSearchProposer` (Fast R-CNN sec. 4, no losses) or
:class:`~visionlab.models.rpn.RPN` (Faster R-CNN sec. 3.1, trained jointly with the heads,
sec. 3.2). :class:`FPN` (Lin et al. 2017, sec. 3) turns several backbone maps into a pyramid.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionlab.errors import VisionLabError
from visionlab.models.backbones import Backbone, build_backbone
from visionlab.models.batching import batch_images
from visionlab.models.detector import Detector, attach_proposals, drop_unasked
from visionlab.models.heads import (
    POOLERS,
    BoxHeadSettings,
    RoIBatch,
    RoIBoxPredictor,
    RoIHeads,
    RoIPooler,
    settings_from,
)
from visionlab.models.postprocess import DETECTION_KNOBS, DetectionSettings, reject_nested_knobs
from visionlab.ops import selective_search

__all__ = ["FPN", "SelectiveSearchProposer", "TwoStageDetector"]


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


_PREPARE: tuple[Any, SelectiveSearchProposer] | None = None  # read by forked search workers


def _search_forked(index: int) -> None:
    assert _PREPARE is not None
    dataset, proposer = _PREPARE
    proposer.search(dataset[index][0])


class SelectiveSearchProposer(nn.Module):
    """Selective-search regions (Uijlings et al. 2013), cached on disk by
    :func:`visionlab.ops.selective_search`; a flipped training image reuses its original's
    regions, mirrored. No parameters, no losses.

    Args:
        mode: ``fast`` (R-CNN's) or ``quality`` (Fast R-CNN's on PASCAL, sec. 4).
        max_proposals: regions kept per image (the papers: ~2000).
        search_size: longer side (px) of the copy the search runs on; 0 = as given.
    """

    def __init__(self, *, mode: str = "fast", max_proposals: int = 2000, search_size: int = 0):
        super().__init__()
        self.mode = mode
        self.max_proposals = int(max_proposals)
        self.search_size = int(search_size)

    def search(self, image: Tensor) -> Tensor:
        """The regions ``Tensor[P, 4]`` of ``image [3, H, W]``, on its device."""
        boxes = selective_search(
            image.detach().cpu(),
            self.mode,
            self.max_proposals,
            search_size=self.search_size,
            reuse_mirror=True,
        )
        return boxes.to(image.device)

    def forward(
        self,
        images: Sequence[Tensor],
        features: Sequence[Tensor],
        batch_shape: tuple[int, int],
        image_sizes: Sequence[tuple[int, int]],
        targets: Sequence[dict] | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """``([Tensor[P_i, 4]], {})``: the regions of each image."""
        return [self.search(im) for im in images], {}

    def prepare_data(
        self, datasets: Iterable[Any], *, transform: Any = None, workers: int | None = None
    ) -> None:
        """Search (and cache) every image of ``datasets`` as ``transform`` gives it (None:
        the dataset's own), spread over ``workers`` forked processes (default: one per CPU
        core, at most 4; 1 = this process)."""
        import copy
        import multiprocessing
        import os

        from tqdm.auto import tqdm

        if workers is None:
            workers = min(4, os.cpu_count() or 1)
        can_fork = "fork" in multiprocessing.get_all_start_methods()
        for dataset in datasets:
            if dataset is None:
                continue
            plain = copy.copy(dataset)
            if transform is not None:
                plain.transforms = transform
            desc = f"selective search {getattr(dataset, 'split', '')}"
            bar = tqdm(total=len(plain), desc=desc, unit="img")
            if workers <= 1 or not can_fork or len(plain) < 2 * workers:
                for i in range(len(plain)):
                    self.search(plain[i][0])
                    bar.update()
            else:  # forked workers inherit the dataset; each task is an index
                global _PREPARE
                _PREPARE = (plain, self)
                try:
                    with multiprocessing.get_context("fork").Pool(
                        workers, initializer=torch.set_num_threads, initargs=(1,)
                    ) as pool:
                        for _ in pool.imap_unordered(_search_forked, range(len(plain)), 8):
                            bar.update()
                finally:
                    _PREPARE = None
            bar.close()


# state-dict keys written before the skeleton (Fast and Faster R-CNN as two classes)
_OLD_KEYS = (("rpn.", "proposer."), ("roi_heads.head.", "roi_heads.box.head."))


def _rename_old_keys(state_dict: dict, prefix: str, *_args: Any) -> None:
    for old, new in _OLD_KEYS:
        for key in [k for k in state_dict if k.startswith(prefix + old)]:
            state_dict[prefix + new + key[len(prefix + old) :]] = state_dict.pop(key)


class TwoStageDetector(Detector):
    """Backbone (+ FPN) -> proposer -> RoI heads, in the detector contract
    (:class:`~visionlab.models.detector.Detector`).

    Training returns the proposer's losses and every RoI head's; eval, per image ``{"boxes",
    "labels", "scores"}`` and what later heads add (+ ``proposals`` as an extra).

    Args:
        backbone: a :class:`Backbone`.
        proposer: see the module docstring.
        roi_heads: :class:`~visionlab.models.heads.RoIHeads`, the box head first.
        feature_strides: the backbone maps used: one stride without FPN, several with.
        fpn: an :class:`FPN` over the maps at ``feature_strides``; ``None`` = the map itself.
        canonical_size: with FPN, the RoI side (px) pooled from the middle level.
        size_divisible: batches are padded to multiples of this (the padding reaches
            border features: a checkpoint's detections hold for its trained value).
    """

    takes_given: ClassVar[bool] = True

    def __init__(
        self,
        *,
        backbone: Backbone,
        proposer: nn.Module,
        roi_heads: RoIHeads,
        feature_strides: Sequence[int] = (16,),
        fpn: FPN | None = None,
        canonical_size: float = 64.0,
        size_divisible: int = 32,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_strides = tuple(int(s) for s in feature_strides)
        self.size_divisible = int(size_divisible)
        backbone.use_up_to(max(self.feature_strides))  # the deeper stages never run
        self.fpn = fpn
        # channels of the maps the heads see
        self.feature_width = (
            fpn.output[0].out_channels
            if fpn is not None
            else backbone.feature_channels[f"stride{self.feature_strides[0]}"]
        )
        self.proposer = proposer
        self.roi_heads = roi_heads
        self.pooler = RoIPooler(
            scales=tuple(1.0 / s for s in self.feature_strides),
            canonical_level=len(self.feature_strides) // 2,
            canonical_size=canonical_size,
        )
        self._register_load_state_dict_pre_hook(_rename_old_keys)

    def features(self, batch: Tensor) -> list[Tensor]:
        """Shared feature maps of a padded batch ``Tensor[B, 3, H, W]``, finest first."""
        maps = self.backbone.feature_maps(batch, strides=self.feature_strides)
        levels = [maps[f"stride{s}"] for s in self.feature_strides]
        return self.fpn(levels) if self.fpn is not None else levels

    @property
    def supported_extras(self) -> frozenset[str]:  # type: ignore[override]
        """``proposals``, and what the RoI heads make (a relation head's ``relation_pairs``)."""
        made = {e for head in self.roi_heads.values() for e in getattr(head, "extras", ())}
        return frozenset({"proposals", *made})

    def _run(
        self,
        images: list[Tensor],
        targets: list[dict[str, Tensor]] | None,
        given: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], list[Tensor], dict[str, Tensor]]:
        """``(detections, proposals, losses)``: detections in eval, losses in training;
        with ``given`` boxes the proposer does not run (they are the proposals)."""
        batch, sizes = batch_images(images, size_divisible=self.size_divisible)
        feats = self.features(batch)
        if given is None:
            proposals, proposer_losses = self.proposer(
                images, feats, tuple(batch.shape[-2:]), sizes, targets
            )
        else:
            proposals, proposer_losses = [g["boxes"].float() for g in given], {}
        roi_batch = RoIBatch(feats, proposals, sizes, self.pooler, targets, given=given)
        detections, head_losses = self.roi_heads(roi_batch)
        return detections, proposals, {**proposer_losses, **head_losses}

    def losses(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        return self._run(images, targets)[2]

    def detect(self, images: list[Tensor], extras: frozenset[str]) -> list[dict[str, Tensor]]:
        detections, proposals, _ = self._run(images, None)
        drop_unasked(detections, self.supported_extras, extras)
        if "proposals" in extras:
            attach_proposals(detections, proposals)
        return detections

    def detect_given(
        self, images: list[Tensor], extras: frozenset[str], given: list[dict[str, Tensor]]
    ) -> list[dict[str, Tensor]]:
        """The RoI heads on the ``given`` boxes: the box head keeps their labels or
        classifies them (:meth:`~visionlab.models.heads.RoIBoxPredictor.given_detections`),
        the later heads add their keys."""
        detections, proposals, _ = self._run(images, None, given)
        drop_unasked(detections, self.supported_extras, extras)
        if "proposals" in extras:
            attach_proposals(detections, proposals)
        return detections

    def prepare_data(self, datasets: Iterable[Any], *, transform: Any = None) -> None:
        """The proposer's and the RoI heads' data preparation (the selective-search cache,
        a relation head's frequency counts); nothing for the RPN and the box head."""
        for part in (self.proposer, *self.roi_heads.values()):
            prepare = getattr(part, "prepare_data", None)
            if prepare is not None:
                prepare(datasets, transform=transform)


def build_two_stage(
    where: str,
    args: dict[str, Any],
    *,
    proposer: Callable[[int], nn.Module],
    strides: tuple[int, ...],
    box_defaults: dict[str, Any] | None = None,
    fpn_channels: int | None = None,
    **skeleton: Any,
) -> TwoStageDetector:
    """What the ``fast_rcnn`` and ``faster_rcnn`` builders (``where``) share, from their
    arguments ``args``: the box head settings, then the backbone, an :class:`FPN` when
    ``fpn_channels`` is given, ``proposer(width of the maps the heads see)`` and the box
    predictor, built in this order (a seed gives the same weights). ``skeleton``: more
    :class:`TwoStageDetector` arguments."""
    pooler, box_head, num_classes = args["pooler"], args["box_head"], args["num_classes"]
    if pooler not in POOLERS:
        raise VisionLabError(f"{where}: pooler must be one of {POOLERS}, got {pooler!r}")
    reject_nested_knobs(box_head, f"{where} box_head")
    box = {"pooler": pooler, **(box_defaults or {}), **(box_head or {})}
    box_settings = settings_from(BoxHeadSettings, box, f"{where} box_head")
    if num_classes < 2:
        raise VisionLabError(f"{where}: num_classes counts background, got {num_classes}")
    net = build_backbone(
        args["backbone"],
        pretrained=args["pretrained_backbone"],
        width=args["backbone_width"],
        frozen_stride=args["frozen_stride"],
    )
    channels = [net.feature_channels[f"stride{s}"] for s in strides]
    pyramid = None if fpn_channels is None else FPN(in_channels=channels, out_channels=fpn_channels)
    width = channels[0] if fpn_channels is None else fpn_channels
    proposer_module = proposer(width)
    box_predictor = RoIBoxPredictor(
        in_channels=width,
        num_classes=num_classes,
        settings=box_settings,
        detection=DetectionSettings(**{k: args[k] for k in DETECTION_KNOBS}),
    )
    return TwoStageDetector(
        backbone=net,
        proposer=proposer_module,
        roi_heads=RoIHeads({"box": box_predictor}),
        feature_strides=strides,
        fpn=pyramid,
        **skeleton,
    )

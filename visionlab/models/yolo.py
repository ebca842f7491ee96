"""YOLO: one network pass from the image to every box, no region proposals.

Redmon, Divvala, Girshick and Farhadi, "You Only Look Once: Unified, Real-Time Object
Detection", CVPR 2016. Each cell of an S x S grid predicts B boxes ``(x, y, w, h)`` with a
confidence and one set of C class probabilities: an ``S x S x (B * 5 + C)`` tensor (Sec. 2),
from a backbone and fully connected layers (Sec. 2.1). The loss is in
:mod:`visionlab.models.yolo_loss`; at test time the class-specific confidence
``Pr(class | object) * confidence`` (eq. 2) goes to the one post-processor (Sec. 2.3).

Options beyond v1, off by default (Redmon and Farhadi, "YOLO9000", CVPR 2017, Sec. 2):
``head="conv"`` (the grid is the backbone's map at ``feature_stride``), ``anchors=[[w, h],
...]`` (B priors per cell, "Direct location prediction", ``S x S x B (5 + C)``) and
``multiscale=[sizes]`` (a new input size every ``multiscale_every`` training batches).

Differences from the paper: the library's backbones instead of Darknet, a smaller head
(``fc_hidden``), the loss divided by the number of images, and linear outputs clamped to
``[0, 1]`` when turned into scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from visionlab.errors import VisionLabError
from visionlab.models.backbones import Backbone, build_backbone
from visionlab.models.detector import Detector
from visionlab.models.postprocess import DetectionSettings, postprocess_detections
from visionlab.models.registry import register_model
from visionlab.models.yolo_head import HEAD_KINDS, YoloHead, YoloHeadConfig
from visionlab.models.yolo_loss import (
    YoloLossConfig,
    assign,
    decode_prior,
    decode_v1,
    yolo_prior_loss,
    yolo_v1_loss,
)

# Best (box, class) pairs kept per image before NMS (DetectionSettings.topk_candidates).
TOPK_CANDIDATES = 1000


class YOLO(Detector):
    """YOLO v1 (and the YOLO9000 options), in the detector contract; the extra ``"grid"``
    adds ``grid_size`` (int S) and ``cells`` (``Tensor[N, 2]`` (row, col)) to eval outputs.

    Args:
        backbone: a :class:`visionlab.models.backbones.Backbone`.
        num_classes: foreground classes + 1 (torchvision's count; labels are 1..C).
        input_size: side of the square network input; images are resized to it and boxes
            mapped back to each image's own pixels.
        S: cells per side (``fc`` head; ``conv`` heads have ``input_size / feature_stride``).
        B: boxes per cell (the number of priors when ``anchors`` is given).
        head, loss: :class:`YoloHeadConfig`, ``YoloLossConfig``.
        detection: test-time :class:`~visionlab.models.postprocess.DetectionSettings`.
        anchors: ``[[w, h]] * B`` prior sizes in input pixels (YOLO9000), or None (v1).
        multiscale: training input sizes (multiples of ``feature_stride``), or None.
        multiscale_every: training batches between two size draws (10 in YOLO9000).
    """

    supported_extras: ClassVar[frozenset[str]] = frozenset({"grid"})

    def __init__(
        self,
        *,
        backbone: Backbone,
        num_classes: int,
        input_size: int = 448,
        S: int = 7,
        B: int = 2,
        head: YoloHeadConfig | None = None,
        loss: YoloLossConfig | None = None,
        detection: DetectionSettings | None = None,
        anchors: Sequence[Sequence[float]] | None = None,
        multiscale: Sequence[int] | None = None,
        multiscale_every: int = 10,
    ) -> None:
        super().__init__()
        head = head or YoloHeadConfig()
        self.backbone = backbone
        self.num_classes = num_classes - 1  # C, foreground
        self.input_size, self.B = input_size, B
        self.head_config, self.loss_config = head, loss or YoloLossConfig()
        self.detection_settings = detection or DetectionSettings(
            score_thresh=0.005, min_size=0.0, topk_candidates=TOPK_CANDIDATES
        )
        self.stride = head.feature_stride
        backbone.use_up_to(self.stride)  # the deeper stages never run
        self.S = S if head.kind == "fc" else input_size // self.stride
        self.use_priors = anchors is not None
        priors = torch.tensor(anchors if anchors is not None else [], dtype=torch.float32)
        self.register_buffer("priors", priors.reshape(-1, 2), persistent=False)
        C = self.num_classes
        depth = B * (5 + C) if self.use_priors else B * 5 + C
        self.head = YoloHead(
            in_channels=backbone.feature_channels[f"stride{self.stride}"],
            map_size=input_size // self.stride,
            S=self.S,
            depth=depth,
            config=head,
        )
        self.multiscale = list(multiscale) if multiscale else []
        self.multiscale_every = multiscale_every
        self._batches, self._train_size = 0, input_size

    # ------------------------------------------------------------------ prediction grid

    def grid(self, x: Tensor) -> dict[str, Tensor]:
        """Run the network on a batch ``x [N, 3, s, s]`` and split its output grid.

        Returns:
            ``params [N, S, S, B, 4]`` (v1: ``x, y, sqrt_w, sqrt_h``; priors: ``sx, sy, tw,
            th``), ``confidence [N, S, S, B]``, and ``classes``: v1 ``Tensor[N, S, S, C]``
            ``P(class | object)`` (linear), priors ``Tensor[N, S, S, B, C]`` logits.
        """
        features = self.backbone.feature_maps(x, strides=(self.stride,))[f"stride{self.stride}"]
        out = self.head(features)  # [N, S, S, D]
        n, S, B, C = out.shape[0], out.shape[1], self.B, self.num_classes
        if self.use_priors:
            per_box = out.reshape(n, S, S, B, 5 + C)
            params = torch.cat([per_box[..., :2].sigmoid(), per_box[..., 2:4]], -1)
            return {
                "params": params,
                "confidence": per_box[..., 4].sigmoid(),
                "classes": per_box[..., 5:],
            }
        boxes = out[..., : B * 5].reshape(n, S, S, B, 5)
        return {"params": boxes[..., :4], "confidence": boxes[..., 4], "classes": out[..., B * 5 :]}

    def decode(self, params: Tensor, size: int) -> Tensor:
        """Grid parameters ``[..., S, S, B, 4]`` -> xyxy boxes in pixels of a ``size`` input."""
        if self.use_priors:
            scale = size / self.input_size  # priors are sizes at input_size
            return decode_prior(params, self.priors * scale, (size, size))
        return decode_v1(params, (size, size))

    # ------------------------------------------------------------------------ forward

    def _size(self) -> int:
        if self.training and self.multiscale:
            if self._batches % self.multiscale_every == 0:
                pick = torch.randint(len(self.multiscale), ()).item()
                self._train_size = int(self.multiscale[pick])
            self._batches += 1
            return self._train_size
        return self.input_size

    @staticmethod
    def _resize(images: Sequence[Tensor], size: int) -> Tensor:
        out = []
        for im in images:
            if tuple(im.shape[-2:]) != (size, size):
                im = F.interpolate(
                    im[None],
                    size=(size, size),
                    mode="bilinear",
                    align_corners=False,
                    antialias=True,
                )[0]
            out.append(im)
        return torch.stack(out)

    def losses(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """``{loss_box_xy, loss_box_wh, loss_objectness, loss_noobject, loss_classifier}`` (see
        :mod:`visionlab.models.yolo_loss`)."""
        size = self._size()
        return self.grid_losses(self.grid(self._resize(images, size)), images, targets, size)

    def detect(self, images: list[Tensor], extras: frozenset[str]) -> list[dict[str, Tensor]]:
        """Per image ``{boxes [K, 4] xyxy in that image's pixels, labels [K] 1..C, scores
        [K]}`` (+ ``grid_size``, ``cells`` with the extra ``"grid"``)."""
        size = self._size()
        grid = self.grid(self._resize(images, size))
        sizes = [tuple(im.shape[-2:]) for im in images]
        return self.postprocess(grid, sizes, size, with_grid="grid" in extras)

    def grid_losses(
        self,
        grid: dict[str, Tensor],
        images: Sequence[Tensor],
        targets: Sequence[dict[str, Tensor]],
        size: int,
    ) -> dict[str, Tensor]:
        """The loss of the output ``grid`` of ``images`` resized to ``size``."""
        gt_boxes, gt_labels = [], []
        for im, t in zip(images, targets):
            h, w = im.shape[-2:]
            scale = torch.tensor([size / w, size / h, size / w, size / h], device=im.device)
            gt_boxes.append(t["boxes"].reshape(-1, 4).float() * scale)
            gt_labels.append(t["labels"].reshape(-1).long())
        with torch.no_grad():
            decoded = self.decode(grid["params"].detach(), size)
        priors = self.priors * (size / self.input_size) if self.use_priors else None
        assigned = assign(gt_boxes, gt_labels, decoded, (size, size), priors)
        outputs = (grid["params"], grid["confidence"], grid["classes"])
        if self.use_priors:
            return yolo_prior_loss(*outputs, priors, assigned, (size, size), self.loss_config)
        return yolo_v1_loss(*outputs, assigned, (size, size), self.loss_config)

    @torch.no_grad()
    def class_scores(self, grid: dict[str, Tensor]) -> Tensor:
        """``[n, S * S * B, C]`` class-specific confidences (eq. 2): Pr(class | object) x
        Pr(object) x IoU, the box's confidence times its cell's (or, with priors, its own)
        class distribution."""
        n, S = grid["params"].shape[:2]
        B, C = self.B, self.num_classes
        conf = grid["confidence"].clamp(0, 1).reshape(n, S * S * B, 1)
        if self.use_priors:
            probs = grid["classes"].softmax(-1).reshape(n, S * S * B, C)
        else:  # one class distribution per cell, shared by its B boxes
            probs = grid["classes"].clamp(0, 1).reshape(n, S * S, 1, C).expand(n, S * S, B, C)
            probs = probs.reshape(n, S * S * B, C)
        return probs * conf

    def postprocess(
        self,
        grid: dict[str, Tensor],
        image_sizes: list[tuple[int, int]],
        size: int,
        *,
        with_grid: bool = False,
    ) -> list[dict[str, Tensor]]:
        """Class-specific confidences (eq. 2), then the one post-processor; only the boxes
        past the threshold are decoded, straight to each image's pixels. ``with_grid``
        adds ``grid_size`` and ``cells`` (the extra ``"grid"``)."""
        n, S = grid["params"].shape[:2]
        B = self.B
        params = grid["params"].reshape(n, S * S * B, 4)
        scores = self.class_scores(grid)  # [n, S * S * B, C]
        priors = self.priors * (size / self.input_size) if self.use_priors else None
        outputs = []
        for i, (h, w) in enumerate(image_sizes):
            scale = params.new_tensor([w / size, h / size, w / size, h / size])

            def decode(rows: Tensor, labels: Tensor, i: int = i, scale: Tensor = scale) -> Tensor:
                cell = rows // B
                cells = torch.stack([cell // S, cell % S], 1)  # (row, col)
                if priors is not None:
                    boxes = decode_prior(
                        params[i, rows], priors[rows % B], (size, size), cells=cells, S=S
                    )
                else:
                    boxes = decode_v1(params[i, rows], (size, size), cells=cells, S=S)
                return boxes * scale  # input pixels -> this image's pixels

            out = postprocess_detections(
                scores[i], decode, (h, w), self.detection_settings, return_indices=True
            )
            cell = out.pop("indices") // B
            if with_grid:
                out["grid_size"] = S
                out["cells"] = torch.stack([cell // S, cell % S], 1)
            outputs.append(out)
        return outputs


@register_model(
    "yolo",
    task="detection",
    summary="YOLO v1: S x S grid, B boxes + C classes per cell, one pass (+ YOLO9000 options)",
    renamed_args={"width": "backbone_width"},
)
def yolo(
    *,
    num_classes: int = 21,
    backbone: str = "tiny_cnn",
    pretrained_backbone: str | None = None,
    backbone_width: int = 16,
    frozen_stride: int = 0,
    input_size: int = 448,
    S: int | None = None,
    B: int | None = None,
    head: str = "fc",
    feature_stride: int = 32,
    head_convs: int = 2,
    head_channels: int = 256,
    fc_hidden: int = 512,
    dropout: float = 0.5,
    lambda_coord: float = 5.0,
    lambda_noobj: float = 0.5,
    anchors: Sequence[Sequence[float]] | None = None,
    multiscale: Sequence[int] | None = None,
    multiscale_every: int = 10,
    score_thresh: float = 0.005,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    min_size: float = 0.0,
) -> YOLO:
    """YOLO v1 by default (S=7, B=2, fully connected head, 448 px input).

    ``S`` defaults to 7 (``fc``) or ``input_size / feature_stride`` (``conv``); ``B`` to 2,
    or to the number of ``anchors``. ``frozen_stride``: :meth:`Backbone.freeze_to`.
    ``score_thresh``, ``nms_thresh``, ``detections_per_img``, ``min_size``: the test-time
    :class:`~visionlab.models.postprocess.DetectionSettings`.
    """
    if head not in HEAD_KINDS:
        raise VisionLabError(f"yolo: head must be one of {HEAD_KINDS}, got {head!r}")
    if feature_stride not in (8, 16, 32):
        raise VisionLabError(f"yolo: feature_stride must be 8, 16 or 32, got {feature_stride}")
    if input_size % feature_stride:
        raise VisionLabError(
            f"yolo: input_size {input_size} is not a multiple of feature_stride {feature_stride}"
        )
    if anchors is not None:
        if not anchors or any(len(a) != 2 or min(a) <= 0 for a in anchors):
            raise VisionLabError(f"yolo: anchors must be [[w, h], ...] > 0, got {anchors!r}")
        if B is not None and len(anchors) != B:
            raise VisionLabError(f"yolo: B={B} but {len(anchors)} anchors are given")
    B = len(anchors) if anchors is not None else (2 if B is None else B)
    if head == "conv":
        if S is not None and input_size // feature_stride != S:
            raise VisionLabError(
                f"yolo: with head='conv' the grid is the stride-{feature_stride} map: S = "
                f"{input_size // feature_stride} at input_size {input_size}, not {S}"
            )
        S = input_size // feature_stride
    S = 7 if S is None else S
    if S < 1 or B < 1 or num_classes < 2:
        raise VisionLabError(
            f"yolo: need S >= 1, B >= 1, num_classes >= 2 (got {S}, {B}, {num_classes})"
        )
    if multiscale:
        if head != "conv":
            raise VisionLabError(
                "yolo: multiscale needs head='conv' (fully connected layers fix the input size)"
            )
        bad = [s for s in multiscale if s % feature_stride]
        if bad:
            raise VisionLabError(
                f"yolo: multiscale sizes {bad} are not multiples of feature_stride {feature_stride}"
            )
    # the value itself is checked by Backbone.freeze_to; here only what YOLO adds
    if isinstance(frozen_stride, int) and frozen_stride >= feature_stride:
        raise VisionLabError(
            f"yolo: frozen_stride {frozen_stride} must lie below feature_stride "
            f"{feature_stride} (the head's map must still train)"
        )
    net = build_backbone(
        backbone, pretrained=pretrained_backbone, width=backbone_width, frozen_stride=frozen_stride
    )
    return YOLO(
        backbone=net,
        num_classes=num_classes,
        input_size=input_size,
        S=S,
        B=B,
        head=YoloHeadConfig(
            kind=head,
            feature_stride=feature_stride,
            convs=head_convs,
            channels=head_channels,
            fc_hidden=fc_hidden,
            dropout=dropout,
        ),
        loss=YoloLossConfig(lambda_coord=lambda_coord, lambda_noobj=lambda_noobj),
        detection=DetectionSettings(
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            min_size=min_size,
            topk_candidates=TOPK_CANDIDATES,
        ),
        anchors=anchors,
        multiscale=multiscale,
        multiscale_every=multiscale_every,
    )

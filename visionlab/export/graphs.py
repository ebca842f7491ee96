"""The graphs that go into an export: a model with its pre-processing (resize to the model's
input size; the models normalise inside) and post-processing (softmax, argmax, box decoding,
NMS), written with shapes an exporter can follow.

The eager post-processor (:func:`visionlab.models.postprocess.postprocess_detections`) takes
Python branches on how many candidates there are and loops over the images of a batch;
``torch.export`` refuses a branch on a data-dependent size. :func:`select_detections` gives
the same detections without one: every (box, class) pair of the whole batch is scored,
thresholded by a mask, and one NMS runs over all of them with the image and class folded
into the coordinates (torchvision's ``batched_nms`` trick).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms as torchvision_nms

from visionlab.models.postprocess import DetectionSettings


@torch.library.custom_op("visionlab::nms", mutates_args=())
def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """torchvision's ``nms`` as an op whose traced result may hold any number of boxes:
    torchvision's own fake kernel declares at least two kept boxes (``torch.export`` then
    asserts it at run time, failing images with one detection or none). ONNX writes it as
    ``NonMaxSuppression``; loading a ``.pt2`` that uses it needs this module imported."""
    return torchvision_nms(boxes, scores, iou_threshold)


@nms.register_fake
def _nms_fake(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty(kept, dtype=torch.long)


def resize_input(images: Tensor, size: int | None) -> Tensor:
    """``images [B, 3, H, W]`` resized to ``size x size`` as the eval transform resizes
    (bilinear, antialiased; the identity when the image has that size already)."""
    if size is None:
        return images
    return F.interpolate(
        images, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )


def scalar_like(like: Tensor, value: object) -> Tensor:
    """A 0-d tensor of ``value`` (a Python or symbolic number), on ``like``'s device."""
    return like.new_ones(()) * value


def clip_to(boxes: Tensor, height: object, width: object) -> Tensor:
    """``Tensor[..., 4]`` xyxy clipped to ``[0, W] x [0, H]`` (``H``, ``W`` may be symbolic)."""
    w, h = scalar_like(boxes, width), scalar_like(boxes, height)
    bounds = torch.stack([w, h, w, h])
    return torch.minimum(boxes.clamp(min=0), bounds)


def select_detections(
    scores: Tensor, boxes: Tensor, image_size: tuple[object, object], settings: DetectionSettings
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`~visionlab.models.postprocess.postprocess_detections` for a whole batch.

    Args:
        scores: ``Tensor[B, N, K]`` foreground class scores of ``N`` rows per image.
        boxes: ``Tensor[B, N, 4]`` (one box per row) or ``Tensor[B, N, K, 4]`` (per class),
            xyxy in the images' pixels.
        image_size: ``(H, W)`` of every image of the batch, to clip to.

    Returns:
        ``boxes [M, 4]``, ``scores [M]``, ``labels [M]`` (1..K) and ``batch_index [M]``: the
        detections of all images, each image's in the order the eager post-processor gives
        (decreasing score), at most ``detections_per_img`` per image.
    """
    n, rows, k = scores.shape
    flat = scores.reshape(n, rows * k)
    valid = flat >= settings.score_thresh
    if 0 < settings.topk_candidates < rows * k:  # the best candidates of each image only
        masked = flat.masked_fill(~valid, float("-inf"))
        kth = masked.topk(settings.topk_candidates, dim=1).values[:, -1:]
        valid = valid & (flat >= kth)
    if boxes.dim() == 3:
        boxes = boxes[:, :, None, :].expand(n, rows, k, 4)
    height, width = image_size
    pair_boxes = clip_to(boxes.reshape(n, rows * k, 4), height, width)
    sides = pair_boxes[..., 2:] - pair_boxes[..., :2]
    valid = valid & (sides >= settings.min_size).all(dim=-1)
    index = valid.reshape(-1).nonzero().squeeze(1)  # over the batch's (image, row, class)
    kept_boxes = pair_boxes.reshape(-1, 4).index_select(0, index)
    kept_scores = flat.reshape(-1).index_select(0, index)
    image = torch.div(index, rows * k, rounding_mode="floor")
    labels = index % k + 1
    # one NMS for every (image, class): groups moved apart by more than any box's extent
    extent = scalar_like(kept_boxes, torch.sym_max(height, width)) + 1
    offsets = (image * k + labels - 1).to(kept_boxes.dtype) * extent
    keep = nms(kept_boxes + offsets[:, None], kept_scores, settings.nms_thresh)
    kept_image = image.index_select(0, keep)
    # rank of each kept detection within its image (NMS returns them by decreasing score)
    same = kept_image[:, None] == torch.arange(n, device=index.device)[None]
    rank = same.long().cumsum(0).gather(1, kept_image[:, None]).squeeze(1) - 1
    keep = keep[rank < settings.detections_per_img]
    return (
        kept_boxes.index_select(0, keep),
        kept_scores.index_select(0, keep),
        labels.index_select(0, keep),
        image.index_select(0, keep),
    )


class ClassifierGraph(nn.Module):
    """Images ``[B, 3, H, W]`` RGB in [0, 1] -> ``logits [B, C]``, ``scores [B, C]`` (softmax,
    decreasing) and ``labels [B, C]`` (0-based class of each score)."""

    outputs = ("logits", "scores", "labels")

    def __init__(self, model: nn.Module, image_size: int | None) -> None:
        super().__init__()
        self.model, self.image_size = model, image_size

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits = self.model(resize_input(images, self.image_size)).float()
        scores, labels = logits.softmax(dim=1).sort(dim=1, descending=True)
        return logits, scores, labels


class SegmentationGraph(nn.Module):
    """Images ``[B, 3, H, W]`` in [0, 1] -> ``logits [B, K + 1, s, s]`` at the model's input
    size ``s``, and ``semantic [B, H, W]`` (int64, 0 = background) and ``scores [B, H, W]``
    in the input's pixels (mapped back as ``visionlab.predict`` maps them: nearest for the
    classes, bilinear for the scores)."""

    outputs = ("logits", "semantic", "scores")

    def __init__(self, model: nn.Module, image_size: int | None) -> None:
        super().__init__()
        self.model, self.image_size = model, image_size

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        height, width = images.shape[-2:]
        x = resize_input(images, self.image_size)
        logits = self.model(x)
        if isinstance(logits, dict):
            logits = logits["out"]
        logits = logits.float()
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        # the largest softmax probability without the whole softmax (the largest logit's
        # exp over the sum of exps): onnxruntime's Softmax over the class axis cost half of
        # the graph's time (benchmarks/predict.md)
        best, semantic = logits.max(dim=1, keepdim=True)
        scores = (logits - best).exp().sum(dim=1, keepdim=True).reciprocal()
        semantic = F.interpolate(semantic.float(), size=(height, width), mode="nearest")
        scores = F.interpolate(scores, size=(height, width), mode="bilinear")
        return logits, semantic[:, 0].long(), scores[:, 0]


class YoloGraph(nn.Module):
    """Images ``[B, 3, H, W]`` in [0, 1] -> the YOLO model's detections, as
    :meth:`visionlab.models.yolo.YOLO.detect` makes them (resized to its input size inside,
    boxes in the input's pixels): ``boxes [M, 4]``, ``scores [M]``, ``labels [M]`` (1..C),
    ``batch_index [M]`` (the image of each detection)."""

    outputs = ("boxes", "scores", "labels", "batch_index")

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        model, size = self.model, self.model.input_size
        n, (height, width) = images.shape[0], images.shape[-2:]
        grid = model.grid(resize_input(images, size))
        scores = model.class_scores(grid)  # [n, S * S * B, C]
        boxes = model.decode(grid["params"], size).reshape(n, scores.shape[1], 4)
        sx, sy = scalar_like(boxes, width) / size, scalar_like(boxes, height) / size
        boxes = boxes * torch.stack([sx, sy, sx, sy])  # network input -> the images' pixels
        return select_detections(scores, boxes, (height, width), model.detection_settings)

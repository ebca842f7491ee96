"""Joint image / box / mask transforms: boxes, instance masks and semantic masks follow every
resize, flip, crop and translation applied to the image.

Built on ``torchvision.transforms.v2`` and ``tv_tensors``: the plain target dicts of the data
contract (docs/interfaces.md) are wrapped into ``tv_tensors`` internally and unwrapped to plain
tensors on return, so the rest of the library never sees a ``tv_tensor``.

The output canvas is fixed per call: ``(size, size)`` (or the aspect-preserving size, see
``keep_ratio``) when ``size`` is given, else the input's own size. Scale jitter and translation
move the content on that canvas (YOLO / SSD style), so an image's size never depends on the
random draw and classification / segmentation batches always stack.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from PIL import Image as PILImage
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import RandomResizedCrop as _RRCParams
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from visionlab.constants import BOX_TASKS, IGNORE_INDEX, TASKS
from visionlab.errors import DataError
from visionlab.ops.boxes import clip_boxes_to_image

__all__ = [
    "PAD_VALUE",
    "PER_INSTANCE_KEYS",
    "JointTransform",
    "SemanticMask",
    "build_transforms",
    "drop_degenerate",
    "flip_predicate_pairs",
]

# Grey used for image area that comes from outside the source image (YOLO's letterbox 114).
PAD_VALUE = 114.0 / 255.0
# Target fields with one row per box: filtered together when boxes are dropped.
PER_INSTANCE_KEYS = ("boxes", "labels", "masks", "iscrowd", "difficult", "area", "scores")

Target = dict[str, Any]
Transform = Callable[[Tensor, Target], tuple[Tensor, Target]]


class SemanticMask(tv_tensors.Mask):
    """A ``[H, W]`` class-index mask. Geometry follows :class:`tv_tensors.Mask` (nearest
    interpolation); its own type lets padded area be filled with ``IGNORE_INDEX`` while instance
    masks are filled with 0."""


_FILL: dict[type, float] = {
    tv_tensors.Image: PAD_VALUE,
    tv_tensors.Mask: 0,
    SemanticMask: IGNORE_INDEX,
}


def drop_degenerate(
    target: Mapping[str, Any],
    min_size: float = 1.0,
    image_size: tuple[int, int] | None = None,
) -> Target:
    """Drop boxes narrower or shorter than ``min_size`` pixels, and everything tied to them.

    Args:
        target: a target dict; ``boxes`` is ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)``.
        min_size: boxes with width or height below this (in pixels) are removed.
        image_size: ``(H, W)``; when given, boxes are first clipped to the image, so a box
            lying fully outside it has zero size and is removed.

    Returns:
        A new dict (the input is not modified): the fields of ``PER_INSTANCE_KEYS`` keep the
        surviving rows; ``relations [R, 3]`` (subject, predicate, object) keeps the relations
        whose subject and object both survive, with their indices renumbered.
    """
    out = dict(target)
    boxes = target.get("boxes")
    if boxes is None:
        return out
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    if image_size is not None:
        boxes = clip_boxes_to_image(boxes, image_size)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    out["boxes"] = boxes[keep]
    n = keep.numel()
    for key in PER_INSTANCE_KEYS:
        if key != "boxes" and isinstance(target.get(key), Tensor) and target[key].ndim >= 1:
            if target[key].shape[0] != n:
                raise ValueError(f"target[{key!r}] has {target[key].shape[0]} rows, boxes have {n}")
            out[key] = target[key][keep]
    relations = target.get("relations")
    if isinstance(relations, Tensor) and relations.numel() > 0:
        relations = relations.reshape(-1, 3)
        new_index = torch.cumsum(keep.long(), 0) - 1  # old box index -> new box index
        subj, obj = relations[:, 0], relations[:, 2]
        valid = (subj >= 0) & (subj < n) & (obj >= 0) & (obj < n)
        rel_keep = valid.clone()
        rel_keep[valid] = keep[subj[valid]] & keep[obj[valid]]
        kept = relations[rel_keep]
        out["relations"] = torch.stack(
            [new_index[kept[:, 0]], kept[:, 1], new_index[kept[:, 2]]], dim=1
        ).to(relations.dtype)
    return out


def flip_predicate_pairs(predicates: Sequence[str]) -> dict[int, int]:
    """Predicate indices that swap under a horizontal flip ("left of" <-> "right of").

    Args:
        predicates: predicate names, index = predicate id.

    Returns:
        ``{i: j}`` for every name whose mirror (``left`` and ``right`` exchanged, whole words,
        any case) is also a predicate; both directions are present.
    """
    index = {name.lower(): i for i, name in enumerate(predicates)}
    pairs: dict[int, int] = {}
    swap = {"left": "right", "right": "left"}
    for i, name in enumerate(predicates):
        mirrored = re.sub(r"\b(left|right)\b", lambda m: swap[m.group(1)], name.lower())
        if mirrored != name.lower() and mirrored in index:
            pairs[i] = index[mirrored]
    return pairs


# ---------------------------------------------------------------------------- wrapping


def _where(target: Mapping[str, Any]) -> str:
    return str(target.get("file_name", target.get("image_id", "<sample>")))


def _as_image(image: Any, target: Mapping[str, Any]) -> Tensor:
    if isinstance(image, PILImage.Image):
        return F.to_dtype(F.pil_to_tensor(image.convert("RGB")), torch.float32, scale=True)
    if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise DataError(_where(target), f"image must be a [3, H, W] tensor, got {shape}")
    if image.dtype == torch.uint8:
        return F.to_dtype(image, torch.float32, scale=True)
    return image.float()


def _wrap(image: Tensor, target: Mapping[str, Any], task: str) -> dict[str, Any]:
    """Plain (image, target) -> one dict of tv_tensors the v2 functionals dispatch on."""
    if not isinstance(target, Mapping):
        raise DataError("<sample>", f"target must be a dict, got {type(target).__name__}")
    h, w = image.shape[-2:]
    sample: dict[str, Any] = dict(target)
    sample["image"] = tv_tensors.Image(image)
    where = _where(target)
    if task in BOX_TASKS or "boxes" in target:
        boxes = torch.as_tensor(target.get("boxes", torch.zeros(0, 4)), dtype=torch.float32)
        if boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise DataError(where, f"boxes must be [N, 4], got {tuple(boxes.shape)}", field="boxes")
        sample["boxes"] = tv_tensors.BoundingBoxes(
            boxes, format="XYXY", canvas_size=(h, w), clamping_mode="hard"
        )
    if "masks" in target:
        masks = torch.as_tensor(target["masks"])
        if masks.ndim != 3 or tuple(masks.shape[-2:]) != (h, w):
            raise DataError(
                where, f"masks {tuple(masks.shape)} do not match image {(h, w)}", field="masks"
            )
        sample["masks"] = tv_tensors.Mask(masks.to(torch.uint8))
    if "semantic" in target:
        semantic = torch.as_tensor(target["semantic"])
        if tuple(semantic.shape) != (h, w):
            raise DataError(
                where, f"semantic {tuple(semantic.shape)} does not match image {(h, w)}", "semantic"
            )
        if semantic.numel() and (semantic.min() < 0 or semantic.max() > IGNORE_INDEX):
            raise DataError(
                where, f"semantic values must lie in 0..{IGNORE_INDEX}", field="semantic"
            )
        sample["semantic"] = SemanticMask(semantic.to(torch.uint8))
    return sample


def _unwrap(sample: dict[str, Any]) -> tuple[Tensor, Target]:
    image = sample.pop("image").as_subclass(Tensor).clamp(0.0, 1.0).contiguous()
    target = {k: v.as_subclass(Tensor) if isinstance(v, Tensor) else v for k, v in sample.items()}
    if "boxes" in target:
        target["boxes"] = target["boxes"].to(torch.float32).reshape(-1, 4)
    if "masks" in target:
        target["masks"] = target["masks"].bool()
    if "semantic" in target:
        target["semantic"] = target["semantic"].long()
    return image, target


def _size_of(sample: dict[str, Any]) -> tuple[int, int]:
    h, w = sample["image"].shape[-2:]
    return int(h), int(w)


def _map(sample: dict[str, Any], fn: Callable[[Any], Any]) -> dict[str, Any]:
    """Apply ``fn`` to every geometric tv_tensor of the sample (image, boxes, masks)."""
    return {
        k: fn(v)
        if isinstance(v, (tv_tensors.Image, tv_tensors.BoundingBoxes, tv_tensors.Mask))
        else v
        for k, v in sample.items()
    }


def _resize(sample: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    """Resize to ``(H, W)``: bilinear (antialiased) image, nearest-exact masks, scaled boxes."""
    if _size_of(sample) == size:
        return sample

    def fn(x: Any) -> Any:
        if isinstance(x, tv_tensors.Mask):
            if x.shape[0] == 0 and x.ndim == 3:  # interpolate cannot take an empty batch
                return tv_tensors.wrap(x.new_zeros(0, *size), like=x)
            return F.resize(x, list(size), interpolation=InterpolationMode.NEAREST_EXACT)
        return F.resize(x, list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)

    return _map(sample, fn)


# ---------------------------------------------------------------------------- steps


class _RandomHorizontalFlip:
    def __init__(self, p: float, predicate_flip: Mapping[int, int] | None) -> None:
        self.p = p
        self.predicate_flip = dict(predicate_flip or {})

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        if self.p <= 0 or torch.rand(()) >= self.p:
            return sample
        sample = _map(sample, F.horizontal_flip)
        rel = sample.get("relations")
        if self.predicate_flip and isinstance(rel, Tensor) and rel.numel():
            n = max(*self.predicate_flip, *self.predicate_flip.values(), int(rel[:, 1].max())) + 1
            lut = torch.arange(n, dtype=rel.dtype)
            lut[list(self.predicate_flip)] = torch.tensor(list(self.predicate_flip.values()))
            sample["relations"] = torch.stack([rel[:, 0], lut[rel[:, 1]], rel[:, 2]], dim=1)
        return sample


class _IoUCrop(v2.RandomIoUCrop):
    """SSD's random IoU crop; leaves an image without boxes as it is (torchvision would loop
    until it drew the "keep" option). Boxes outside the crop are zeroed, then dropped."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        boxes = [x for x in flat_inputs if isinstance(x, tv_tensors.BoundingBoxes)]
        if not boxes or boxes[0].shape[0] == 0:
            return {}
        return super().make_params(flat_inputs)


class _RandomResizedCrop:
    def __init__(self, scale: tuple[float, float] = (0.35, 1.0)) -> None:
        self.scale = scale
        self.ratio = (3 / 4, 4 / 3)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        top, left, h, w = _RRCParams.get_params(sample["image"], self.scale, self.ratio)
        return _map(sample, lambda x: F.crop(x, top, left, h, w))


def _pad_bottom_right(sample: dict[str, Any], below: int, right: int) -> dict[str, Any]:
    """Pad ``below`` rows and ``right`` columns with the fill values (grey image, 0 instance
    masks, 255 semantic labels); boxes keep their coordinates."""
    if not below and not right:
        return sample
    pad = [0, 0, right, below]
    sample = {
        k: F.pad(v, pad, fill=_FILL[type(v)]) if type(v) in _FILL else v for k, v in sample.items()
    }
    if "boxes" in sample:
        sample["boxes"] = F.pad(sample["boxes"], pad)
    return sample


class _RandomCrop:
    """A random ``size`` x ``size`` window of the resized image (torchvision's segmentation
    reference ``RandomCrop(crop_size)``); a canvas smaller than that is first padded bottom /
    right with the fill values (grey image, 255 semantic labels, empty instance masks)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        h, w = _size_of(sample)
        sample = _pad_bottom_right(sample, max(0, self.size - h), max(0, self.size - w))
        h, w = _size_of(sample)
        top = int(torch.randint(h - self.size + 1, ()))
        left = int(torch.randint(w - self.size + 1, ()))
        return _map(sample, lambda x: F.crop(x, top, left, self.size, self.size))


class _ShortSideCenterCrop:
    """Shorter side to ``size``, then the centre ``size`` x ``size``: ImageNet's eval framing."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        h, w = _size_of(sample)
        r = self.size / min(h, w)
        sample = _resize(sample, (max(self.size, round(h * r)), max(self.size, round(w * r))))
        return _map(sample, lambda x: F.center_crop(x, [self.size, self.size]))


class _Canvas:
    """Output size for an input of size (h, w): square ``size``, the longer side at ``size``
    (``keep_ratio``), or the input's own size (``size`` None)."""

    def __init__(self, size: int | None, keep_ratio: bool) -> None:
        self.size, self.keep_ratio = size, keep_ratio

    def __call__(self, h: int, w: int) -> tuple[int, int]:
        if self.size is None:
            return h, w
        if self.keep_ratio:
            r = self.size / max(h, w)
            return max(1, round(h * r)), max(1, round(w * r))
        return self.size, self.size


class JointTransform:
    """``(image, target) -> (image, target)``: the callable that :func:`build_transforms`
    returns. ``canvas(h, w)`` gives the output size for an input of size ``(h, w)``."""

    def __init__(
        self,
        task: str,
        *,
        canvas: Callable[[int, int], tuple[int, int]],
        crop: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        letterbox: bool = False,
        steps: Sequence[Callable[[dict[str, Any]], dict[str, Any]]] = (),
        min_box_size: float = 1.0,
        description: str = "",
    ) -> None:
        self.task = task
        self.canvas = canvas
        self.crop = crop
        self.letterbox = letterbox
        self.steps = list(steps)
        self.min_box_size = min_box_size
        self.description = description

    def __repr__(self) -> str:
        return f"JointTransform({self.task}: {self.description})"

    def __call__(self, image: Tensor | PILImage.Image, target: Target) -> tuple[Tensor, Target]:
        image = _as_image(image, target)
        sample = _wrap(image, target, self.task)
        out_h, out_w = self.canvas(*_size_of(sample))
        if self.crop is not None:
            sample = self.crop(sample)
        if self.letterbox:  # keep aspect ratio inside the canvas, pad bottom / right
            h, w = _size_of(sample)
            r = min(out_h / h, out_w / w)
            sample = _resize(sample, (max(1, round(h * r)), max(1, round(w * r))))
            h, w = _size_of(sample)
            sample = _pad_bottom_right(sample, out_h - h, out_w - w)
        else:
            sample = _resize(sample, (out_h, out_w))
        for step in self.steps:
            sample = step(sample)
        image, target = _unwrap(sample)
        if "boxes" in target:
            target = drop_degenerate(target, self.min_box_size, image_size=tuple(image.shape[-2:]))
        return image, target


def build_transforms(
    task: str,
    train: bool,
    size: int | None = None,
    *,
    hflip: float = 0.5,
    scale_jitter: tuple[float, float] | None = (0.8, 1.2),
    crop: bool = False,
    crop_size: int | None = None,
    color_jitter: float = 0.0,
    hsv_jitter: float = 0.0,
    translate: float = 0.0,
    keep_ratio: bool = False,
    predicate_flip: Mapping[int, int] | None = None,
    min_box_size: float = 1.0,
) -> Transform:
    """The joint transform of one task, for training or evaluation.

    Output canvas: ``(size, size)`` when ``keep_ratio`` is False (the default: every image of
    a dataset gets the same size). With ``keep_ratio=True``: detection / instance resize the
    longer side to ``size`` (no padding; sizes may differ, detection batches are lists);
    segmentation resizes the longer side to ``size`` and pads bottom / right to
    ``(size, size)`` with grey image and 255 (ignore) labels; classification resizes the
    shorter side and centre-crops to ``(size, size)`` (training uses a random resized crop).
    ``size=None``: the input's own size (evaluation is then the identity).

    Training adds, in this order: a random crop when ``crop`` (detection / instance: SSD's
    random IoU crop; classification / segmentation: random resized crop, area 35-100 %), resized
    back to the canvas; a random ``crop_size`` x ``crop_size`` window of the canvas when
    ``crop_size`` is set (torchvision's segmentation reference: train on crops of the resized
    image, evaluate on the whole of it; boxes cut by the window are clipped to it and dropped
    when under ``min_box_size``); a horizontal flip with probability ``hflip``; a random zoom by
    ``s`` in ``scale_jitter`` and a shift up to ``translate`` of the width / height on the fixed
    canvas (YOLO v1 Sec. 2.2: "random scaling and translations of up to 20 %", i.e.
    ``scale_jitter=(0.8, 1.2), translate=0.2``), with grey image / 0 instance mask / 255
    semantic fill for uncovered area; and exposure and saturation factors drawn from ``[1 -
    color_jitter, 1 + color_jitter]`` (YOLO's "up to a factor of 1.5" is 0.5). ``hsv_jitter`` is
    YOLO's own version, in HSV: V and S times a factor up to ``1 + hsv_jitter`` or its inverse,
    hue kept (:mod:`visionlab.data.yolo_augment`; 0.5). Evaluation only resizes; it is
    deterministic.

    Boxes whose width or height ends below ``min_box_size`` px, or that leave the image, are
    dropped with their labels, masks, iscrowd, difficult and relations (see
    :func:`drop_degenerate`). Relation predicates listed in ``predicate_flip`` (e.g. from
    :func:`flip_predicate_pairs`) are swapped when the image is flipped.

    Args:
        task: one of :data:`visionlab.constants.TASKS`.
        train: training (random) or evaluation (deterministic) pipeline.
        size: output side length in pixels, or None to keep the input size.

    Returns:
        A callable ``(image float32 [3, H, W] in [0, 1] (or PIL), target dict) ->
        (image float32 [3, H', W'], target dict)`` with the contract's plain tensors:
        ``boxes [N, 4] float32 xyxy``, ``masks [N, H', W'] bool``, ``semantic [H', W'] int64``.
        Other fields (``image_id``, ``file_name``, ``orig_size``: the original size) are kept.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if size is not None and (not isinstance(size, int) or size < 1):
        raise ValueError(f"size must be a positive int or None, got {size!r}")
    if scale_jitter is not None and not 0 < scale_jitter[0] <= scale_jitter[1]:
        raise ValueError(f"scale_jitter must be (low, high) with 0 < low <= high: {scale_jitter}")
    if not 0 <= translate < 1 or not 0 <= hflip <= 1 or not 0 <= color_jitter < 1:
        raise ValueError("need 0 <= translate < 1, 0 <= hflip <= 1, 0 <= color_jitter < 1")
    if crop_size is not None and (
        isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size < 1
    ):
        raise ValueError(f"crop_size must be a positive int or None, got {crop_size!r}")
    is_boxes = task in BOX_TASKS

    letterbox = keep_ratio and task == "segmentation" and size is not None
    parts = [f"size={size}", f"keep_ratio={keep_ratio}"]
    crop_step: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    if keep_ratio and task == "classification" and size is not None:
        crop_step = _ShortSideCenterCrop(size)

    steps: list[Callable[[dict[str, Any]], dict[str, Any]]] = []
    if train:
        if crop:
            crop_step = _IoUCrop() if is_boxes else _RandomResizedCrop()
            parts.append("iou_crop" if is_boxes else "random_resized_crop")
        if crop_size is not None:
            steps.append(_RandomCrop(crop_size))
            parts.append(f"crop_size={crop_size}")
        if hflip > 0:
            steps.append(_RandomHorizontalFlip(hflip, predicate_flip))
            parts.append(f"hflip={hflip}")
        if (scale_jitter is not None and tuple(scale_jitter) != (1.0, 1.0)) or translate > 0:
            steps.append(
                v2.RandomAffine(
                    degrees=0.0,
                    translate=(translate, translate) if translate > 0 else None,
                    scale=tuple(scale_jitter) if scale_jitter is not None else None,
                    interpolation=InterpolationMode.BILINEAR,
                    fill=dict(_FILL),
                )
            )
            parts.append(f"scale_jitter={scale_jitter} translate={translate}")
        if color_jitter > 0:
            steps.append(v2.ColorJitter(brightness=color_jitter, saturation=color_jitter))
            parts.append(f"color_jitter={color_jitter}")
        if hsv_jitter > 0:
            from visionlab.data.yolo_augment import RandomHSV

            steps.append(RandomHSV(hsv_jitter))
            parts.append(f"hsv_jitter={hsv_jitter}")
    return JointTransform(
        task,
        canvas=_Canvas(size, keep_ratio and is_boxes),
        crop=crop_step,
        letterbox=letterbox,
        steps=steps,
        min_box_size=min_box_size,
        description=("train " if train else "eval ") + " ".join(parts),
    )

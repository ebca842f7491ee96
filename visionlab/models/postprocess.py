"""The one detection post-processor of every detector (R-CNN sec. 2.2, Fast R-CNN sec. 3,
YOLO sec. 2.3): score threshold, clipping, small-box removal, class-wise NMS, the best
``detections_per_img``; its settings type, with torchvision's spellings of the knobs; and the
upgrade of old checkpoints' model arguments (hence ``models/``, not ``ops/``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from visionlab.errors import ConfigError
from visionlab.ops import batched_nms, clip_boxes_to_image

__all__ = [
    "DETECTION_KNOBS",
    "RENAMED_KNOBS",
    "BoxDecoder",
    "DetectionSettings",
    "postprocess_detections",
    "reject_nested_knobs",
    "upgrade_model_args",
]

# The knobs' spellings before the one post-processor -> torchvision's, which they use now.
RENAMED_KNOBS: dict[str, str] = {
    "score_threshold": "score_thresh",
    "nms_threshold": "nms_thresh",
    "detections_per_image": "detections_per_img",
}
# The post-processing knobs every detector builder takes as model arguments.
DETECTION_KNOBS: tuple[str, ...] = ("score_thresh", "nms_thresh", "detections_per_img", "min_size")
# Where checkpoints written before the one post-processor kept those knobs: a settings dict
# of the model arguments (YOLO already took them as model arguments, spelled as now).
_OLD_KNOB_HOMES: dict[str, str] = {
    "rcnn": "test",
    "sppnet": "test",
    "fast_rcnn": "box_head",
    "faster_rcnn": "box_head",
}
# Settings renamed in place: model -> {settings argument: {old key: new key}}.
_RENAMED_IN_PLACE: dict[str, dict[str, dict[str, str]]] = {
    "faster_rcnn": {"rpn": {"nms_threshold": "nms_thresh"}},
}

# ``decode(rows Tensor[M] int64, labels Tensor[M] int64 in 1..K) -> boxes Tensor[M, 4]``.
BoxDecoder = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class DetectionSettings:
    """Test-time settings of :func:`postprocess_detections` (one type for every detector).

    Attributes:
        score_thresh: keep (box, class) pairs with ``score >= score_thresh``.
        nms_thresh: class-wise NMS drops a box whose IoU with a higher-scored box of its
            class is ``> nms_thresh``.
        detections_per_img: keep at most this many detections per image, best first.
        min_size: drop boxes narrower or lower than this (pixels, after clipping).
        topk_candidates: keep at most this many best candidates before NMS (0: all); bounds
            the cost of NMS when a low threshold lets many pairs through.
    """

    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    min_size: float = 1e-2
    topk_candidates: int = 0

    def __post_init__(self) -> None:
        for name in ("score_thresh", "nms_thresh", "min_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"{name} must be finite, got {value!r}")
        if not 0 <= self.nms_thresh <= 1:
            raise ConfigError(f"nms_thresh must lie in [0, 1], got {self.nms_thresh}")
        if self.min_size < 0:
            raise ConfigError(f"min_size must be >= 0 pixels, got {self.min_size}")
        for name in ("detections_per_img", "topk_candidates"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")


def postprocess_detections(
    scores: Tensor,
    boxes: Tensor | BoxDecoder,
    image_size: tuple[int, int] | None,
    settings: DetectionSettings,
    *,
    return_indices: bool = False,
) -> dict[str, Tensor]:
    """Per-class scores and boxes of one image -> its detections.

    Candidates are the (row, class) pairs with ``score >= score_thresh`` (the best
    ``topk_candidates`` when > 0); only their boxes are gathered, or decoded when ``boxes``
    is a decoder; then clip, drop sides below ``min_size``, class-wise NMS, keep the best
    ``detections_per_img``.

    Args:
        scores: ``Tensor[N, K]`` scores of the foreground classes (class ``k`` in column
            ``k - 1``; no background column) of the image's ``N`` rows (RoIs, grid boxes).
        boxes: ``Tensor[N, K, 4]`` per-class boxes, ``Tensor[N, 4]`` one box per row for
            every class, or a :data:`BoxDecoder` ``decode(rows, labels) -> Tensor[M, 4]``
            called once with the candidates; xyxy pixels of the image.
        image_size: ``(H, W)`` to clip to; None when the boxes lie inside the image already.
        settings: the thresholds and counts.
        return_indices: also return ``indices``, the row of each detection.

    Returns:
        ``{"boxes": Tensor[M, 4], "scores": Tensor[M] (decreasing), "labels": Tensor[M]
        int64 in 1..K}`` (+ ``"indices": Tensor[M] int64``), ``M <= detections_per_img``.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be Tensor[N, K], got shape {tuple(scores.shape)}")
    if isinstance(boxes, Tensor) and (
        boxes.shape[0] != scores.shape[0]
        or boxes.shape[-1] != 4
        or boxes.dim() not in (2, 3)
        or (boxes.dim() == 3 and boxes.shape[1] != scores.shape[1])
    ):
        raise ValueError(
            f"boxes must be Tensor[N, K, 4] or Tensor[N, 4] for scores {tuple(scores.shape)}, "
            f"got {tuple(boxes.shape)}"
        )
    s = settings
    n_classes = scores.shape[1]
    # One flat index per (row, class) pair, row-major: 1-D gathers (index_select) are the
    # fast path on CPU, where two index tensors take the general indexing kernel.
    flat_scores = scores.reshape(-1)
    pairs = torch.nonzero(flat_scores >= s.score_thresh).squeeze(1)
    kept_scores = flat_scores.index_select(0, pairs)
    if 0 < s.topk_candidates < len(kept_scores):
        best = kept_scores.topk(s.topk_candidates).indices
        pairs, kept_scores = pairs.index_select(0, best), kept_scores.index_select(0, best)
    rows = torch.div(pairs, n_classes, rounding_mode="floor")
    labels = pairs - rows * n_classes + 1
    if isinstance(boxes, Tensor):
        per_class = boxes.dim() == 3
        kept_boxes = boxes.reshape(-1, 4).index_select(0, pairs if per_class else rows)
    elif len(rows):
        kept_boxes = boxes(rows, labels)
    else:
        kept_boxes = scores.new_zeros((0, 4))
    if image_size is not None:
        kept_boxes = clip_boxes_to_image(kept_boxes, image_size)
    wh = kept_boxes[:, 2:] - kept_boxes[:, :2]
    if len(wh) and not float(wh.detach().min()) >= s.min_size:  # usually none is small
        big = (wh >= s.min_size).all(dim=1).nonzero().squeeze(1)
        kept_boxes, kept_scores = kept_boxes.index_select(0, big), kept_scores.index_select(0, big)
        labels, rows = labels.index_select(0, big), rows.index_select(0, big)
    keep = batched_nms(kept_boxes, kept_scores, labels, s.nms_thresh)[: s.detections_per_img]
    out = {
        "boxes": kept_boxes.index_select(0, keep),
        "scores": kept_scores.index_select(0, keep),
        "labels": labels.index_select(0, keep),
    }
    if return_indices:
        out["indices"] = rows.index_select(0, keep)
    return out


# --------------------------------------------------------------------------- model arguments


def reject_nested_knobs(settings: Mapping[str, Any] | None, where: str) -> None:
    """Raise :class:`ConfigError` when a settings dict of the model arguments (``where``,
    e.g. ``"rcnn test"``) holds a post-processing knob, under its old spelling or the new
    one: they are model arguments of their own now; the message names the new one."""
    for key in settings or {}:
        new = RENAMED_KNOBS.get(key, key if key in DETECTION_KNOBS else None)
        if new is None:
            continue
        renamed = f"{key!r} is renamed {new!r}; " if key != new else ""
        raise ConfigError(
            f"{where}: unknown setting {key!r} ({renamed}did you mean the model argument "
            f"{new!r}?); the detection knobs {list(DETECTION_KNOBS)} are model arguments"
        )


def upgrade_model_args(model_name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """The model arguments of a checkpoint written before the one post-processor, as the
    builder of ``model_name`` takes them now; other arguments pass unchanged.

    The knobs R-CNN / SPPNet kept in ``test`` and Fast / Faster R-CNN in ``box_head``, and
    old spellings at the top level, become the model arguments of :data:`RENAMED_KNOBS`;
    ``rpn.nms_threshold`` becomes ``rpn.nms_thresh``; a builder's ``renamed_args`` take
    their new names. Current arguments come back equal; ``args`` is not modified.
    """
    from visionlab.models.registry import is_registered, renamed_args

    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in args.items()}
    if is_registered(model_name):  # arguments renamed since (e.g. `width`)
        for old, new in renamed_args(model_name).items():
            if old in out:
                out.setdefault(new, out.pop(old))
    nested = out.get(_OLD_KNOB_HOMES.get(model_name, ""))
    homes = [nested, out] if isinstance(nested, dict) else [out]  # the nested value wins
    for old, new in RENAMED_KNOBS.items():
        values = [home.pop(old) for home in homes if old in home]
        if values:
            out.setdefault(new, values[0])
    for arg, renames in _RENAMED_IN_PLACE.get(model_name, {}).items():
        settings = out.get(arg)
        if isinstance(settings, dict):
            for old, new in renames.items():
                if old in settings:
                    settings.setdefault(new, settings.pop(old))
    return out

"""The parsed form every reader produces: one :class:`ImageRecord` per image (no pixels),
built through :class:`ObjectsBuilder`, which applies the box rule; and the masks of a
record (COCO polygons/RLE or VOC label PNGs) decoded on demand.

Box rule, the same for every format: NaN/infinite coordinates and boxes with ``x2 < x1`` or
``y2 < y1`` (negative COCO width/height) are errors; a box reaching more than 1 px outside the
image is clipped to it with a logged warning (up to 1 px is format rounding, clipped quietly);
a box with zero width or height is skipped with a warning; a box entirely outside the image
is an error.

Relationship rule, the same for every reader (:meth:`ObjectsBuilder.relations`): subject and
object must be two different objects of the image and the predicate one the dataset defines;
anything else is an error naming the file and the relationship.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from visionlab.constants import IGNORE_INDEX
from visionlab.data.imageio import load_label_png
from visionlab.data.problems import Problems
from visionlab.errors import DataError

# Up to this many pixels outside the image is rounding (VOC's 1-based pixels, float
# exports): clipped without a warning.
_CLIP_TOLERANCE = 1.0


@dataclass
class ImageRecord:
    """One image and its objects as parsed from the annotation files (no pixels decoded).

    ``boxes`` is ``[N, 4]`` float32 in ``(x1, y1, x2, y2)`` absolute pixels; ``labels`` are
    1..C; ``segments[j]`` is object j's COCO-style segmentation in absolute pixels (a list of
    polygons or an RLE dict) or None; ``relations`` is ``[R, 3]`` (subject index, predicate,
    object index). VOC keeps its label PNGs instead (``instance_png``, ``class_png``).
    Classification records have no objects and a ``category`` in 0..C-1.
    """

    image_id: int
    file_name: str
    path: Path
    height: int
    width: int
    source: str
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    iscrowd: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    difficult: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    object_refs: list[str] = field(default_factory=list)
    segments: list[Any] = field(default_factory=list)
    relations: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    instance_png: Path | None = None
    class_png: Path | None = None
    category: int = -1

    @property
    def ref(self) -> str:
        """Names the record in messages: ``"image_id=3 in instances_train.json"``."""
        return f"image_id={self.image_id} in {Path(self.source).name}"

    @property
    def has_masks(self) -> bool:
        if self.instance_png is not None:
            return True
        return bool(self.segments) and all(s is not None for s in self.segments)


class ObjectsBuilder:
    """Validates the objects of one image (the box rule above) and builds its arrays.

    Args:
        problems: where errors and warnings go.
        path: the annotation file (named in messages).
        height, width: the image size the boxes must lie in.
    """

    def __init__(self, problems: Problems, path: object, height: int, width: int) -> None:
        self.problems, self.path, self.height, self.width = problems, path, height, width
        self.boxes: list[list[float]] = []
        self.labels: list[int] = []
        self.iscrowd: list[int] = []
        self.difficult: list[bool] = []
        self.refs: list[str] = []
        self.segments: list[Any] = []
        self.keys: dict[Any, int] = {}
        self._zero_size = False  # why the last add() was refused
        # keys of objects left out: True when for an error (already reported), False when
        # for a warning (a zero-size box)
        self.skipped: dict[Any, bool] = {}

    def add(
        self,
        box: Sequence[float],
        label: int,
        *,
        ref: str,
        key: Any = None,
        iscrowd: int = 0,
        difficult: bool = False,
        segment: Any = None,
        path: object = None,
    ) -> bool:
        """Add one object with ``box`` in ``(x1, y1, x2, y2)``; False when it was rejected.

        ``path`` names the file the object comes from when it is not the builder's.
        """
        checked = self._check_box([float(v) for v in box], ref, self.path if path is None else path)
        if checked is None:
            self.skipped[key] = not self._zero_size
            return False
        if key is not None:
            self.keys[key] = len(self.boxes)
        self.boxes.append(checked)
        self.labels.append(int(label))
        self.iscrowd.append(int(iscrowd))
        self.difficult.append(bool(difficult))
        self.refs.append(ref)
        self.segments.append(segment)
        return True

    def _check_box(self, box: list[float], ref: str, path: object) -> list[float] | None:
        self._zero_size = False
        x1, y1, x2, y2 = box
        if not all(math.isfinite(v) for v in box):
            self.problems.error(path, f"box has NaN or infinite coordinates {box}", field=ref)
            return None
        if x2 < x1 or y2 < y1:
            self.problems.error(
                path, f"box has negative width or height (x1,y1,x2,y2 = {box})", field=ref
            )
            return None
        w, h = self.width, self.height
        clipped = [min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w)]
        clipped.append(min(max(y2, 0.0), h))
        if x2 == x1 or y2 == y1:
            self.problems.warn(path, f"zero-size box {box} skipped", field=ref, kind="zero")
            self._zero_size = True
            return None
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            self.problems.error(
                path, f"box {box} lies entirely outside the {w}x{h} image", field=ref
            )
            return None
        overshoot = max(abs(a - b) for a, b in zip(box, clipped))
        if overshoot > _CLIP_TOLERANCE:
            self.problems.warn(
                path,
                f"box {box} reaches {overshoot:.1f} px outside the {w}x{h} (WxH) image; clipped",
                field=ref,
                kind="box outside the image; clipped",
            )
        return clipped

    def relations(
        self, triples: Sequence[tuple[Any, Any, Any, str]], predicates: Mapping[Any, int]
    ) -> np.ndarray:
        """``[R, 3]`` (subject index, predicate index, object index) from the image's
        ``(subject key, predicate key, object key, ref)`` triples.

        The one place relationships are validated, for every reader. Errors, each naming the
        file and the relationship's ``ref``: a key that names no object of the image, a
        subject that is its own object, a predicate that ``predicates`` (the format's
        predicate key, e.g. a COCO id or a VRD index, -> index 0..P-1) does not know. A
        relationship whose object was left out earlier (a zero-size box) is dropped with
        one warning per image; one whose object was refused by an error is dropped quietly.
        """
        rows, dropped = [], []
        for subject, predicate, obj, ref in triples:
            missing = [k for k in (subject, obj) if k not in self.keys]
            if any(k not in self.skipped for k in missing):
                self.problems.error(
                    self.path, f"relationship refers to unknown object {missing[0]}", field=ref
                )
                continue
            if missing:  # its object was left out; say so once per image unless an error did
                dropped += [k for k in missing if not self.skipped[k]]
                continue
            if self.keys[subject] == self.keys[obj]:
                self.problems.error(
                    self.path,
                    f"subject and object are the same object {subject!r}; a relationship "
                    "needs two objects",
                    field=ref,
                )
                continue
            index = _lookup(predicates, predicate)
            if index is None:
                self.problems.error(
                    self.path,
                    f"unknown predicate {predicate!r} ({_describe_keys(predicates)})",
                    field=ref,
                )
                continue
            rows.append((self.keys[subject], index, self.keys[obj]))
        if dropped:
            self.problems.warn(
                self.path,
                f"relationships dropped with skipped object(s) {sorted(set(dropped), key=str)}",
                field=triples[0][3],
                kind="relationships of a skipped object",
            )
        return np.asarray(rows, dtype=np.int64).reshape(-1, 3)

    def record(self, **kwargs: Any) -> ImageRecord:
        """The :class:`ImageRecord` with these objects; ``kwargs`` are its other fields."""
        return ImageRecord(
            height=self.height,
            width=self.width,
            boxes=np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4),
            labels=np.asarray(self.labels, dtype=np.int64),
            iscrowd=np.asarray(self.iscrowd, dtype=np.int64),
            difficult=np.asarray(self.difficult, dtype=bool),
            object_refs=self.refs,
            segments=self.segments,
            **kwargs,
        )


def _lookup(predicates: Mapping[Any, int], key: Any) -> int | None:
    try:
        return predicates.get(key)
    except TypeError:  # an unhashable value read from a file (a list, a dict)
        return None


def _describe_keys(keys: Mapping[Any, int]) -> str:
    """``"known: 1..3"`` for a run of integers, else the first few keys."""
    if not keys:
        return "no predicates are defined"
    found = list(keys)
    if all(type(k) is int for k in found):
        low, high = min(found), max(found)
        if len(found) == high - low + 1:
            return f"known: {low}..{high}"
    shown = ", ".join(repr(k) for k in found[:5])
    return f"known: {shown}" + (", ..." if len(found) > 5 else "")


@dataclass
class ParsedSplit:
    """What a reader returns: records plus the class and predicate names.

    ``category_ids[k - 1]`` is the original id of label k (COCO ids; 1..C elsewhere).
    ``colormap`` (VOC) maps label-PNG colours to indices for RGB label images.
    """

    records: list[ImageRecord]
    classes: list[str]
    predicates: list[str] = field(default_factory=list)
    category_ids: list[int] = field(default_factory=list)
    colormap: list[tuple[int, int, int]] | None = None


def record_masks(record: ImageRecord) -> torch.Tensor:
    """Instance masks ``Tensor[N, H, W]`` bool of a record's objects (all must have one)."""
    n, h, w = len(record.labels), record.height, record.width
    if record.instance_png is not None:
        objects = _label_png(record, record.instance_png, None)
        bad = set(objects.unique().tolist()) - {0, IGNORE_INDEX, *range(1, n + 1)}
        if bad:
            raise DataError(
                record.instance_png, f"object indices {sorted(bad)} but the image has {n} objects"
            )
        index = torch.as_tensor([int(s) for s in record.segments], dtype=torch.int64)
        return objects.unsqueeze(0) == index.view(-1, 1, 1)
    if n == 0:
        return torch.zeros((0, h, w), dtype=torch.bool)
    masks = [
        decode_segment(seg, h, w, path=record.source, ref=ref)
        for seg, ref in zip(record.segments, record.object_refs)
    ]
    return torch.stack(masks)


def record_semantic(
    record: ImageRecord, num_classes: int, colormap: Sequence[tuple[int, int, int]] | None
) -> torch.Tensor:
    """``Tensor[H, W]`` int64 class map: 0 background, k = label k, 255 ignore.

    From the VOC class PNG when there is one; else painted from the instance masks, larger
    objects first so smaller ones stay visible, crowd regions as 255 (ignore).
    """
    if record.class_png is not None:
        semantic = _label_png(record, record.class_png, colormap)
        bad = set(semantic.unique().tolist()) - {IGNORE_INDEX, *range(num_classes + 1)}
        if bad:
            raise DataError(
                record.class_png,
                f"class indices {sorted(bad)} outside 0..{num_classes} and {IGNORE_INDEX}",
            )
        return semantic
    semantic = torch.zeros((record.height, record.width), dtype=torch.int64)
    if not len(record.labels):
        return semantic
    masks = record_masks(record)
    areas = (record.boxes[:, 2] - record.boxes[:, 0]) * (record.boxes[:, 3] - record.boxes[:, 1])
    for j in np.argsort(-areas, kind="stable"):
        value = IGNORE_INDEX if record.iscrowd[j] else int(record.labels[j])
        semantic[masks[j]] = value
    return semantic


def _label_png(
    record: ImageRecord, path: Path, colormap: Sequence[tuple[int, int, int]] | None
) -> torch.Tensor:
    label = load_label_png(path, colormap=colormap, ref=record.ref)
    if tuple(label.shape) != (record.height, record.width):
        raise DataError(
            path,
            f"label image is {label.shape[0]}x{label.shape[1]} (HxW) but the image is "
            f"{record.height}x{record.width}",
        )
    return label


def decode_segment(
    segment: Any, height: int, width: int, *, path: object = "", ref: str | None = None
) -> torch.Tensor:
    """A COCO segmentation (polygons, RLE or uncompressed RLE) -> ``Tensor[H, W]`` bool."""
    try:
        if isinstance(segment, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(segment, height, width))
        elif isinstance(segment["counts"], list):
            rle = mask_utils.frPyObjects(segment, height, width)
        else:
            counts = segment["counts"]
            rle = {
                "size": segment["size"],
                "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
            }
        with warnings.catch_warnings():
            # pycocotools' result object predates numpy 2's copy keyword: harmless, silenced
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*copy")
            mask = mask_utils.decode(rle)
    except (TypeError, ValueError, KeyError, IndexError) as err:
        raise DataError(path, f"cannot decode the segmentation ({err})", field=ref) from None
    return torch.from_numpy(mask.astype(bool))


def encode_mask(mask: torch.Tensor) -> dict[str, Any]:
    """``Tensor[H, W]`` bool -> compressed COCO RLE with ``counts`` as text."""
    return encode_masks(mask[None])[0]


def encode_masks(masks: torch.Tensor) -> list[dict[str, Any]]:
    """``Tensor[N, H, W]`` (bool, or probabilities cut at 0.5; any device) -> one compressed
    COCO RLE per mask, ``{"size": [H, W], "counts": str}``, as COCO files hold them."""
    m = masks.detach().cpu()
    m = m > 0.5 if m.is_floating_point() else m.bool()
    if not len(m):
        return []
    # [N, W, H] in C order is [H, W, N] in Fortran order, the layout pycocotools wants
    array = m.transpose(1, 2).contiguous().numpy().view(np.uint8).transpose(2, 1, 0)
    return [
        {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
        for rle in mask_utils.encode(array)
    ]


def segment_area(segment: Any, height: int, width: int, w: float, h: float) -> float:
    if not segment:
        return round(w * h, 3)
    if isinstance(segment, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segment, height, width))
    elif isinstance(segment["counts"], list):
        rle = mask_utils.frPyObjects(segment, height, width)
    else:
        rle = {"size": segment["size"], "counts": segment["counts"].encode("ascii")}
    return float(mask_utils.area(rle))

"""COCO detection metrics (AP/AR for ``bbox`` and ``segm``) on COCO files, equal to pycocotools.

:func:`coco_evaluate` reads a COCO ground-truth dict and a COCO results list, checks them (a
``DataError`` names the file and the field) and runs :mod:`visionlab.eval.coco_engine`.

The rules are pycocotools' (cocoapi ``cocoeval.py``): per image and category the detections
are sorted by score (stable), cut to ``maxDets``; each in turn takes the best still-unmatched
ground truth above the IoU threshold, preferring ground truth that is not ignored; crowd
ground truth (IoU = intersection / detection area) can be matched many times and is ignored;
ground truth outside an area range is ignored, and so are unmatched detections outside it;
precision is interpolated at 101 recall points with the monotone envelope; -1 marks a
category or area range without ground truth and is left out of the means. Quirks of
pycocotools that are kept on purpose, so that the numbers are equal:

- the ``ignore`` field of a ground-truth annotation is not read (pycocotools overwrites it
  with ``iscrowd``); a ground truth with annotation id ``0`` never counts as a match;
- a detection's area (for the area ranges) is ``w * h`` of its ``bbox`` whenever the first
  result has a non-empty ``bbox``, even in ``segm`` evaluation; else its mask area.

Where pycocotools crashes we answer instead: an empty results list scores 0 (a warning says
so); a missing ground-truth ``area`` falls back to the box (``bbox``) or mask (``segm``)
area; ``iscrowd`` defaults to 0; ids need not be present. Results for images or categories
the ground truth does not list are a ``DataError`` (pycocotools asserts or skips them).
``per_class`` maps category name -> AP@[.5:.95] (area all, 100 detections, as detectron2
reports it); a category without ground truth gets NaN and stays out of every mean. All
numbers are fractions in [0, 1] (detectron2 prints them x100).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from visionlab.errors import DataError
from visionlab.eval.coco_engine import (
    STAT_KEYS,
    CocoDetections,
    CocoGroundTruth,
    evaluate_arrays,
)

logger = logging.getLogger(__name__)

__all__ = [
    "IOU_TYPES",
    "STAT_KEYS",
    "coco_evaluate",
    "load_json",
    "parse_ground_truth",
    "parse_results",
]

IOU_TYPES = ("bbox", "segm")


def load_json(path: str | Path, what: str = "file") -> Any:
    """Read a JSON file; a missing file or malformed JSON is a DataError naming it."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(path, f"{what} not found") from None
    except IsADirectoryError:
        raise DataError(path, f"{what} is a directory, expected a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(path, f"{what} is not valid JSON ({err})") from None
    except OSError as err:
        raise DataError(path, f"cannot read {what} ({err.strerror})") from None


def _column(records: Sequence[Any], key: str, path: object, what: str) -> list[Any]:
    """``[r[key] for r in records]``, or a DataError naming the first record without it."""
    try:
        return [r[key] for r in records]
    except (KeyError, TypeError, IndexError):
        for i, r in enumerate(records):
            if not isinstance(r, dict):
                raise DataError(path, "expected a JSON object", field=f"{what}[{i}]") from None
            if key not in r:
                raise DataError(path, f"missing {key!r}", field=f"{what}[{i}].{key}") from None
        raise


def _numbers(values: list[Any], width: int, path: object, what: str, key: str) -> np.ndarray:
    """Values as float64 ``[N]`` (width 0) or ``[N, width]``, all finite, else a DataError."""
    shape = (len(values), width) if width else (len(values),)
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(shape)
        if np.isfinite(arr).all():
            return arr
    except (TypeError, ValueError):
        pass
    want = f"a list of {width} finite numbers" if width else "a finite number"
    for i, v in enumerate(values):
        try:
            a = np.asarray(v, dtype=np.float64)
            good = a.shape == shape[1:] and bool(np.isfinite(a).all())
        except (TypeError, ValueError):
            good = False
        if not good:
            raise DataError(path, f"expected {want}, got {v!r:.60}", field=f"{what}[{i}].{key}")
    raise AssertionError("unreachable")  # pragma: no cover


def _indices(values: list[Any], index: dict, path: object, what: str, key: str, kind: str):
    """Ids -> indices via ``index``; an unknown id is a DataError naming the record."""
    out = np.array([index.get(v, -1) for v in values], dtype=np.int64).reshape(-1)
    bad = np.flatnonzero(out < 0)
    if len(bad):
        i = int(bad[0])
        raise DataError(
            path,
            f"{kind} {values[i]!r} is not in the ground truth ({len(bad)} such records)",
            field=f"{what}[{i}].{key}",
        )
    return out


def _to_rle(segm: Any, h: int | None, w: int | None, path: object, where: str) -> dict:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as a compressed RLE."""
    from pycocotools import mask as mask_utils

    try:
        if isinstance(segm, list):
            if h is None or w is None:
                raise DataError(path, "polygons need the image's height and width", field=where)
            return mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
        counts, size = segm["counts"], [int(s) for s in segm["size"]]
        if h is not None and w is not None and size != [h, w]:
            raise DataError(path, f"RLE size {size} is not the image's {[h, w]}", field=where)
        if isinstance(counts, list):
            return mask_utils.frPyObjects(segm, size[0], size[1])
        if isinstance(counts, str | bytes):
            return segm
    except DataError:
        raise
    except Exception as err:  # pycocotools raises bare Exception / TypeError on bad input
        raise DataError(path, f"not a COCO segmentation ({err})", field=where) from None
    raise DataError(path, "RLE 'counts' must be a string or a list", field=where)


def parse_ground_truth(gt: Any, iou_type: str = "bbox", *, path: object = None) -> CocoGroundTruth:
    """Check a COCO ground-truth dict (``images``, ``annotations``, ``categories``) and read
    it into arrays.

    Annotations of images or categories the file does not list are dropped with a warning
    (pycocotools skips them too). ``difficult`` (VOC metric only) is the annotation's optional
    ``difficult`` or ``ignore`` field, or ``iscrowd``.
    """
    path = path if path is not None else "<ground truth>"
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    if not isinstance(gt, dict):
        raise DataError(path, "COCO ground truth must be a JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key), list):
            raise DataError(path, "missing, or not a list", field=key)
    images, anns, cats = gt["images"], gt["annotations"], gt["categories"]
    img_ids = _column(images, "id", path, "images")
    cat_ids = _column(cats, "id", path, "categories")
    try:
        image_ids, category_ids = sorted(set(img_ids)), sorted(set(cat_ids))
    except TypeError:
        raise DataError(path, "ids must be all numbers or all strings", field="id") from None
    by_id = {c["id"]: c for c in cats}
    names = [str(by_id[c].get("name", c)) for c in category_ids]
    names = [f"{n} ({c})" if names.count(n) > 1 else n for n, c in zip(names, category_ids)]
    img_index = {i: k for k, i in enumerate(image_ids)}
    cat_index = {c: k for k, c in enumerate(category_ids)}
    image = [img_index.get(i, -1) for i in _column(anns, "image_id", path, "annotations")]
    category = [cat_index.get(c, -1) for c in _column(anns, "category_id", path, "annotations")]
    image = np.array(image, dtype=np.int64).reshape(-1)
    category = np.array(category, dtype=np.int64).reshape(-1)
    keep = np.flatnonzero((image >= 0) & (category >= 0))
    if len(keep) < len(anns):
        logger.warning(
            "%s: %d annotations refer to images or categories the file does not list; skipped",
            path,
            len(anns) - len(keep),
        )
        anns = [anns[i] for i in keep]
        image, category = image[keep], category[keep]
    ids = [a["id"] for a in anns if "id" in a]
    if len(set(ids)) != len(ids):
        raise DataError(path, "annotation ids are not unique", field="annotations[].id")
    iscrowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
    difficult = [bool(a.get("difficult", 0) or a.get("ignore", 0)) for a in anns]
    sizes = {i["id"]: (i.get("height"), i.get("width")) for i in images}

    rles = None
    if iou_type == "segm":
        rles = []
        for k, a in zip(keep.tolist(), anns):
            where = f"annotations[{k}].segmentation"
            if "segmentation" not in a:
                raise DataError(path, "missing 'segmentation'", field=where)
            rles.append(_to_rle(a["segmentation"], *sizes[a["image_id"]], path, where))
    boxes = np.zeros((len(anns), 4))
    has_box = np.array(["bbox" in a for a in anns], dtype=bool)
    if iou_type == "bbox" or has_box.any():
        rows = np.flatnonzero(has_box) if iou_type == "segm" else np.arange(len(anns))
        values = _column([anns[i] for i in rows], "bbox", path, "annotations")
        boxes[rows] = _numbers(values, 4, path, "annotations", "bbox")
    if rles is not None and not has_box.all():
        from pycocotools import mask as mask_utils

        rows = np.flatnonzero(~has_box)
        boxes[rows] = mask_utils.toBbox([rles[i] for i in rows])
    area = [a.get("area") for a in anns]
    missing = [i for i, v in enumerate(area) if v is None]
    if missing:
        if rles is not None:
            from pycocotools import mask as mask_utils

            fallback = mask_utils.area([rles[i] for i in missing]).tolist()
        else:
            fallback = (boxes[missing, 2] * boxes[missing, 3]).tolist()
        for i, v in zip(missing, fallback):
            area[i] = v
    return CocoGroundTruth(
        image_ids=image_ids,
        category_ids=category_ids,
        category_names=names,
        image=image,
        category=category,
        boxes=boxes,
        area=_numbers(area, 0, path, "annotations", "area"),
        iscrowd=iscrowd,
        ignore=iscrowd.copy(),
        zero_id=np.array([a.get("id") == 0 for a in anns], dtype=bool),
        difficult=np.array(difficult, dtype=bool) | iscrowd,
        rles=rles,
        image_sizes=[sizes[i] for i in image_ids],
    )


def parse_results(
    dt: Any, gt: CocoGroundTruth, iou_type: str = "bbox", *, path: object = None
) -> CocoDetections:
    """Check a COCO results list (``image_id``, ``category_id``, ``score`` and ``bbox`` or
    ``segmentation`` per record) against the ground truth and read it into arrays."""
    path = path if path is not None else "<results>"
    if not isinstance(dt, list):
        raise DataError(path, "COCO results must be a JSON list of objects")
    if not dt:
        logger.warning("%s: the results list is empty: every AP and AR is 0", path)
    what = "results"
    image = _indices(
        _column(dt, "image_id", path, what),
        {i: k for k, i in enumerate(gt.image_ids)},
        path, what, "image_id", "image id",
    )  # fmt: skip
    category = _indices(
        _column(dt, "category_id", path, what),
        {c: k for k, c in enumerate(gt.category_ids)},
        path, what, "category_id", "category id",
    )  # fmt: skip
    scores = _numbers(_column(dt, "score", path, what), 0, path, what, "score")
    # pycocotools decides by the first result: a non-empty bbox gives area = w * h
    box_branch = bool(dt) and bool(dt[0].get("bbox"))
    if iou_type == "bbox" and dt and "segmentation" not in dt[0]:
        box_branch = True  # no mask to take a box from: a missing bbox is the error
    boxes = np.zeros((len(dt), 4))
    area = np.zeros(len(dt))
    if box_branch:
        boxes = _numbers(_column(dt, "bbox", path, what), 4, path, what, "bbox")
        area = boxes[:, 2] * boxes[:, 3]
    rles = None
    if iou_type == "segm" or (dt and not box_branch):
        segms = _column(dt, "segmentation", path, what)
        sizes = gt.image_sizes or [(None, None)] * len(gt.image_ids)
        rles = [
            _to_rle(s, *sizes[i], path, f"{what}[{k}].segmentation")
            for k, (s, i) in enumerate(zip(segms, image.tolist()))
        ]
        if not box_branch:
            from pycocotools import mask as mask_utils

            area = mask_utils.area(rles).astype(np.float64)
            given = [k for k, d in enumerate(dt) if len(d.get("bbox") or ()) == 4]
            boxes = mask_utils.toBbox(rles).astype(np.float64)
            if given:
                values = [dt[k]["bbox"] for k in given]
                boxes[given] = _numbers(values, 4, path, what, "bbox")
    rles = rles if iou_type == "segm" else None
    return CocoDetections(image, category, boxes, area, scores, rles)


def coco_evaluate(
    gt: dict | str | Path,
    dt: list[dict] | str | Path,
    iou_type: str = "bbox",
    *,
    gt_path: str | Path | None = None,
    dt_path: str | Path | None = None,
) -> dict[str, Any]:
    """COCO AP/AR of results ``dt`` against ground truth ``gt``, equal to pycocotools.

    Args:
        gt: a COCO ground-truth dict (or the path of its JSON file).
        dt: a COCO results list: ``{"image_id", "category_id", "score", "bbox": [x, y, w, h]}``
            and, for ``segm``, ``"segmentation"`` (RLE or polygons); or the path of its file.
        iou_type: ``"bbox"`` or ``"segm"``.
        gt_path, dt_path: file names used in error messages when the data came from files.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
        "ARl"}`` as floats (pycocotools' ``stats``, -1 where there is no ground truth) and
        ``"per_class"``: category name -> AP@[.5:.95] (NaN without ground truth).
    """
    if isinstance(gt, str | Path):
        gt_path, gt = gt, load_json(gt, "ground truth")
    if isinstance(dt, str | Path):
        dt_path, dt = dt, load_json(dt, "results")
    gt_arrays = parse_ground_truth(gt, iou_type, path=gt_path)
    dt_arrays = parse_results(dt, gt_arrays, iou_type, path=dt_path)
    result = evaluate_arrays(gt_arrays, dt_arrays, iou_type)
    return {**result.stats, "per_class": result.per_class}

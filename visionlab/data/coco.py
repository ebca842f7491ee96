"""COCO detection/segmentation JSON: reader, writer and mask (polygon / RLE) helpers.

Layouts read (first match wins): ``annotations/instances_SPLIT.json`` (any other
``annotations/SPLIT.json`` when there is no ``instances_*``), ``SPLIT.json`` at the root, or
one ``SPLIT/*.json`` per split folder (Roboflow). Images of a split are looked up, first hit
wins, in ``images/SPLIT/``, ``SPLIT/``, ``images/`` and the folder itself, under the dataset
root, the json's folder and its parent; ``images=`` (``--images``) names the folder instead.
A ``file_name`` is relative to that folder: absolute names and ones that climb out of it with
``..`` are errors.

Category ids may be any integers: sorted by id they become labels 1..C, and
``dataset.category_ids`` maps back. Segmentations may be polygons, RLE or uncompressed RLE.
Our scenes extension, read and written here: top-level ``predicates`` (``[{"id", "name"}]``)
and ``relationships`` (``[{"id", "image_id", "subject_id", "predicate_id", "object_id"}]``,
subject/object are annotation ids); an optional per-annotation ``difficult`` flag.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from visionlab.data.datasets import VisionDataset
from visionlab.data.imageio import image_size
from visionlab.data.problems import Problems
from visionlab.data.records import (
    ObjectsBuilder,
    ParsedSplit,
    encode_mask,
    record_masks,
    segment_area,
)
from visionlab.errors import DataError

logger = logging.getLogger(__name__)

_SPLIT_WORD = re.compile(r"(train|val|valid|validation|test|trainval|minival)(\d{4})?")
_NOT_INSTANCES = ("captions_", "person_keypoints_", "stuff_", "panoptic_")


# ----------------------------------------------------------------------------- layout


def looks_like(path: Path) -> bool:
    """A ``.json`` file, or a folder holding COCO-style split json files."""
    if path.is_file():
        return path.suffix.lower() == ".json"
    return bool(_split_files(path))


def find_splits(path: Path, *, task: str = "detection") -> list[str]:
    """Names of the splits (``[]`` for one json file without a split name)."""
    return [name for name in _split_files(path) if name is not None]


def _split_files(root: Path) -> dict[str | None, Path]:
    if root.is_file():
        return {None: root}
    if not root.is_dir():
        return {}
    files: dict[str | None, Path] = {}
    ann = root / "annotations"
    if ann.is_dir():
        jsons = sorted(ann.glob("*.json"))
        chosen = [p for p in jsons if p.stem.startswith("instances_")]
        chosen = chosen or [p for p in jsons if not p.stem.startswith(_NOT_INSTANCES)]
        files = {p.stem.removeprefix("instances_"): p for p in chosen}
    if not files:
        jsons = [p for p in sorted(root.glob("*.json")) if _looks_like_coco_json(p)]
        named = {_split_word(p.stem): p for p in jsons}
        if len(jsons) == 1 and None in named:
            files = named
        else:
            files = {name: p for name, p in named.items() if name is not None}
    if not files:
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            jsons = [p for p in sorted(sub.glob("*.json")) if _looks_like_coco_json(p)]
            if len(jsons) == 1:
                files[sub.name] = jsons[0]
    return files


def _split_word(stem: str) -> str | None:
    name = stem.removeprefix("instances_")
    return name if _SPLIT_WORD.fullmatch(name) else None


def _looks_like_coco_json(path: Path) -> bool:
    """Not hidden, an object (Visual Genome's and VRD's name lists are arrays), and mentions
    a COCO key early (a cheap sniff, no full parse)."""
    if path.name.startswith("."):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    if not head.lstrip().startswith(b"{"):
        return False
    return b'"images"' in head or b'"categories"' in head


def _images_dir(root: Path, ann_file: Path, split: str | None, first: list[str]) -> Path:
    bases = list(dict.fromkeys([root if root.is_dir() else ann_file.parent, ann_file.parent]))
    bases.append(ann_file.parent.parent)
    names = [split] if split else []
    if split and split != ann_file.stem:
        names.append(ann_file.stem.removeprefix("instances_"))
    candidates = []
    for base in bases:
        candidates += [base / "images" / n for n in names] + [base / n for n in names]
        candidates += [base / "images", base]
    candidates = [c for c in dict.fromkeys(candidates) if c.is_dir()]
    for candidate in candidates:
        if first and any((candidate / name).is_file() for name in first):
            return candidate
    return candidates[0] if candidates else ann_file.parent


# ----------------------------------------------------------------------------- reading


def leaves_folder(name: str) -> str | None:
    """Why a file name read from an annotation file would lead out of the folder it is
    relative to (``"is absolute"``, ``"leads out of the folder with '..'"``), or None.

    Lexical: ``a/../b.png`` stays inside; symbolic links the dataset itself holds are followed.
    VOC's ``<filename>`` and split-list ids use it too.
    """
    if Path(name).anchor:  # "/x", and on Windows also "C:x", "\\x"
        return "is absolute"
    if os.path.normpath(name).split(os.sep, 1)[0] == os.pardir:
        return "leads out of the folder with '..'"
    return None


def read_json(path: Path) -> Any:
    """Parse a JSON file; malformed JSON becomes a DataError naming line and column."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(
            path, f"malformed JSON at line {err.lineno} column {err.colno}: {err.msg}"
        ) from None
    except UnicodeDecodeError:
        raise DataError(path, "not UTF-8 text") from None
    except OSError as err:
        raise DataError(path, f"cannot read the file: {err.strerror}") from None


def read_split(
    root: Path,
    split: str | None,
    *,
    task: str = "detection",
    problems: Problems,
    images: str | os.PathLike[str] | None = None,
) -> ParsedSplit:
    """Parse one split's json into records (see the module docstring for the layout)."""
    ann_file = _split_files(root)[split]
    data = read_json(ann_file)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(ann_file, "not a COCO annotation file: no 'images' list", field="images")
    classes, cat_to_label, category_ids = _categories(ann_file, data, problems)
    predicates, pred_to_index = _predicates(ann_file, data, problems)
    first = [str(im.get("file_name")) for im in data["images"][:5] if isinstance(im, dict)]
    first = [name for name in first if leaves_folder(name) is None]
    image_dir = Path(images) if images else _images_dir(root, ann_file, split, first)
    if images and not image_dir.is_dir():
        raise DataError(image_dir, "images folder does not exist", field="--images")

    builders: dict[int, tuple[ObjectsBuilder, dict[str, Any]]] = {}
    for idx, im in enumerate(data["images"]):
        entry = _image_entry(ann_file, idx, im, image_dir, problems)
        if entry is None:
            continue
        if entry["id"] in builders:
            problems.error(ann_file, f"duplicate image id {entry['id']}", field=f"images[{idx}]")
            continue
        builder = ObjectsBuilder(problems, ann_file, entry["height"], entry["width"])
        builders[entry["id"]] = (builder, entry)

    seen_ann: set[Any] = set()
    for idx, ann in enumerate(data.get("annotations") or []):
        _add_annotation(ann_file, idx, ann, builders, cat_to_label, seen_ann, problems)

    triples: dict[int, list[tuple[Any, int, Any, str]]] = {}
    for idx, rel in enumerate(data.get("relationships") or []):
        where = f"relationships[{idx}]"
        try:
            image_id = int(rel["image_id"])
            predicate = int(rel["predicate_id"])  # checked with the rest by the builder
            triple = (int(rel["subject_id"]), predicate, int(rel["object_id"]), where)
        except (KeyError, TypeError, ValueError):
            problems.error(
                ann_file,
                "needs integer image_id, subject_id, predicate_id and object_id",
                field=where,
            )
            continue
        triples.setdefault(image_id, []).append(triple)

    records = []
    for image_id, (builder, entry) in builders.items():
        record = builder.record(
            image_id=image_id,
            file_name=entry["file_name"],
            path=entry["path"],
            source=str(ann_file),
        )
        record.relations = builder.relations(triples.pop(image_id, []), pred_to_index)
        records.append(record)
    for image_id in triples:
        problems.error(
            ann_file, f"relationship for unknown image id {image_id}", field="relationships"
        )
    return ParsedSplit(records, classes, predicates, category_ids)


def _categories(
    path: Path, data: dict[str, Any], problems: Problems
) -> tuple[list[str], dict[int, int], list[int]]:
    cats = data.get("categories")
    if not isinstance(cats, list):
        raise DataError(path, "no 'categories' list", field="categories")
    by_id: dict[int, str] = {}
    for idx, cat in enumerate(cats):
        try:
            cat_id, name = int(cat["id"]), str(cat["name"])
        except (KeyError, TypeError, ValueError):
            problems.error(
                path, "a category needs an integer id and a name", field=f"categories[{idx}]"
            )
            continue
        if cat_id in by_id:
            problems.error(path, f"duplicate category id {cat_id}", field=f"categories[{idx}]")
            continue
        by_id[cat_id] = name
    ids = sorted(by_id)
    return [by_id[i] for i in ids], {c: k + 1 for k, c in enumerate(ids)}, ids


def _predicates(
    path: Path, data: dict[str, Any], problems: Problems
) -> tuple[list[str], dict[int, int]]:
    preds = data.get("predicates") or []
    if preds and all(isinstance(p, str) for p in preds):
        return list(preds), {i: i for i in range(len(preds))}
    by_id: dict[int, str] = {}
    for idx, pred in enumerate(preds):
        try:
            by_id[int(pred["id"])] = str(pred["name"])
        except (KeyError, TypeError, ValueError):
            problems.error(
                path, "a predicate needs an integer id and a name", field=f"predicates[{idx}]"
            )
    ids = sorted(by_id)
    return [by_id[i] for i in ids], {p: k for k, p in enumerate(ids)}


def _image_entry(
    path: Path, idx: int, im: Any, image_dir: Path, problems: Problems
) -> dict[str, Any] | None:
    where = f"images[{idx}]"
    try:
        image_id, file_name = int(im["id"]), str(im["file_name"])
    except (KeyError, TypeError, ValueError):
        problems.error(path, "an image needs an integer id and a file_name", field=where)
        return None
    leaves = leaves_folder(file_name)
    if leaves:
        problems.error(
            path,
            f"file_name {file_name!r} {leaves}; file names are relative to the images folder",
            field=f"{where} (id {image_id})",
        )
        return None
    where = f"image id={image_id}"
    image_path = image_dir / file_name
    if not image_path.is_file():
        problems.error(image_path, f"image file not found (referenced by {path.name})", field=where)
        return None
    try:
        height, width = int(im["height"]), int(im["width"])
        if height <= 0 or width <= 0:
            raise ValueError
    except (KeyError, TypeError, ValueError):
        # Some exporters leave sizes out: the header is cheap to read.
        try:
            height, width = image_size(image_path, ref=where)
        except DataError as err:
            problems.add(err)
            return None
    return {
        "id": image_id,
        "file_name": file_name,
        "path": image_path,
        "height": height,
        "width": width,
    }


def _add_annotation(
    path: Path,
    idx: int,
    ann: Any,
    builders: dict[int, tuple[ObjectsBuilder, dict[str, Any]]],
    cat_to_label: dict[int, int],
    seen: set[Any],
    problems: Problems,
) -> None:
    if not isinstance(ann, dict):
        problems.error(path, "an annotation must be an object", field=f"annotations[{idx}]")
        return
    ann_id = ann.get("id", f"#{idx}")
    where = f"annotation id={ann_id}"
    if ann_id in seen:
        problems.error(path, f"duplicate annotation id {ann_id}", field=where)
        return
    seen.add(ann_id)
    image_id = ann.get("image_id")
    if image_id not in builders:
        problems.error(path, f"refers to unknown image id {image_id}", field=where)
        return
    builder, _ = builders[image_id]
    box = _box(path, ann, cat_to_label, where, problems)
    if box is None:  # reported; relationships to it are dropped with a warning
        builder.skipped[ann_id] = True
        return
    segment = _segment(
        path, ann.get("segmentation"), builder.height, builder.width, where, problems
    )
    builder.add(
        box,
        cat_to_label[ann["category_id"]],
        ref=where,
        key=ann_id,
        iscrowd=int(bool(ann.get("iscrowd", 0))),
        difficult=bool(ann.get("difficult", False)),
        segment=segment,
    )


def _box(
    path: Path, ann: dict[str, Any], cat_to_label: dict[int, int], where: str, problems: Problems
) -> list[float] | None:
    """The annotation's ``(x1, y1, x2, y2)`` from its COCO bbox, or None (reported)."""
    if ann.get("category_id") not in cat_to_label:
        problems.error(path, f"unknown category id {ann.get('category_id')}", field=where)
        return None
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4):
        problems.error(path, f"bbox must be [x, y, width, height], got {bbox!r}", field=where)
        return None
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        problems.error(path, f"bbox has non-numbers {bbox!r}", field=where)
        return None
    if w < 0 or h < 0:
        problems.error(path, f"bbox has negative width or height {bbox}", field=where)
        return None
    return [x, y, x + w, y + h]


def _segment(path: Path, seg: Any, height: int, width: int, where: str, problems: Problems) -> Any:
    """Validate a segmentation; returns it, or None when absent/invalid."""
    if seg is None or seg == []:
        return None
    if isinstance(seg, list):
        for poly in seg:
            ok = isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0
            if not ok or not all(isinstance(v, int | float) and math.isfinite(v) for v in poly):
                problems.error(
                    path,
                    "a polygon must be a flat list of >= 3 finite x, y pairs",
                    field=where + " segmentation",
                )
                return None
        return seg
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if list(seg["size"]) != [height, width]:
            problems.error(
                path,
                f"RLE size {seg['size']} is not the image's [{height}, {width}]",
                field=where + " segmentation",
            )
            return None
        counts = seg["counts"]
        if isinstance(counts, list) and sum(counts) != height * width:
            problems.error(
                path,
                f"uncompressed RLE counts sum to {sum(counts)}, not H*W = {height * width}",
                field=where + " segmentation",
            )
            return None
        return seg
    problems.error(
        path, "segmentation must be polygons or an RLE dict", field=where + " segmentation"
    )
    return None


# ----------------------------------------------------------------------------- masks


# ----------------------------------------------------------------------------- writing


def image_dir(dst: Path, split: str) -> Path:
    return dst / "images" / split


def write_split(
    dst: Path, split: str, dataset: VisionDataset, image_names: Sequence[str], notes: set[str]
) -> None:
    """Write ``annotations/instances_SPLIT.json`` (images are copied by the caller)."""
    images, annotations, relationships = [], [], []
    has_difficult = False
    for record, name in zip(dataset.records, image_names):
        images.append(
            {
                "id": record.image_id,
                "file_name": name,
                "width": record.width,
                "height": record.height,
            }
        )
        masks = None
        ann_ids = []
        for j in range(len(record.labels)):
            x1, y1, x2, y2 = (round(float(v), 3) for v in record.boxes[j])
            segment = record.segments[j] if j < len(record.segments) else None
            if isinstance(segment, int):  # an object index in a VOC instance PNG
                masks = record_masks(record) if masks is None else masks
                segment = encode_mask(masks[j])
            ann = {
                "id": len(annotations) + 1,
                "image_id": record.image_id,
                "category_id": dataset.category_ids[int(record.labels[j]) - 1],
                "bbox": [x1, y1, round(x2 - x1, 3), round(y2 - y1, 3)],
                "area": segment_area(segment, record.height, record.width, x2 - x1, y2 - y1),
                "iscrowd": int(record.iscrowd[j]),
                "segmentation": segment or [],
            }
            if record.difficult[j]:
                ann["difficult"] = 1
                has_difficult = True
            annotations.append(ann)
            ann_ids.append(ann["id"])
        for s, p, o in record.relations.tolist():
            relationships.append(
                {
                    "id": len(relationships) + 1,
                    "image_id": record.image_id,
                    "subject_id": ann_ids[s],
                    "predicate_id": p + 1,
                    "object_id": ann_ids[o],
                }
            )
    if has_difficult:
        notes.add(
            "coco: 'difficult' flags are kept as an extra per-annotation key that COCO tools ignore"
        )
    data: dict[str, Any] = {
        "info": {"description": f"converted by visionlab from {dataset.format}"},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": cid, "name": name, "supercategory": ""}
            for cid, name in zip(dataset.category_ids, dataset.classes)
        ],
    }
    if dataset.predicates:
        data["predicates"] = [{"id": k + 1, "name": n} for k, n in enumerate(dataset.predicates)]
        data["relationships"] = relationships
    out = dst / "annotations" / f"instances_{split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data), encoding="utf-8")


def finish(dst: Path, dataset: VisionDataset, splits: Sequence[str], notes: set[str]) -> None:
    """Nothing beyond the per-split json files for COCO."""

"""The Visual Relationship Detection dataset (VRD) of Lu et al. 2016, "Visual Relationship
Detection with Language Priors": a read-only reader.

Layout: ``annotations_train.json`` and ``annotations_test.json`` (splits ``train`` and
``test``), ``objects.json`` (the class names; category ``c`` is ``objects[c]``, label
``c + 1``) and ``predicates.json`` (the predicate names; predicate ``p`` is index ``p``).
An annotation file maps an image file name to its relationships::

    {"NAME.jpg": [{"predicate": 3,
                   "subject": {"category": 0, "bbox": [ymin, ymax, xmin, xmax]},
                   "object": {"category": 5, "bbox": [ymin, ymax, xmin, xmax]}}, ...]}

Images of a split are looked up in this order, the first folder that exists wins:
``sg_dataset/sg_SPLIT_images/`` (the download), ``images/SPLIT/``, ``SPLIT_images/``. The
json has no image sizes, so they come from each image's header; a missing image is an error.

Objects are implicit: an image's objects are its distinct ``(category, bbox)`` pairs, in the
order they first appear (subject before object); relationships are rows (subject index,
predicate index, object index) into them.

Boxes: ``[ymin, ymax, xmin, xmax]``, inclusive 0-based pixel indices (the protocol's own
evaluation adds 1 to widths and heights), so ``(x1, y1, x2, y2) = (xmin, ymin, xmax + 1,
ymax + 1)``, as VOC's inclusive pixels are read; a box reaching one pixel past the image is
then rounding, clipped quietly by the box rule (:mod:`visionlab.data.records`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visionlab.data.coco import leaves_folder, read_json
from visionlab.data.imageio import image_size
from visionlab.data.problems import Problems
from visionlab.data.records import ObjectsBuilder, ParsedSplit
from visionlab.errors import DataError

SPLITS = ("train", "test")
_NAMES = ("objects.json", "predicates.json")


def _annotation_file(root: Path, split: str) -> Path:
    return root / f"annotations_{split}.json"


def image_folders(root: Path, split: str) -> list[Path]:
    """The folders tried for a split's images, in order."""
    return [
        root / "sg_dataset" / f"sg_{split}_images",
        root / "images" / split,
        root / f"{split}_images",
    ]


# ----------------------------------------------------------------------------- layout


def looks_like(path: Path) -> bool:
    """A folder with ``objects.json``, ``predicates.json`` and ``annotations_{train,test}.json``."""
    if not path.is_dir() or not all((path / name).is_file() for name in _NAMES):
        return False
    return bool(find_splits(path))


def find_splits(path: Path, *, task: str = "detection") -> list[str]:
    return [s for s in SPLITS if _annotation_file(path, s).is_file()]


# ----------------------------------------------------------------------------- reading


def _names(path: Path) -> list[str]:
    data = read_json(path)
    if not isinstance(data, list) or not all(isinstance(n, str) for n in data):
        raise DataError(path, "expected a JSON list of names")
    return data


def read_split(
    path: Path, split: str | None, *, task: str = "detection", problems: Problems
) -> ParsedSplit:
    """Parse one split's annotation file into records (see the module docstring)."""
    classes = _names(path / "objects.json")
    predicates = _names(path / "predicates.json")
    ann_file = _annotation_file(path, split or "train")
    data = read_json(ann_file)
    if not isinstance(data, dict):
        raise DataError(ann_file, "expected a JSON object: image file name -> relationships")
    folders = image_folders(path, split or "train")
    image_dir = next((f for f in folders if f.is_dir()), None)
    if image_dir is None:
        raise DataError(path, "no images folder; looked for " + ", ".join(str(f) for f in folders))
    predicate_index = {p: p for p in range(len(predicates))}

    records = []
    for image_id, (name, rels) in enumerate(data.items(), start=1):
        leaves = leaves_folder(name)
        if leaves:
            problems.error(ann_file, f"image name {name!r} {leaves}", field=name)
            continue
        image_path = image_dir / name
        if not image_path.is_file():
            problems.error(
                image_path, f"image file not found (referenced by {ann_file.name})", field=name
            )
            continue
        try:
            height, width = image_size(image_path, ref=f"{name} in {ann_file.name}")
        except DataError as err:
            problems.add(err)
            continue
        if not isinstance(rels, list):
            problems.error(ann_file, "expected a list of relationships", field=name)
            rels = []
        builder = ObjectsBuilder(problems, ann_file, height, width)
        triples = []
        for j, rel in enumerate(rels):
            where = f"{name}[{j}]"
            try:
                predicate = rel["predicate"]
                keys = [
                    _add_object(builder, rel[role], len(classes), f"{where}.{role}")
                    for role in ("subject", "object")
                ]
            except (KeyError, TypeError, ValueError) as err:
                problems.error(
                    ann_file,
                    "a relationship needs a predicate, and a subject and an object each with "
                    f"an integer category and a bbox [ymin, ymax, xmin, xmax] ({err!r})",
                    field=where,
                )
                continue
            triples.append((keys[0], predicate, keys[1], where))
        record = builder.record(
            image_id=image_id, file_name=name, path=image_path, source=str(ann_file)
        )
        record.relations = builder.relations(triples, predicate_index)
        records.append(record)
    return ParsedSplit(records, classes, predicates)


def _add_object(
    builder: ObjectsBuilder, entry: dict[str, Any], num_classes: int, ref: str
) -> tuple[int, tuple[float, ...]]:
    """The object's key ``(category, bbox)``, added to ``builder`` on its first sighting (a
    refused object is reported then, and its relationships dropped by the builder). Raises
    on a malformed entry."""
    category, bbox = entry["category"], entry["bbox"]
    if type(category) is not int or not (isinstance(bbox, list) and len(bbox) == 4):
        raise ValueError(f"category {category!r}, bbox {bbox!r}")
    ymin, ymax, xmin, xmax = (float(v) for v in bbox)
    key = (category, (ymin, ymax, xmin, xmax))
    if key in builder.keys or key in builder.skipped:
        return key
    if not 0 <= category < num_classes:
        builder.problems.error(
            builder.path,
            f"unknown category {category} (objects.json has {num_classes}: 0..{num_classes - 1})",
            field=ref,
        )
        builder.skipped[key] = True
        return key
    builder.add([xmin, ymin, xmax + 1, ymax + 1], category + 1, ref=ref, key=key)
    return key

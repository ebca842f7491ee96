"""YOLO txt labels (ultralytics / darknet layout): reader and writer.

Layout: a data yaml (``data.yaml``, or the one ``*.yaml`` with ``names`` in the folder, or
the yaml file given directly) with ``names`` (a list, or a dict ``{0: name, ...}``),
optional ``path`` (the dataset root; relative to the yaml's folder; default that folder),
and ``train`` / ``val`` / ``test``: each an image folder, a ``.txt`` list of image paths
(relative lines are relative to the list's folder), or a list of those. Without a yaml:
``images/SPLIT/`` folders (or images directly in ``images/``) and class names from
``classes.txt`` or ``obj.names`` (root or ``labels/``).

Each image's labels are in the same path with the last ``images`` folder replaced by
``labels`` and the suffix by ``.txt`` (no file = no objects). One object per line: ``cls cx
cy w h`` normalised to [0, 1], or a segmentation polygon ``cls x1 y1 x2 y2 ...`` (normalised,
at least 3 points; its box is the polygon's extent). Class ``i`` is label ``i + 1``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from visionlab.data.datasets import VisionDataset
from visionlab.data.imageio import image_size, is_image_file
from visionlab.data.problems import Problems
from visionlab.data.records import ImageRecord, ObjectsBuilder, ParsedSplit, record_masks
from visionlab.errors import DataError

logger = logging.getLogger(__name__)

_SPLIT_KEYS = ("train", "val", "test")
_RESERVED_KEYS = ("path", "names", "nc", "download", "yaml_file", "channels", "kpt_shape")
_NAME_FILES = ("classes.txt", "obj.names", "labels/classes.txt")


# ----------------------------------------------------------------------------- layout


def _find_yaml(path: Path) -> Path | None:
    if path.is_file():
        return path if path.suffix.lower() in (".yaml", ".yml") else None
    if not path.is_dir():
        return None
    for name in ("data.yaml", "data.yml", "dataset.yaml"):
        if (path / name).is_file():
            return path / name
    candidates = [p for p in sorted(path.glob("*.y*ml")) if _has_names(p)]
    return candidates[0] if len(candidates) == 1 else None


def _has_names(path: Path) -> bool:
    try:
        return "names" in path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def looks_like(path: Path) -> bool:
    """A data yaml, or ``labels/`` next to ``images/``."""
    if _find_yaml(path) is not None:
        return True
    return path.is_dir() and (path / "labels").is_dir() and (path / "images").is_dir()


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise DataError(path, f"malformed YAML{where}: {getattr(err, 'problem', err)}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(path, f"cannot read the file ({err})") from None
    if not isinstance(data, dict):
        raise DataError(path, "a YOLO data yaml must be a mapping with 'names'")
    return data


def _layout(path: Path) -> tuple[Path, dict[str, Any] | None, Path | None]:
    """(dataset root, yaml data or None, yaml path)."""
    yaml_path = _find_yaml(path)
    if yaml_path is None:
        return path, None, None
    data = _load_yaml(yaml_path)
    base = Path(str(data.get("path") or "")).expanduser()
    root = base if base.is_absolute() else (yaml_path.parent / base)
    if not root.is_dir():
        raise DataError(yaml_path, f"dataset root {root} does not exist", field="path")
    return root, data, yaml_path


def find_splits(path: Path, *, task: str = "detection") -> list[str]:
    root, data, _ = _layout(path)
    if data is not None:
        return [k for k, v in data.items() if _is_split_entry(root, k, v)]
    images = root / "images"
    return sorted(p.name for p in images.iterdir() if p.is_dir()) if images.is_dir() else []


def _is_split_entry(root: Path, key: str, value: Any) -> bool:
    """train/val/test, or another key whose value is an image folder or a .txt list."""
    if key in _SPLIT_KEYS:
        return bool(value)
    if key in _RESERVED_KEYS or not isinstance(value, str | list) or not value:
        return False
    items = value if isinstance(value, list) else [value]
    return all(
        isinstance(item, str) and ((root / item).is_dir() or item.endswith(".txt"))
        for item in items
    )


def _classes(root: Path, data: dict[str, Any] | None, yaml_path: Path | None) -> list[str]:
    if data is not None:
        names = data.get("names")
        if isinstance(names, dict):
            try:
                keyed = {int(k): str(v) for k, v in names.items()}
            except (TypeError, ValueError):
                raise DataError(
                    yaml_path, "names keys must be class ids 0..N-1", field="names"
                ) from None
            if sorted(keyed) != list(range(len(keyed))):
                raise DataError(
                    yaml_path,
                    f"names ids must be 0..{len(keyed) - 1}, got {sorted(keyed)}",
                    field="names",
                )
            classes = [keyed[i] for i in range(len(keyed))]
        elif isinstance(names, list):
            classes = [str(n) for n in names]
        else:
            raise DataError(
                yaml_path, "names must be a list or a {id: name} mapping", field="names"
            )
        nc = data.get("nc")
        if nc is not None and nc != len(classes):
            raise DataError(
                yaml_path, f"nc is {nc} but names has {len(classes)} entries", field="nc"
            )
        return classes
    for name in _NAME_FILES:
        if (root / name).is_file():
            text = (root / name).read_text(encoding="utf-8")
            return [line.strip() for line in text.splitlines() if line.strip()]
    raise DataError(root, "no class names: add a data.yaml with 'names', or classes.txt")


# ----------------------------------------------------------------------------- reading


def _image_paths(root: Path, entry: Any, yaml_path: Path, key: str) -> list[Path]:
    entries = entry if isinstance(entry, list) else [entry]
    paths: list[Path] = []
    for item in entries:
        source = Path(str(item)).expanduser()
        source = source if source.is_absolute() else root / source
        if source.is_dir():
            paths += sorted(p for p in source.rglob("*") if p.is_file() and is_image_file(p))
        elif source.is_file() and source.suffix == ".txt":
            for line in source.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    p = Path(line.strip())
                    paths.append(p if p.is_absolute() else source.parent / p)
        else:
            raise DataError(
                yaml_path, f"{source} is neither an image folder nor a .txt list", field=key
            )
    return paths


def label_path(image_path: Path) -> Path:
    """The label file of an image: the last ``images`` folder becomes ``labels``."""
    parts = list(image_path.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def read_split(
    path: Path, split: str | None, *, task: str = "detection", problems: Problems
) -> ParsedSplit:
    root, data, yaml_path = _layout(path)
    classes = _classes(root, data, yaml_path)
    if data is not None:
        paths = _image_paths(root, data[split], yaml_path, split) if split else []
    else:
        folder = root / "images" / split if split else root / "images"
        paths = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
    records = []
    for image_id, image_path in enumerate(paths, start=1):
        record = _record(root, image_path, image_id, len(classes), problems)
        if record is not None:
            records.append(record)
    _orphan_labels(paths, problems)
    return ParsedSplit(records, classes)


def _record(
    root: Path, image_path: Path, image_id: int, num_classes: int, problems: Problems
) -> ImageRecord | None:
    labels = label_path(image_path)
    ref = f"referenced by {labels.name}" if labels.is_file() else None
    if not image_path.is_file():
        problems.error(image_path, "image file not found", field=ref or "image list")
        return None
    try:
        height, width = image_size(image_path, ref=ref)
    except DataError as err:
        problems.add(err)
        return None
    builder = ObjectsBuilder(problems, labels, height, width)
    text = ""
    if labels.is_file():
        try:
            text = labels.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            problems.error(labels, f"cannot read the label file ({err})")
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            _add_line(builder, line.split(), f"line {n}", num_classes, problems)
    file_name = (
        os.path.relpath(image_path, root) if image_path.is_relative_to(root) else str(image_path)
    )
    return builder.record(
        image_id=image_id, file_name=file_name, path=image_path, source=str(labels)
    )


def _add_line(
    builder: ObjectsBuilder, fields: list[str], where: str, num_classes: int, problems: Problems
) -> None:
    path = builder.path
    try:
        values = [float(v) for v in fields]
    except ValueError:
        problems.error(path, f"non-numeric value in {' '.join(fields)!r}", field=where)
        return
    cls, coords = values[0], values[1:]
    if len(coords) != 4 and (len(coords) < 6 or len(coords) % 2):
        problems.error(
            path,
            "expected 'class cx cy w h' or 'class x1 y1 x2 y2 x3 y3 ...', "
            f"got {len(fields)} values",
            field=where,
        )
        return
    if not all(math.isfinite(v) for v in values):
        problems.error(path, f"NaN or infinite value in {' '.join(fields)!r}", field=where)
        return
    if cls != int(cls) or not 0 <= cls < num_classes:
        problems.error(path, f"unknown class id {fields[0]} (names has {num_classes})", field=where)
        return
    w, h = builder.width, builder.height
    segment = None
    if len(coords) == 4:
        cx, cy, bw, bh = coords
        box = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
        if bw < 0 or bh < 0:
            problems.error(path, f"negative width or height in {' '.join(fields)!r}", field=where)
            return
    else:
        xs, ys = [x * w for x in coords[0::2]], [y * h for y in coords[1::2]]
        box = [min(xs), min(ys), max(xs), max(ys)]
        segment = [[round(v, 3) for xy in zip(xs, ys) for v in xy]]
    builder.add(box, int(cls) + 1, ref=where, segment=segment)


def _orphan_labels(image_paths: list[Path], problems: Problems) -> None:
    folders = {label_path(p).parent for p in image_paths}
    expected = {label_path(p) for p in image_paths}
    for folder in sorted(folders):
        if not folder.is_dir():
            continue
        for txt in sorted(folder.glob("*.txt")):
            if txt not in expected and txt.name != "classes.txt":
                problems.warn(txt, "label file without an image", kind="orphan label file")


# ----------------------------------------------------------------------------- writing


def image_dir(dst: Path, split: str) -> Path:
    return dst / "images" / split


def write_split(
    dst: Path,
    split: str,
    dataset: VisionDataset,
    image_names: Sequence[str],
    notes: set[str],
    *,
    segments: bool = False,
) -> None:
    """Write ``labels/SPLIT/*.txt``; ``segments`` writes mask polygons instead of boxes."""
    out = dst / "labels" / split
    out.mkdir(parents=True, exist_ok=True)
    for record, name in zip(dataset.records, image_names):
        lines = _lines(record, notes, segments)
        (out / Path(name).with_suffix(".txt").name).write_text("".join(lines))


def _lines(record: ImageRecord, notes: set[str], segments: bool) -> list[str]:
    if record.relations.shape[0]:
        notes.add("yolo: relationships are not written (YOLO has none)")
    if record.difficult.any():
        notes.add("yolo: 'difficult' flags are dropped (those objects are written as normal)")
    has_masks = record.has_masks and len(record.labels)
    if has_masks and not segments:
        notes.add("yolo: instance masks are not written (pass --segments to write polygons)")
    polygons = _polygons(record, notes) if has_masks and segments else None
    w, h = record.width, record.height
    lines = []
    for j in range(len(record.labels)):
        if record.iscrowd[j]:
            notes.add("yolo: crowd annotations (iscrowd=1) are dropped (YOLO has no crowd flag)")
            continue
        cls = int(record.labels[j]) - 1
        if polygons is not None and polygons[j]:
            coords = polygons[j]
            norm = [min(max(v / (w if k % 2 == 0 else h), 0.0), 1.0) for k, v in enumerate(coords)]
            lines.append(f"{cls} " + " ".join(f"{v:.6f}" for v in norm) + "\n")
            continue
        lines.append(box_line(cls, [float(v) for v in record.boxes[j]], w, h))
    return lines


def box_line(
    cls: int, box: list[float], width: float, height: float, score: float | None = None
) -> str:
    """One YOLO label line ``class cx cy w h`` (and `` conf`` with ``score``, as detectors
    write their results): ``cls`` from 0, ``box`` ``[x1, y1, x2, y2]`` in pixels, normalised
    by the image's ``width`` and ``height``."""
    x1, y1, x2, y2 = box
    values = ((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)
    conf = f" {score:.5f}" if score is not None else ""
    return f"{cls} " + " ".join(f"{v:.6f}" for v in values) + conf + "\n"


def _polygons(record: ImageRecord, notes: set[str]) -> list[list[float]]:
    """One polygon per object (absolute pixels): the object's own single polygon, else the
    outer contour (pixel centres, as OpenCV traces it) of the largest part of its mask."""
    import cv2
    import numpy as np

    masks = None
    out: list[list[float]] = []
    for j, segment in enumerate(record.segments):
        if isinstance(segment, list) and len(segment) == 1:
            out.append([float(v) for v in segment[0]])
            continue
        masks = record_masks(record) if masks is None else masks
        contours, hierarchy = cv2.findContours(
            masks[j].numpy().astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE
        )
        parents = hierarchy.reshape(-1, 4)[:, 3] if hierarchy is not None else []
        if any(p >= 0 for p in parents):
            notes.add("yolo: holes in masks are filled (a YOLO polygon has no holes)")
        contours = [c for c, p in zip(contours, parents) if p < 0 and len(c) >= 3]
        if len(contours) > 1:
            notes.add("yolo: masks in several parts keep only their largest polygon")
        if not contours:
            out.append([])
            continue
        largest = max(contours, key=cv2.contourArea).reshape(-1, 2)
        out.append([float(v) for v in largest.reshape(-1)])
    return out


def finish(dst: Path, dataset: VisionDataset, splits: Sequence[str], notes: set[str]) -> None:
    """Write ``data.yaml`` (no ``path`` key: the yaml's folder is the root)."""
    data: dict[str, Any] = {name: f"images/{name}" for name in splits}
    data["nc"] = len(dataset.classes)
    data["names"] = dict(enumerate(dataset.classes))
    (dst / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")

"""Pascal VOC: reader and writer (Annotations/*.xml, JPEGImages/, ImageSets/, Segmentation*).

Layout: ``Annotations/ID.xml``, ``JPEGImages/ID.jpg`` (the XML's ``filename``, else any
image named ``ID.*``; a ``filename`` or a split-list ID leading out of the folder is an
error), ``ImageSets/Main/SPLIT.txt`` (detection) and
``ImageSets/Segmentation/SPLIT.txt`` (segmentation and instance tasks; Main lists are the
fallback, keeping the listed images that have the PNGs), ``SegmentationClass/ID.png`` and
``SegmentationObject/ID.png`` (palette PNGs: class index / object number in XML order,
0 background, 255 boundary = ignore). The root may also be a folder holding one
``VOC20xx`` folder (or ``VOCdevkit/VOC20xx``).

Boxes: VOC pixels are 1-based and inclusive, so ``(x1, y1, x2, y2) = (xmin - 1, ymin - 1,
xmax, ymax)`` (as detectron2 reads them); the writer rounds back to integers.

Class names, one source of truth, in this order: a ``labelmap.txt`` at the root (the
CVAT/Datumaro ``name:r,g,b::`` format, written by our writer, ``background`` first); else the
standard 20 VOC classes when every ``<object><name>`` in ``Annotations/`` is one of them;
else the sorted set of names found in all XML files (every split, so splits agree).
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import torch

from visionlab.constants import IGNORE_INDEX
from visionlab.data.coco import leaves_folder
from visionlab.data.datasets import VisionDataset
from visionlab.data.imageio import IMAGE_EXTENSIONS, image_size, save_label_png
from visionlab.data.problems import Problems
from visionlab.data.records import (
    ImageRecord,
    ObjectsBuilder,
    ParsedSplit,
    record_masks,
    record_semantic,
)
from visionlab.errors import DataError

logger = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
_SEG_TASKS = ("segmentation", "instance")


def voc_colormap(n: int = 256) -> list[tuple[int, int, int]]:
    """The VOC palette: index -> RGB by spreading the index bits (255 -> (224, 224, 192))."""
    colors = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= (c & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors.append((r, g, b))
    return colors


# ----------------------------------------------------------------------------- layout


def voc_root(path: Path) -> Path:
    """The folder with ``Annotations/`` (resolving one ``[VOCdevkit/]VOC20xx`` level)."""
    if not path.is_dir() or (path / "Annotations").is_dir() or (path / "JPEGImages").is_dir():
        return path
    for base in (path, path / "VOCdevkit"):
        inner = sorted(base.glob("VOC*/Annotations")) if base.is_dir() else []
        if len(inner) == 1:
            return inner[0].parent
    return path


def looks_like(path: Path) -> bool:
    root = voc_root(path)
    return root.is_dir() and ((root / "Annotations").is_dir() or (root / "JPEGImages").is_dir())


def find_splits(path: Path, *, task: str = "detection") -> list[str]:
    """Split names from ``ImageSets/Main`` (or ``Segmentation`` for the mask tasks)."""
    root = voc_root(path)
    folders = ["Segmentation", "Main"] if task in _SEG_TASKS else ["Main"]
    for folder in folders:
        names = sorted(p.stem for p in (root / "ImageSets" / folder).glob("*.txt"))
        # drop per-class lists such as aeroplane_train.txt
        names = [n for n in names if not ("_" in n and n.split("_", 1)[1] in names)]
        if names:
            return names
    return []


# ----------------------------------------------------------------------------- reading


def read_split(
    path: Path, split: str | None, *, task: str = "detection", problems: Problems
) -> ParsedSplit:
    """Parse one split (``None``: every XML file) into records."""
    root = voc_root(path)
    xml_dir = root / "Annotations"
    parsed: dict[str, ET.Element] = {}
    for xml_path in sorted(xml_dir.glob("*.xml")):
        try:
            parsed[xml_path.stem] = ET.parse(xml_path).getroot()
        except ET.ParseError as err:
            problems.error(xml_path, f"malformed XML: {err}")
        except OSError as err:
            problems.error(xml_path, f"cannot read the file: {err.strerror}")
    classes, colormap = _classes(root, parsed)
    ids, listed, list_file = _split_ids(root, split, task, parsed)

    records = []
    for image_id, stem in enumerate(ids, start=1):
        leaves = leaves_folder(stem)
        if leaves:  # only ids from a split list can: the others are names of files here
            problems.error(
                list_file,
                f"image id {stem!r} {leaves}; ids name files in Annotations/ and JPEGImages/",
            )
            continue
        record = _record(root, stem, image_id, parsed.get(stem), classes, task, problems)
        if record is None:
            continue
        if task in _SEG_TASKS:
            needed = record.instance_png if task == "instance" else record.class_png
            if task == "segmentation" and needed is None:
                needed = record.instance_png
            if needed is None:
                if listed:
                    png = "SegmentationObject" if task == "instance" else "SegmentationClass"
                    problems.error(
                        root / png / f"{stem}.png", f"missing, but {list_file} lists {stem}"
                    )
                continue
        records.append(record)
    if task in _SEG_TASKS and not listed:
        logger.info("%s: %d of %d images have segmentation PNGs", root, len(records), len(ids))
    return ParsedSplit(records, classes, colormap=colormap)


def _classes(
    root: Path, parsed: dict[str, ET.Element]
) -> tuple[list[str], list[tuple[int, int, int]]]:
    colormap = voc_colormap()
    labelmap = root / "labelmap.txt"
    if labelmap.is_file():
        names: list[str] = []
        for n, line in enumerate(labelmap.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, rest = line.partition(":")
            color = rest.split(":", 1)[0]
            index = len(names) + (name != "background")
            if color:
                try:
                    r, g, b = (int(v) for v in color.split(","))
                except ValueError:
                    raise DataError(
                        labelmap, f"colour {color!r} is not r,g,b", field=f"line {n}"
                    ) from None
                colormap[index] = (r, g, b)
            if name != "background":
                names.append(name)
        return names, colormap
    found = {
        (obj.findtext("name") or "").strip()
        for root_el in parsed.values()
        for obj in root_el.findall("object")
    } - {""}
    if found <= set(VOC_CLASSES):
        return list(VOC_CLASSES), colormap
    return sorted(found), colormap


def _split_ids(
    root: Path, split: str | None, task: str, parsed: dict[str, ET.Element]
) -> tuple[list[str], bool, Path | None]:
    """Image ids of the split, whether a segmentation list promised PNGs, and the list."""
    if split is None:
        if task in _SEG_TASKS:
            pngs = {
                p.stem
                for d in ("SegmentationClass", "SegmentationObject")
                for p in (root / d).glob("*.png")
            }
            return sorted(set(parsed) | pngs), False, None
        return sorted(parsed), False, None
    seg_list = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    list_file = seg_list if task in _SEG_TASKS and seg_list.is_file() else None
    list_file = list_file or root / "ImageSets" / "Main" / f"{split}.txt"
    text = list_file.read_text(encoding="utf-8")
    ids = [line.split()[0] for line in text.splitlines() if line.strip()]
    return ids, list_file.parent.name == "Segmentation", list_file


def _find_image(root: Path, stem: str, filename: str | None) -> Path | None:
    image_dir = root / "JPEGImages"
    if filename and (image_dir / filename).is_file():
        return image_dir / filename
    for ext in IMAGE_EXTENSIONS:
        for candidate in (image_dir / f"{stem}{ext}", image_dir / f"{stem}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def _record(
    root: Path,
    stem: str,
    image_id: int,
    xml: ET.Element | None,
    classes: list[str],
    task: str,
    problems: Problems,
) -> ImageRecord | None:
    xml_path = root / "Annotations" / f"{stem}.xml"
    instance_png = root / "SegmentationObject" / f"{stem}.png"
    class_png = root / "SegmentationClass" / f"{stem}.png"
    instance_png = instance_png if instance_png.is_file() else None
    class_png = class_png if class_png.is_file() else None
    source = xml_path if xml is not None else (class_png or xml_path)
    if xml is None and not (task == "segmentation" and class_png is not None):
        if xml_path.is_file():
            return None  # malformed: reported while parsing
        problems.error(xml_path, "annotation file not found (the split list names it)")
        return None
    filename = (xml.findtext("filename") or "").strip() if xml is not None else ""
    leaves = leaves_folder(filename)
    if leaves:
        problems.error(
            source,
            f"{filename!r} {leaves}; file names are relative to JPEGImages/",
            field="filename",
        )
        return None
    image_path = _find_image(root, stem, filename)
    if image_path is None:
        problems.error(
            root / "JPEGImages" / (filename or f"{stem}.jpg"),
            f"image file not found (referenced by {Path(source).name})",
        )
        return None
    height, width = _size(xml, image_path, source, problems)
    if not height:
        return None
    builder = ObjectsBuilder(problems, source, height, width)
    label_of = {name: k + 1 for k, name in enumerate(classes)}
    for k, obj in enumerate(xml.findall("object") if xml is not None else []):
        name = (obj.findtext("name") or "").strip()
        where = f"object {k + 1} ({name or 'no name'})"
        if name not in label_of:
            problems.error(source, f"unknown category {name!r}", field=where)
            continue
        box = obj.find("bndbox")
        try:
            xmin, ymin, xmax, ymax = (
                float(box.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")
            )
        except (AttributeError, TypeError, ValueError):
            problems.error(source, "bndbox needs numeric xmin, ymin, xmax, ymax", field=where)
            continue
        builder.add(
            [xmin - 1, ymin - 1, xmax, ymax],
            label_of[name],
            ref=where,
            difficult=(obj.findtext("difficult") or "0").strip() in ("1", "true"),
            segment=k + 1 if instance_png is not None else None,
        )
    return builder.record(
        image_id=image_id,
        file_name=image_path.name,
        path=image_path,
        source=str(source),
        instance_png=instance_png,
        class_png=class_png,
    )


def _size(
    xml: ET.Element | None, image_path: Path, source: Path, problems: Problems
) -> tuple[int, int]:
    try:
        width = int(float(xml.findtext("size/width")))
        height = int(float(xml.findtext("size/height")))
        if width > 0 and height > 0:
            return height, width
    except (AttributeError, TypeError, ValueError):
        pass
    try:  # missing or zero <size>: many tools leave it out; the header is cheap to read
        return image_size(image_path, ref=f"referenced by {Path(source).name}")
    except DataError as err:
        problems.add(err)
        return 0, 0


# ----------------------------------------------------------------------------- writing

SHARED_IMAGES = True  # one JPEGImages/ for all splits: file names must be unique overall


def image_dir(dst: Path, split: str) -> Path:
    return dst / "JPEGImages"


def write_split(
    dst: Path, split: str, dataset: VisionDataset, image_names: Sequence[str], notes: set[str]
) -> None:
    """Write XML files, split lists and (when masks exist) the segmentation PNGs."""
    palette = voc_colormap()
    for folder in ("Annotations", "ImageSets/Main"):
        (dst / folder).mkdir(parents=True, exist_ok=True)
    main_ids, seg_ids = [], []
    # Empty images of a dataset with masks get (all-background) PNGs too: they belong to
    # the segmentation split.
    masked = any(
        r.class_png is not None or (r.has_masks and len(r.labels)) for r in dataset.records
    )
    for record, name in zip(dataset.records, image_names):
        stem = Path(name).stem
        if record.relations.shape[0]:
            notes.add("voc: relationships are not written (VOC has none)")
        if record.iscrowd.any():
            notes.add("voc: crowd annotations (iscrowd) are written as difficult objects")
        _write_xml(dst / "Annotations" / f"{stem}.xml", record, name, dataset.classes)
        main_ids.append(stem)
        if masked and _write_masks(dst, stem, record, dataset, palette, notes):
            seg_ids.append(stem)
    (dst / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{s}\n" for s in main_ids))
    if seg_ids:
        seg_list = dst / "ImageSets" / "Segmentation" / f"{split}.txt"
        seg_list.parent.mkdir(parents=True, exist_ok=True)
        seg_list.write_text("".join(f"{s}\n" for s in seg_ids))


def _write_xml(path: Path, record: ImageRecord, file_name: str, classes: list[str]) -> None:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = file_name
    size = ET.SubElement(root, "size")
    for tag, value in (("width", record.width), ("height", record.height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = str(int(record.has_masks))
    for j in range(len(record.labels)):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = classes[int(record.labels[j]) - 1]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        difficult = bool(record.difficult[j]) or bool(record.iscrowd[j])
        ET.SubElement(obj, "difficult").text = str(int(difficult))
        x1, y1, x2, y2 = (float(v) for v in record.boxes[j])
        xmin, ymin = max(round(x1), 0) + 1, max(round(y1), 0) + 1
        xmax = max(min(round(x2), record.width), xmin)
        ymax = max(min(round(y2), record.height), ymin)
        box = ET.SubElement(obj, "bndbox")
        for tag, value in (("xmin", xmin), ("ymin", ymin), ("xmax", xmax), ("ymax", ymax)):
            ET.SubElement(box, tag).text = str(value)
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=False)


def _write_masks(
    dst: Path,
    stem: str,
    record: ImageRecord,
    dataset: VisionDataset,
    palette: list[tuple[int, int, int]],
    notes: set[str],
) -> bool:
    if record.class_png is None and not (record.has_masks or not len(record.labels)):
        if any(s is not None for s in record.segments):
            notes.add("voc: images where only some objects have masks get no segmentation PNGs")
        return False
    semantic = record_semantic(record, len(dataset.classes), dataset.colormap)
    for folder in ("SegmentationClass", "SegmentationObject"):
        (dst / folder).mkdir(parents=True, exist_ok=True)
    save_label_png(dst / "SegmentationClass" / f"{stem}.png", semantic, palette)
    if len(record.labels) >= IGNORE_INDEX:  # indices 1..254; 255 is the boundary value
        notes.add(
            f"voc: images with more than {IGNORE_INDEX - 1} objects get no SegmentationObject PNG"
        )
    elif record.has_masks or not len(record.labels):
        masks = record_masks(record)
        if masks.shape[0] and (masks.sum(0) > 1).any():
            notes.add(
                "voc: overlapping instance masks cannot all be kept in SegmentationObject "
                "PNGs: overlapping pixels go to the later object"
            )
        objects = torch.zeros(masks.shape[1:], dtype=torch.int64)
        for j in range(masks.shape[0]):
            objects[masks[j]] = j + 1
        save_label_png(dst / "SegmentationObject" / f"{stem}.png", objects, palette)
    return True


def finish(dst: Path, dataset: VisionDataset, splits: Sequence[str], notes: set[str]) -> None:
    """Write ``labelmap.txt`` so the class order survives the round trip."""
    palette = voc_colormap()
    lines = ["# label:color_rgb:parts:actions", "background:0,0,0::"]
    lines += [
        f"{name}:{','.join(map(str, palette[k + 1]))}::" for k, name in enumerate(dataset.classes)
    ]
    (dst / "labelmap.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")

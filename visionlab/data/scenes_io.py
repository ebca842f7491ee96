"""Files of the scenes dataset: a fast deterministic PNG writer, the object-crop rule, and
the views derived from COCO files (classification crops, semantic masks).

The crop rule is shared by :func:`visionlab.data.scenes.render_scenes` (crops straight from
the rendered pixels) and :func:`write_crops` (crops from the COCO files), so both produce
byte-identical crops. :func:`write_crops` and :func:`semantic_mask` work on any COCO dataset.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from visionlab.errors import DataError, VisionLabError

CROP_MIN_VISIBILITY = 0.5  # visible fraction of the shape below which no crop is made
CROP_MIN_SIDE = 12  # px, longer side of the box below which no crop is made
CROP_MARGIN = 0.25  # the square crop's side is (1 + CROP_MARGIN) x the box's longer side

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def encode_png(image: np.ndarray) -> bytes:
    """A standard 8-bit RGB PNG of ``image`` (uint8 ``[H, W, 3]``).

    Why not Pillow: its encoder tries every PNG filter on every row, which on these noisy
    images costs more than drawing the scene. Here every row uses the "Sub" filter (the
    difference to the pixel on the left, which turns smooth backgrounds and flat shapes
    into small numbers) and deflate codes them with Huffman coding only: faster than Pillow,
    files about its size (measured: README "Models and measured results"), and the same
    bytes for the same pixels (any PNG reader, Pillow included, decodes them exactly).
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected uint8 [H, W, 3], got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    rows = np.ascontiguousarray(image).reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), dtype=np.uint8)
    filtered[:, 0] = 1  # filter type "Sub"
    filtered[:, 1:4] = rows[:, :3]
    np.subtract(rows[:, 3:], rows[:, :-3], out=filtered[:, 4:])  # wraps modulo 256
    deflate = zlib.compressobj(1, zlib.DEFLATED, 15, 8, zlib.Z_HUFFMAN_ONLY)
    data = deflate.compress(filtered.tobytes()) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return _PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write :func:`encode_png` bytes to ``path``."""
    with open(path, "wb") as f:
        f.write(encode_png(image))


def croppable(bbox: list[float], visibility: float = 1.0) -> bool:
    """The crop rule: a box ``[x, y, w, h]`` whose longer side is at least
    ``CROP_MIN_SIDE`` px, of an object at least ``CROP_MIN_VISIBILITY`` visible."""
    return visibility >= CROP_MIN_VISIBILITY and max(bbox[2], bbox[3]) >= CROP_MIN_SIDE


def crop_square(image: np.ndarray, bbox: list[float], size: int) -> np.ndarray:
    """The square around a COCO box ``[x, y, w, h]``, resized to ``size`` x ``size``.

    The side is ``(1 + CROP_MARGIN)`` times the box's longer side (at most the image's
    shorter side); the square is centred on the box and shifted to stay in the image, so it
    always holds the whole box. Returns uint8 ``[size, size, 3]``.
    """
    height, width = image.shape[:2]
    x, y, w, h = bbox
    side = min(math.ceil((1 + CROP_MARGIN) * max(w, h)), height, width)
    x0 = min(max(round(x + w / 2 - side / 2), 0), width - side)
    y0 = min(max(round(y + h / 2 - side / 2), 0), height - side)
    crop = Image.fromarray(np.ascontiguousarray(image[y0 : y0 + side, x0 : x0 + side]))
    return np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so readers never see half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- from COCO files


def semantic_mask(annotations: list[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """Semantic segmentation from instance annotations: ``int64 [height, width]``, 0 for
    background and each annotation's ``category_id`` on its mask (later ones win where
    masks overlap; in the scenes dataset they never do). Segmentations may be RLE (counts
    as str, bytes or list) or polygons."""
    semantic = np.zeros((height, width), dtype=np.int64)
    for ann in annotations:
        seg = ann["segmentation"]
        if isinstance(seg, list) or isinstance(seg.get("counts"), list):
            seg = mask_utils.frPyObjects(seg, height, width)
            seg = mask_utils.merge(seg) if isinstance(seg, list) else seg
        semantic[mask_utils.decode([seg])[:, :, 0].astype(bool)] = int(ann["category_id"])
    return semantic


def _load_coco(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(path, "annotation file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(path, f"not a readable JSON file ({err})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise DataError(path, "missing or not a list", field=key)
    return data


def _folder_name(label: Any, path: Path, field: str) -> str:
    if not isinstance(label, str) or label.strip(".") == "" or "/" in label or "\\" in label:
        raise DataError(path, f"{label!r} cannot name a folder", field=field)
    return label


def _label_of(ann: dict[str, Any], attribute: str, names: dict[Any, Any], path: Path) -> str:
    where = f"annotations[id={ann.get('id')}]"
    if attribute == "category":
        if ann.get("category_id") not in names:
            raise DataError(path, "unknown category id", field=f"{where}.category_id")
        return _folder_name(names[ann["category_id"]], path, f"{where}.category_id")
    return _folder_name(ann.get(attribute), path, f"{where}.{attribute}")


def write_crops(
    root: str | Path,
    out: str | Path,
    *,
    split: str,
    attribute: str = "category",
    size: int = 64,
    progress: bool = True,
) -> Path:
    """Crop the objects of a COCO dataset into an image-folder classification dataset.

    Reads ``root/annotations/instances_{split}.json`` and ``root/images/{split}/`` and
    writes ``out/{split}/<label>/<image stem>_<k>.png`` (k = the annotation's position
    among its image's annotations) with the crop rule of :func:`croppable` and
    :func:`crop_square`. ``write_crops(root, root / "crops", split="train")`` on a scenes
    dataset rebuilds exactly its ``crops/train``; ``attribute="color"`` labels the same
    crops by colour (for transfer experiments). Crowd annotations are skipped, and a
    missing ``visibility`` counts as fully visible.

    Args:
        root: a dataset in COCO layout.
        out: where the split folder goes; ``out/{split}`` must be new or empty.
        split: "train", "val", ... (names the annotation file and the image folder).
        attribute: "category" (the class name) or "color" (the annotation's ``color``).
        size: side of the crops in px.

    Returns:
        ``Path(out) / split``.
    """
    from visionlab.data.imageio import open_image  # imports torch: only when needed

    if attribute not in ("category", "color"):
        raise VisionLabError(f"attribute must be 'category' or 'color', got {attribute!r}")
    if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 1024:
        raise VisionLabError(f"size must be an integer in 8..1024, got {size!r}")
    root = Path(root)
    path = root / "annotations" / f"instances_{split}.json"
    data = _load_coco(path)
    names = {c.get("id"): c.get("name") for c in data["categories"] if isinstance(c, dict)}
    colors = [c for c in data.get("colors") or [] if isinstance(c, dict)]
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann.get("image_id"), []).append(ann)
    target = Path(out) / split
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DataError(target, "already exists and is not an empty folder; choose a new one")
    labels = [_label_of(a, attribute, names, path) for a in data["annotations"]]
    # a folder for every known label, even one without crops in this split
    known = names.values() if attribute == "category" else [c.get("name") for c in colors]
    for label in dict.fromkeys([*known, *labels]):
        (target / _folder_name(label, path, attribute)).mkdir(parents=True, exist_ok=True)
    label_of = {id(a): label for a, label in zip(data["annotations"], labels)}
    for image in tqdm(data["images"], desc=f"crops {split}", unit="img", disable=not progress):
        anns = by_image.get(image.get("id"), [])
        wanted = []
        for k, ann in enumerate(anns):
            bbox = ann.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4):
                field = f"annotations[id={ann.get('id')}].bbox"
                raise DataError(path, "expected [x, y, w, h]", field=field)
            if not ann.get("iscrowd") and croppable(bbox, float(ann.get("visibility", 1.0))):
                wanted.append((k, ann))
        if not wanted:
            continue
        file_name = str(image.get("file_name"))
        ref = f"image_id={image.get('id')}"
        with open_image(root / "images" / split / file_name, ref=ref) as img:
            pixels = np.asarray(img.convert("RGB"))
        stem = Path(file_name).stem
        for k, ann in wanted:
            crop = crop_square(pixels, [float(v) for v in ann["bbox"]], size)
            write_png(target / label_of[id(ann)] / f"{stem}_{k}.png", crop)
    return target

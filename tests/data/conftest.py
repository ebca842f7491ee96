"""Tiny hand-made datasets in every supported format, built in tmp_path (a few small images
and annotation files each), plus one small scenes render shared by the whole session."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils


def write_image(path: Path, width: int, height: int, color=(200, 30, 30), mode="RGB") -> Path:
    """A solid image with a 4x4 white square at the top-left (so orientation is visible)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.zeros((height, width, 3), np.uint8)
    array[:] = color
    array[:4, :4] = 255
    img = Image.fromarray(array)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path)
    return path


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def make_image() -> Callable[..., Path]:
    return write_image


def _rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    flat = mask.astype(np.uint8).flatten(order="F")  # COCO RLE runs go down columns
    counts, value, run = [], 0, 0
    for pixel in flat:
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def coco_train_json() -> dict[str, Any]:
    """Three train images (40x30, 40x30, 32x32 without objects), non-contiguous and unsorted
    category ids, one polygon, one RLE, one uncompressed-RLE crowd, one relationship."""
    dog_mask = np.zeros((30, 40), bool)
    dog_mask[5:15, 15:25] = True
    crowd_mask = np.zeros((30, 40), bool)
    crowd_mask[0:10, 0:20] = True
    return {
        "images": [
            {"id": 10, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 11, "file_name": "b.png", "width": 40, "height": 30},
            {"id": 12, "file_name": "c.png", "width": 32, "height": 32},
        ],
        "categories": [
            {"id": 7, "name": "dog"},
            {"id": 3, "name": "cat"},
            {"id": 12, "name": "bird"},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 3, "bbox": [2, 3, 10, 8], "iscrowd": 0,
             "segmentation": [[2, 3, 12, 3, 12, 11, 2, 11]], "area": 80},
            {"id": 2, "image_id": 10, "category_id": 7, "bbox": [15, 5, 10, 10], "iscrowd": 0,
             "segmentation": _rle(dog_mask), "area": 100},
            {"id": 5, "image_id": 11, "category_id": 12, "bbox": [0, 0, 20, 10], "iscrowd": 1,
             "segmentation": _uncompressed_rle(crowd_mask), "area": 200},
        ],
        "predicates": [{"id": 1, "name": "left of"}, {"id": 2, "name": "near"}],
        "relationships": [
            {"id": 1, "image_id": 10, "subject_id": 1, "predicate_id": 1, "object_id": 2},
            {"id": 2, "image_id": 10, "subject_id": 2, "predicate_id": 2, "object_id": 1},
        ],
    }  # fmt: skip


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    """``annotations/instances_{train,val}.json`` + ``images/{train,val}/``."""
    root = tmp_path / "coco"
    for name, size in (("a.png", (40, 30)), ("b.png", (40, 30)), ("c.png", (32, 32))):
        write_image(root / "images" / "train" / name, *size)
    write_image(root / "images" / "val" / "d.png", 20, 20)
    write_json(root / "annotations" / "instances_train.json", coco_train_json())
    val = {
        "images": [{"id": 1, "file_name": "d.png", "width": 20, "height": 20}],
        "categories": coco_train_json()["categories"],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 12, "bbox": [1, 1, 5, 5]}],
    }
    write_json(root / "annotations" / "instances_val.json", val)
    return root


def _voc_xml(filename: str, width: int, height: int, objects: list[tuple]) -> str:
    parts = [f"<annotation><filename>{filename}</filename>"]
    parts.append(f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>")
    for name, difficult, (x1, y1, x2, y2) in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>{difficult}</difficult>"
            f"<part><name>head</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax>"
            f"<ymax>2</ymax></bndbox></part>"
            f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
            f"</bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def write_palette_png(path: Path, array: np.ndarray) -> None:
    from visionlab.data.voc import voc_colormap

    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array.astype(np.uint8))
    img.putpalette([c for rgb in voc_colormap() for c in rgb])
    img.save(path)


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """VOC with standard class names: img1 (person + difficult dog, both segmented),
    img2 (car); Main train/val lists and a Segmentation train list."""
    root = tmp_path / "VOC2012"
    write_image(root / "JPEGImages" / "img1.jpg", 48, 32)
    write_image(root / "JPEGImages" / "img2.jpg", 30, 20)
    xml1 = _voc_xml(
        "img1.jpg", 48, 32, [("person", 0, (5, 6, 20, 25)), ("dog", 1, (25, 3, 40, 30))]
    )
    xml2 = _voc_xml("img2.jpg", 30, 20, [("car", 0, (1, 1, 30, 20))])
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "img1.xml").write_text(xml1)
    (root / "Annotations" / "img2.xml").write_text(xml2)
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "train.txt").write_text("img1\n")
    (main / "val.txt").write_text("img2\n")
    (main / "person_train.txt").write_text("img1  1\n")  # per-class list: not a split
    seg = root / "ImageSets" / "Segmentation"
    seg.mkdir(parents=True)
    (seg / "train.txt").write_text("img1\n")
    objects = np.zeros((32, 48), np.uint8)
    objects[6:25, 5:20] = 1
    objects[3:30, 25:40] = 2
    objects[5, 4:21] = 255  # boundary pixels (ignore)
    classes = np.where(objects == 1, 15, np.where(objects == 2, 12, objects))  # person, dog
    write_palette_png(root / "SegmentationObject" / "img1.png", objects)
    write_palette_png(root / "SegmentationClass" / "img1.png", classes)
    return root


@pytest.fixture
def yolo_root(tmp_path: Path) -> Path:
    """names as a dict; train = a folder, val = a .txt list; a polygon line; an image
    without a label file."""
    root = tmp_path / "yolo"
    write_image(root / "images" / "train" / "x.jpg", 50, 40)
    write_image(root / "images" / "train" / "y.jpg", 20, 20)
    write_image(root / "images" / "val" / "z.jpg", 10, 10)
    labels = root / "labels" / "train"
    labels.mkdir(parents=True)
    (labels / "x.txt").write_text("0 0.5 0.5 0.2 0.25\n1 0.1 0.1 0.3 0.1 0.3 0.4\n")
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "val" / "z.txt").write_text("1 0.5 0.5 1 1\n")
    (root / "val.txt").write_text("images/val/z.jpg\n")
    (root / "data.yaml").write_text(
        "train: images/train\nval: val.txt\nnames:\n  0: cat\n  1: dog\n"
    )
    return root


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    root = tmp_path / "folder"
    write_image(root / "train" / "dog" / "1.png", 8, 8)
    write_image(root / "train" / "cat" / "1.png", 8, 8)
    write_image(root / "train" / "cat" / "nested" / "2.png", 8, 8)
    write_image(root / "val" / "cat" / "3.png", 8, 8)
    write_image(root / "val" / "bird" / "4.jpg", 8, 8)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="session")
def scenes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny scenes render (10 train + 4 val images of 64 px), once per session."""
    from visionlab.data.scenes import render_scenes

    out = tmp_path_factory.mktemp("scenes") / "scenes"
    return render_scenes(out, n_train=10, n_val=4, size=64, seed=0, progress=False, workers=0)


def tree_digest(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its bytes: to assert a source was not modified."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture
def digest() -> Callable[[Path], dict[str, bytes]]:
    return tree_digest

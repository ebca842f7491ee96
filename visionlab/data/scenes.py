"""The built-in synthetic "scenes" dataset: coloured shapes on textured backgrounds, with
boxes, classes, instance and semantic masks, relationships and a classification view.

It is rendered, never downloaded: :func:`default_scenes_root` renders the default version
once into ``$VISIONLAB_HOME`` and the demo, the tests and the benchmarks all use it.

Images
    ``size`` x ``size`` RGB (default 128). The background is a linear gradient between two
    random muted colours (grey 0.15..0.85 plus a tint of up to 0.2 per channel) in a random
    direction, plus one texture drawn with equal chance: none, stripes (random angle, period
    4 px to ``size``/4), smooth blotches (3x3 to 11x11 random noise, bilinear upsampled) or a
    checkerboard (cells 4 px to ``size``/6), of amplitude 0.04..0.14. Uniform per-pixel
    noise with a standard deviation of 1% to 5% of the range covers everything. Files are
    8-bit RGB PNGs ``images/{split}/000001.png``, ... (image id = number).

Objects
    0 to 8 per image (uniform; about 1 in 9 images is empty before the drop rule below).
    Classes ``SCENE_CLASSES`` (category ids 1..7 in this order): circle, square, triangle,
    star, cross, hexagon, ring. Colours ``SCENE_COLORS``: red, orange, yellow, green, cyan,
    blue, purple, pink, drawn independently of the class; each object's colour is jittered
    by up to 0.06 (of the range) per channel and shaded by a brightness ramp of up to
    +-15% across it in a random direction, and its name is stored on the annotation as
    ``"color"`` (a second label for transfer experiments). The size of a shape is the
    diameter of its circumscribed circle, drawn log-uniformly from 8 px to ``size``/2; its
    centre is uniform in the central 90% of the image (so it may leave the image) and its
    rotation uniform. With probability 0.25 a shape is instead nested on an earlier shape
    of at least 24 px: at most half its size, centre offset by at most 0.2 of the earlier
    size along each axis (this makes "inside" and "in front of" common, and puts shapes
    in the holes of rings).

Occlusion and the drop rule
    Shapes are drawn in order, each one covering the earlier ones. A shape is removed from
    the scene when less than 25% of its pixels stay visible (covered by later shapes or
    outside the image) or when the tight box of its visible pixels has a longer side below
    6 px. Removed shapes are not painted at all (removal only uncovers others, so one pass
    suffices): every shape pixel in an image belongs to exactly one annotation.

Annotations (COCO, one file per split)
    ``annotations/instances_{train,val}.json`` holds ``info`` (the generation arguments),
    ``licenses`` (empty), ``images`` (``id`` from 1, ``file_name`` the bare name in
    ``images/{split}/``, ``width``, ``height``), ``categories`` (``id`` 1..7, ``name``,
    ``supercategory`` "shape"), ``annotations``, ``colors`` (``name``, ``rgb``),
    ``predicates`` and ``relationships``. An annotation has ``id`` (unique in the split,
    from 1, in image order then z-order), ``image_id``, ``category_id``, ``bbox`` (the
    tight box of the visible pixels, ``[x, y, w, h]`` floats), ``area`` (the visible pixel
    count), ``segmentation`` (RLE of the visible pixels from ``pycocotools.mask.encode``,
    ``{"size": [H, W], "counts": str}``), ``iscrowd`` 0, ``color`` and ``visibility``
    (visible pixels / pixels of the whole shape, 4 decimals).

Semantic segmentation
    Not stored: it is the union of the instance masks, each painted with its category id
    (0 = background). Instance masks never overlap, so the order does not matter;
    :func:`semantic_mask` computes it.

Relationships
    Every ordered pair of distinct objects of an image (subject, object) gets exactly one
    predicate: the first of ``PREDICATES`` that holds, with boxes being the tight boxes of
    the visible pixels (x2, y2 exclusive):

    1. ``inside``: the subject's box lies within the object's box and is smaller in area.
    2. ``in front of``: visible pixels of the subject cover at least 4 pixels of the
       object's whole shape (the subject was drawn later and hides part of it).
    3. ``overlapping``: the two boxes share a positive area.
    4. ``bigger than``: the subject has at least 4 times the object's visible area.
    5. ``left of``: the subject's box ends left of where the object's box starts.
    6. ``right of``: the subject's box starts right of where the object's box ends.
    7. ``above`` / 8. ``below``: the same along y (boxes that do not overlap are apart
       along x or y, so one of 5 to 8 always holds).

    So an image with n objects has n (n - 1) relationships (at most 56). A horizontal flip
    swaps "left of" and "right of" and leaves the other labels unchanged. They are stored
    as ``predicates`` (``id`` 1..8 in this order, ``name``; predicate index = id - 1 in
    ``PREDICATES``) and ``relationships`` (``id``, ``image_id``, ``subject_id``,
    ``predicate_id``, ``object_id``; subject and object are annotation ids).

Classification view
    ``crops/{train,val}/<class>/<image stem>_<k>.png``: the k-th annotation of an image
    (k from 0) cropped as a square of side 1.25 x its box's longer side, centred on the box
    and shifted to stay in the image, resized to ``crop_size`` (64) px. Only objects at
    least 50% visible whose box has a longer side of at least 12 px are cropped.
    :func:`write_crops` builds the same folders from the COCO files, labelled by class or
    by colour.

Determinism
    Image ``i`` of a split is drawn from its own generator, seeded with
    ``(seed, split, i)``; any number of worker processes gives the same files, and the same
    arguments give byte-identical files on the same platform and library versions. Any
    change to these rules bumps ``SCENES_VERSION``, which names the built-in copy.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from visionlab.data.scenes_draw import PREDICATES, SCENE_CLASSES, SCENE_COLORS, render_scene
from visionlab.data.scenes_io import (
    atomic_write_text,
    crop_square,
    croppable,
    semantic_mask,
    write_crops,
    write_png,
)
from visionlab.errors import DataError, VisionLabError
from visionlab.paths import ensure_output_dir, visionlab_home

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_SCENES_ARGS",
    "PREDICATES",
    "SCENES_VERSION",
    "SCENE_CLASSES",
    "SCENE_COLORS",
    "default_scenes_root",
    "render_images",
    "render_scenes",
    "render_split",
    "semantic_mask",
    "visionlab_home",
    "write_crops",
]

SCENES_VERSION = 1
DEFAULT_SCENES_ARGS: dict[str, int] = {"n_train": 2000, "n_val": 500, "size": 128, "seed": 0}
COMPLETE_MARKER = ".complete"
SPLITS = ("train", "val")

log = logging.getLogger(__name__)


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise VisionLabError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise VisionLabError(f"{name} must be {bound}, got {value}")
    return int(value)


def _check_empty_target(path: Path) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise DataError(path, "already exists and is not an empty folder; choose a new one")


# ---------------------------------------------------------------------------- rendering


def _scene_record(
    split: str, index: int, size: int, seed: int, out: str | None, crop_size: int
) -> dict[str, Any]:
    """Render one image; write its PNG and crops under ``out`` unless None.

    Returns ``{"image", "annotations" (no ids yet), "relations" [(k, p, k)]}``."""
    scene = render_scene(size, seed, split, index)
    image_id = index + 1
    file_name = f"{image_id:06d}.png"
    n = len(scene.objects)
    # [n, W, H] in C order is [H, W, n] in Fortran order, the layout pycocotools wants
    ids_t = np.ascontiguousarray(scene.instance_map.T)
    masks = ids_t[None] == np.arange(1, n + 1, dtype=np.int32)[:, None, None]
    rles = mask_utils.encode(masks.view(np.uint8).transpose(2, 1, 0)) if n else []
    annotations = []
    for obj, rle in zip(scene.objects, rles):
        x1, y1, x2, y2 = obj.box
        annotations.append(
            {
                "category_id": obj.category + 1,
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                "area": float(obj.visible_area),
                "segmentation": {"size": [size, size], "counts": rle["counts"].decode("ascii")},
                "iscrowd": 0,
                "color": obj.color,
                "visibility": round(obj.visibility, 4),
            }
        )
    if out is not None:  # plain strings: pathlib costs more than the PNG here
        write_png(os.path.join(out, "images", split, file_name), scene.image)
        stem = file_name.removesuffix(".png")
        for k, ann in enumerate(annotations):
            if croppable(ann["bbox"], ann["visibility"]):
                label = SCENE_CLASSES[ann["category_id"] - 1]
                crop = crop_square(scene.image, ann["bbox"], crop_size)
                write_png(os.path.join(out, "crops", split, label, f"{stem}_{k}.png"), crop)
    image = {"id": image_id, "file_name": file_name, "width": size, "height": size}
    return {"image": image, "annotations": annotations, "relations": scene.relations}


def _render_chunk(job: tuple[str, range, int, int, str | None, int]) -> list[dict[str, Any]]:
    split, indices, size, seed, out, crop_size = job
    return [_scene_record(split, i, size, seed, out, crop_size) for i in indices]


def _run_jobs(jobs: list[Any], workers: int) -> Iterator[list[dict[str, Any]]]:
    """Chunk results in job order, from this process or a pool of ``workers``."""
    if workers <= 1 or len(jobs) <= 1:
        yield from map(_render_chunk, jobs)
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    with ctx.Pool(min(workers, len(jobs))) as pool:
        yield from pool.imap(_render_chunk, jobs)  # imap keeps the order


def _default_workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, 8))


def render_images(split: str, count: int, *, size: int = 128, seed: int = 0) -> torch.Tensor:
    """``Tensor[count, 3, size, size]`` float in [0, 1]: images ``0 .. count - 1`` of
    ``split`` rendered in memory (the pixels the dataset's PNG files hold)."""
    import torch

    images = [render_scene(size, seed, split, i).image for i in range(count)]  # uint8 HWC
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


def render_split(
    split: str,
    n: int,
    *,
    size: int = 128,
    seed: int = 0,
    out: str | Path | None = None,
    crop_size: int = 64,
    workers: int | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Render images ``0..n-1`` of ``split`` over a process pool, in order.

    With ``out`` the PNGs go to ``out/images/{split}/`` and the crops to
    ``out/crops/{split}/<class>/`` (the folders must exist); without it nothing is written
    (the benchmark's "no files" case). Returns one ``{"image", "annotations",
    "relations"}`` dict per image: annotations carry no ids yet, relations are
    ``(subject k, predicate index, object k)`` with k the annotation's place in its image.
    """
    if split not in SPLITS:
        raise VisionLabError(f"split must be one of {SPLITS}, got {split!r}")
    n = _check_int("n", n, 0)
    workers = _default_workers() if workers is None else workers
    # chunks of a few dozen images keep the pool busy and the progress bar moving
    chunk = max(1, min(64, math.ceil(n / max(workers, 1) / 8)))
    folder = None if out is None else str(out)
    jobs = [
        (split, range(i, min(i + chunk, n)), size, seed, folder, crop_size)
        for i in range(0, n, chunk)
    ]
    records: list[dict[str, Any]] = []
    with tqdm(total=n, desc=f"scenes {split}", unit="img", disable=not progress) as bar:
        for part in _run_jobs(jobs, workers):
            records += part
            bar.update(len(part))
    return records


def _coco_json(split: str, records: list[dict[str, Any]], arguments: dict[str, Any]) -> str:
    """The split's COCO file; ids are assigned here, in image order then z-order."""
    images, annotations, relationships = [], [], []
    next_id = 1
    for record in records:
        image_id = record["image"]["id"]
        images.append(record["image"])
        ann_ids = list(range(next_id, next_id + len(record["annotations"])))
        next_id += len(ann_ids)
        for ann_id, ann in zip(ann_ids, record["annotations"]):
            annotations.append({"id": ann_id, "image_id": image_id, **ann})
        for subj, predicate, obj in record["relations"]:
            relationships.append(
                {
                    "id": len(relationships) + 1,
                    "image_id": image_id,
                    "subject_id": ann_ids[subj],
                    "predicate_id": predicate + 1,
                    "object_id": ann_ids[obj],
                }
            )
    data = {
        "info": {
            "description": "visionlab synthetic scenes",
            "version": str(SCENES_VERSION),
            "generator": "visionlab.data.scenes.render_scenes",
            "split": split,
            "arguments": arguments,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"}
            for i, name in enumerate(SCENE_CLASSES)
        ],
        "colors": [{"name": name, "rgb": list(rgb)} for name, rgb in SCENE_COLORS.items()],
        "predicates": [{"id": i + 1, "name": name} for i, name in enumerate(PREDICATES)],
        "relationships": relationships,
    }
    return _dump_json(data)


def _dump_json(data: dict[str, Any]) -> str:
    """JSON with one list item per line: readable, diff-able, and written by the C encoder
    (``indent=`` would switch to the slower pure-Python one)."""
    parts = []
    for key, value in data.items():
        if isinstance(value, list) and value:
            items = ",\n".join(f"  {json.dumps(item)}" for item in value)
            parts.append(f" {json.dumps(key)}: [\n{items}\n ]")
        else:
            parts.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def render_scenes(
    out: str | Path,
    *,
    n_train: int = 2000,
    n_val: int = 500,
    size: int = 128,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
    crop_size: int = 64,
) -> Path:
    """Render the scenes dataset in COCO layout into ``out`` (a new or empty folder).

    Writes ``out/images/{train,val}/*.png``, ``out/annotations/instances_{train,val}.json``
    and the classification view ``out/crops/{train,val}/<class>/*.png``; the module
    docstring describes the contents and every rule.

    Args:
        out: destination folder; created, and refused when it exists and is not empty.
        n_train, n_val: number of images per split.
        size: image side in px, 32..4096.
        seed: base seed (>= 0); image i of a split uses ``(seed, split, i)``.
        progress: show a tqdm bar per split.
        workers: processes (default: the available cores, at most 8); 0 or 1 renders in
            this process. The files do not depend on it.
        crop_size: side of the classification crops in px.

    Returns:
        ``Path(out)``.
    """
    n_train = _check_int("n_train", n_train, 0)
    n_val = _check_int("n_val", n_val, 0)
    size = _check_int("size", size, 32, 4096)
    seed = _check_int("seed", seed, 0)
    crop_size = _check_int("crop_size", crop_size, 8, 1024)
    if workers is not None:
        workers = _check_int("workers", workers, 0, 256)
    out = Path(out)
    _check_empty_target(out)
    ensure_output_dir(out)
    arguments = {"n_train": n_train, "n_val": n_val, "size": size, "seed": seed}
    arguments["crop_size"] = crop_size
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for split, n in zip(SPLITS, (n_train, n_val)):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        for name in SCENE_CLASSES:
            (out / "crops" / split / name).mkdir(parents=True, exist_ok=True)
        records = render_split(
            split,
            n,
            size=size,
            seed=seed,
            out=out,
            crop_size=crop_size,
            workers=workers,
            progress=progress,
        )
        text = _coco_json(split, records, arguments)
        atomic_write_text(out / "annotations" / f"instances_{split}.json", text)
    return out


# ---------------------------------------------------------------------------- the built-in copy


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (a no-op where ``fcntl`` does not exist; the
    rename below keeps the result correct then, at the price of rendering twice)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def default_scenes_root(*, progress: bool = True) -> Path:
    """The built-in dataset: ``$VISIONLAB_HOME/scenes-v1-s128-t2000-v500-seed0``.

    Rendered on first use with ``DEFAULT_SCENES_ARGS`` (a few seconds to a minute), then
    reused. Safe when several processes call it at once: one renders into a temporary
    folder, writes the ``.complete`` marker and renames the folder into place; the others
    wait on a lock file and find it complete.
    """
    args = DEFAULT_SCENES_ARGS
    home = visionlab_home()
    name = f"scenes-v{SCENES_VERSION}-s{args['size']}-t{args['n_train']}-v{args['n_val']}"
    root = home / f"{name}-seed{args['seed']}"
    if (root / COMPLETE_MARKER).is_file():
        return root
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(
            home, f"cannot create the dataset cache ({err}); set VISIONLAB_HOME"
        ) from None
    with _file_lock(home / f".{root.name}.lock"):
        if (root / COMPLETE_MARKER).is_file():
            return root
        if root.exists():
            raise DataError(root, "incomplete scenes dataset (no .complete marker); delete it")
        log.info("rendering the built-in scenes dataset into %s (once)", root)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=home))
        try:
            render_scenes(tmp, progress=progress, **args)
            marker = json.dumps({"version": SCENES_VERSION, **args}, indent=1) + "\n"
            (tmp / COMPLETE_MARKER).write_text(marker, encoding="utf-8")
            try:
                os.rename(tmp, root)
            except OSError:
                if not (root / COMPLETE_MARKER).is_file():  # not another process's copy
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root

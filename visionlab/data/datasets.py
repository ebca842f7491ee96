"""`load_dataset`: one entry point for every supported format, and the Dataset classes.

A dataset folder is recognised from its layout (:func:`detect_format`): COCO, VRD, Visual
Genome, Pascal VOC, YOLO or an image folder (one sub-folder per class). Annotations are
parsed once, at construction, into :class:`ImageRecord` s (boxes already in ``(x1, y1, x2,
y2)`` absolute pixels, labels already 1..C; the box rule is in
:mod:`visionlab.data.records`); images are decoded lazily in ``__getitem__``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from visionlab.constants import TASKS
from visionlab.data.imageio import load_image
from visionlab.data.problems import Problems
from visionlab.data.records import ImageRecord, ParsedSplit, record_masks, record_semantic
from visionlab.errors import DataError, VisionLabError

logger = logging.getLogger(__name__)

FORMATS = ("coco", "vrd", "vg", "voc", "yolo", "folder")

Target = dict[str, Any]


class VisionDataset(torch.utils.data.Dataset):
    """Common base: ``classes``, ``predicates``, ``format``, ``root``, ``split``, ``task``.

    ``dataset[i]`` is ``(image, target)``: image ``Tensor[3, H, W]`` float32 in [0, 1];
    ``annotations(i)`` is the same target without decoding the image (before transforms).
    """

    def __init__(
        self,
        parsed: ParsedSplit,
        *,
        format: str,
        root: Path,
        split: str,
        task: str,
        transforms: Callable[[torch.Tensor, Target], tuple[torch.Tensor, Target]] | None = None,
    ) -> None:
        self.records = parsed.records
        self.classes = list(parsed.classes)
        self.predicates = list(parsed.predicates)
        self.category_ids = list(parsed.category_ids) or list(range(1, len(self.classes) + 1))
        self.colormap = parsed.colormap
        self.format, self.root, self.split, self.task = format, Path(root), split, task
        self.transforms = transforms
        self._cache: dict[int, tuple[torch.Tensor, Target]] | None = None

    def cache_images(self, enable: bool = True) -> None:
        """Keep each decoded sample in memory after its first read (``cache: ram``).

        The cache holds the decoded image (``Tensor[3, H, W]`` float32) and its target
        (masks and semantic maps included) before transforms, so a cached read returns
        exactly what decoding the files returns; every read gets its own copies. It lives in
        the process that reads: DataLoader workers fill their own, dropped when they exit.
        """
        self._cache = {} if enable else None

    def _decode(self, i: int) -> tuple[torch.Tensor, Target]:
        record = self.records[i]
        image = load_image(record.path, ref=record.ref)
        if record.height and tuple(image.shape[1:]) != (record.height, record.width):
            raise DataError(
                record.path,
                f"image is {image.shape[1]}x{image.shape[2]} (HxW, after EXIF orientation) "
                f"but {record.source} says {record.height}x{record.width}",
                field=record.ref,
            )
        return image, self.annotations(i)

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(format={self.format!r}, root='{self.root}', "
            f"split={self.split!r}, task={self.task!r}, images={len(self)}, "
            f"classes={len(self.classes)})"
        )

    def record(self, i: int) -> ImageRecord:
        """The parsed record of image ``i`` (file path, size, raw objects)."""
        return self.records[i]

    def annotations(self, i: int) -> Target:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Target]:
        if self._cache is None:
            image, target = self._decode(i)
        else:
            if i not in self._cache:
                self._cache[i] = self._decode(i)
            image, target = _copy(self._cache[i])  # transforms may work in place
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def _copy(sample: tuple[torch.Tensor, Target]) -> tuple[torch.Tensor, Target]:
    image, target = sample
    return image.clone(), {
        k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in target.items()
    }


class DetectionDataset(VisionDataset):
    """COCO, VOC or YOLO data for the detection, instance and segmentation tasks.

    Targets (docs/interfaces.md): detection/instance: ``boxes [N, 4]`` float32 xyxy,
    ``labels [N]`` int64 1..C, ``iscrowd [N]``, ``difficult [N]`` bool, ``relations [R, 3]``,
    ``image_id``, ``file_name``, ``orig_size (H, W)``, plus ``masks [N, H, W]`` bool for
    "instance". Segmentation: ``semantic [H, W]`` int64 (0 background, 255 ignore).
    """

    def __init__(self, parsed: ParsedSplit, **kwargs: Any) -> None:
        super().__init__(parsed, **kwargs)
        if self.task not in ("instance", "segmentation"):
            return
        for record in self.records:
            if self.task == "segmentation" and record.class_png is not None:
                continue
            if record.boxes.shape[0] and not record.has_masks:
                missing = [r for r, s in zip(record.object_refs, record.segments) if s is None]
                raise DataError(
                    record.source,
                    f"task {self.task!r} needs a mask for every object; this one has none "
                    "(use task='detection')",
                    field=missing[0] if missing else record.ref,
                )

    def annotations(self, i: int) -> Target:
        record = self.records[i]
        base = {"image_id": record.image_id, "file_name": record.file_name}
        base["orig_size"] = (record.height, record.width)
        if self.task == "segmentation":
            semantic = record_semantic(record, len(self.classes), self.colormap)
            return {"semantic": semantic, **base}
        target = {
            "boxes": torch.from_numpy(record.boxes.copy()),
            "labels": torch.from_numpy(record.labels.copy()),
            "iscrowd": torch.from_numpy(record.iscrowd.copy()),
            "difficult": torch.from_numpy(record.difficult.copy()),
            "relations": torch.from_numpy(record.relations.copy()),
            **base,
        }
        if self.task == "instance":
            target["masks"] = record_masks(record)
        return target


class ImageFolderDataset(VisionDataset):
    """Classification data: one sub-folder per class. Target ``labels`` is a scalar int64 in
    0..C-1 (label k <-> ``classes[k]``), plus ``image_id`` and ``file_name``."""

    def annotations(self, i: int) -> Target:
        record = self.records[i]
        label = torch.tensor(record.category, dtype=torch.int64)
        return {"labels": label, "image_id": record.image_id, "file_name": record.file_name}


def format_module(fmt: str) -> Any:
    import importlib

    if fmt not in FORMATS:
        raise VisionLabError(f"unknown dataset format {fmt!r}; known: {', '.join(FORMATS)}")
    return importlib.import_module(f"visionlab.data.{fmt}")


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """``"scenes"`` -> the built-in scenes dataset (rendered on first use); else the path,
    which must exist."""
    if str(path) == "scenes" and not Path("scenes").exists():
        from visionlab.data.scenes import default_scenes_root

        return Path(default_scenes_root())
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise DataError(resolved, "dataset path does not exist")
    return resolved


def detect_format(path: str | os.PathLike[str]) -> str:
    """One of :data:`FORMATS` from the layout at ``path``, tried in that order.

    COCO: a ``.json`` file, or a folder with ``annotations/*.json``, ``*.json`` or
    ``SPLIT/*.json`` (json objects with ``images`` or ``categories``). VRD:
    ``annotations_{train,test}.json`` with ``objects.json`` and ``predicates.json``. Visual
    Genome: ``objects.json`` and ``relationships.json``. VOC: ``Annotations/`` or
    ``JPEGImages/`` (also under one ``VOC20xx`` folder). YOLO: a ``.yaml`` file, a folder
    with a data yaml or a ``labels/`` folder. Folder: sub-folders of images
    (``[SPLIT/]CLASS/*.jpg``).
    """
    path = Path(path)
    for fmt in FORMATS:
        if format_module(fmt).looks_like(path):
            return fmt
    raise DataError(
        path,
        "cannot tell the dataset format: expected COCO (annotations/*.json), VRD "
        "(annotations_train.json, objects.json, predicates.json), Visual Genome (objects.json, "
        "relationships.json), Pascal VOC (Annotations/*.xml, JPEGImages/), YOLO (data.yaml, "
        "images/ + labels/) or an image folder (one sub-folder of images per class)",
    )


def list_splits(path: Path, fmt: str, task: str = "detection") -> list[str]:
    """The splits a dataset has; ``["all"]`` when it has no split information."""
    return format_module(fmt).find_splits(path, task=task) or ["all"]


def match_split(split: str, found: Sequence[str]) -> str | None:
    """``split`` as named in ``found``: exact, or with a year (train -> train2017), or the
    usual aliases (val <-> valid, validation)."""
    if split in found:
        return split
    aliases = {"val": ("valid", "validation"), "valid": ("val",), "validation": ("val",)}
    for name in (split, *aliases.get(split, ())):
        hits = [f for f in found if f == name or re.fullmatch(re.escape(name) + r"\d{4}", f)]
        if len(hits) == 1:
            return hits[0]
    return None


def open_split(
    path: Path,
    fmt: str,
    split: str,
    *,
    task: str = "detection",
    problems: Problems | None = None,
    images: str | os.PathLike[str] | None = None,
    transforms: Callable[..., Any] | None = None,
) -> VisionDataset:
    """Read one split of a dataset whose format is known (see :func:`load_dataset`)."""
    problems = problems or Problems(strict=True)
    if (fmt == "folder") != (task == "classification"):
        if fmt == "folder":
            raise DataError(
                path, f"an image-folder dataset has no boxes or masks: task {task!r} needs them"
            )
        raise DataError(
            path,
            "task 'classification' needs an image-folder dataset (one sub-folder per class, "
            "or a crops/ folder next to the annotations)",
        )
    reader = format_module(fmt)
    found = reader.find_splits(path, task=task)
    if fmt == "coco" and path.is_file():
        key = None  # a json file is one split; `split` only names it
    elif not found:
        if split not in ("train", "all"):
            raise DataError(path, f"no split files, so the only split is 'all' (asked {split!r})")
        if split == "train":
            logger.info("%s has no split information: using all of it as 'train'", path)
        key = None
    else:
        key = match_split(split, found)
        if key is None:
            raise DataError(path, f"no split {split!r}; found: {', '.join(found)}")
    kwargs: dict[str, Any] = {"problems": problems}
    if fmt == "coco":
        kwargs["images"] = images
    if fmt != "folder":
        kwargs["task"] = task
    parsed = reader.read_split(path, key, **kwargs)
    cls = ImageFolderDataset if fmt == "folder" else DetectionDataset
    return cls(parsed, format=fmt, root=path, split=key or split, task=task, transforms=transforms)


def load_dataset(
    path: str | os.PathLike[str],
    split: str = "train",
    *,
    task: str = "detection",
    transforms: Callable[..., Any] | None = None,
    images: str | os.PathLike[str] | None = None,
) -> VisionDataset:
    """Open a dataset in any supported format.

    Args:
        path: a dataset folder (COCO, VRD, Visual Genome, VOC, YOLO or image folder, see
            :func:`detect_format`), a COCO json file, a YOLO data yaml, or ``"scenes"`` (the
            built-in dataset).
        split: e.g. ``"train"``, ``"val"``; ``train`` also finds ``train2017``, ``val`` finds
            ``valid``. A dataset without split files has the one split ``"all"`` (``"train"``
            then means all of it). A COCO json file is one split: ``split`` only names it.
        task: one of :data:`visionlab.constants.TASKS` (``"relation"`` reads what
            ``"detection"`` does). Classification reads an image folder, or the ``crops/``
            folder of a dataset root that has one (the scenes dataset does).
        transforms: ``(image, target) -> (image, target)``, applied in ``__getitem__``.
        images: the images folder for a COCO json file (default: tried in order, the json's
            folder, its parent, and ``images/`` under either, see :mod:`visionlab.data.coco`).

    Returns:
        A ``torch.utils.data.Dataset``; ``dataset[i] == (image, target)`` as in
        docs/interfaces.md, with ``classes``, ``predicates``, ``format``, ``root``, ``split``,
        ``task`` and ``annotations(i)`` (the target without decoding the image).

    Raises:
        DataError: the path is missing, the layout is not recognised, or a file is bad.
    """
    if task not in TASKS:
        raise VisionLabError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    root = resolve_path(path)
    if task == "classification" and root.is_dir() and (root / "crops").is_dir():
        root = root / "crops"
    fmt = detect_format(root)
    problems = Problems(strict=True)
    dataset = open_split(
        root, fmt, split, task=task, problems=problems, images=images, transforms=transforms
    )
    problems.flush()
    return dataset

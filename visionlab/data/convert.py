"""Convert a dataset between formats: any supported reader -> a COCO, VOC or YOLO writer.

Safe by construction: the source is only read (images are copied byte for byte, never moved
or re-encoded); the output is written to a temporary folder next to ``dst`` and renamed
into place at the end, so a failed run leaves nothing half-written. ``dst`` must not exist
or be empty; ``overwrite=True`` replaces it only when it is an earlier output of this
function (it holds the ``.visionlab-convert.json`` marker), never an arbitrary folder.
Whatever the target format cannot carry is logged once as a warning line per kind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from visionlab.data import datasets
from visionlab.data.problems import Problems
from visionlab.data.records import ImageRecord
from visionlab.errors import DataError, describe_class_mismatch
from visionlab.paths import ensure_output_dir

logger = logging.getLogger(__name__)

TARGETS = ("coco", "voc", "yolo")
MARKER = ".visionlab-convert.json"


def convert_dataset(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    to: str,
    splits: Sequence[str] | None = None,
    overwrite: bool = False,
    images: str | os.PathLike[str] | None = None,
    segments: bool = False,
    progress: bool = True,
) -> list[str]:
    """Write the dataset at ``src`` to ``dst`` in format ``to``.

    Args:
        src: a dataset in any supported detection format (COCO, VRD, Visual Genome, VOC,
            YOLO).
        dst: the output folder (must not exist, or be empty; see ``overwrite``).
        to: ``"coco"``, ``"voc"`` or ``"yolo"``.
        splits: the splits to convert (default every split found; split names are kept).
        overwrite: replace ``dst`` when it is an earlier output of this function.
        images: the images folder when ``src`` is a COCO json file.
        segments: YOLO only: write instance masks as segmentation polygons.
        progress: show progress bars.

    Returns:
        The warning lines about what the target format could not carry (also logged).
    """
    if to not in TARGETS:
        raise DataError(dst, f"cannot write format {to!r}; choose one of {', '.join(TARGETS)}")
    src_path = datasets.resolve_path(src)
    fmt = datasets.detect_format(src_path)
    if fmt == "folder":
        raise DataError(
            src_path,
            "an image-folder (classification) dataset has no boxes to "
            "convert to a detection format",
        )
    dst_path = Path(dst).expanduser()
    _check_destination(src_path, dst_path, overwrite)
    writer = datasets.format_module(to)
    splits = list(splits or datasets.list_splits(src_path, fmt))

    # An output that cannot be written is refused before the source is read; the folder made
    # for the check goes again if the conversion fails.
    made_dst = not dst_path.exists()
    ensure_output_dir(dst_path)
    tmp = dst_path.parent / f".{dst_path.name}.partial-{os.getpid()}"
    notes: set[str] = set()
    try:
        loaded = []
        for split in splits:
            problems = Problems(strict=True)
            loaded.append(
                datasets.open_split(src_path, fmt, split, problems=problems, images=images)
            )
            problems.flush()
        for other in loaded[1:]:
            if list(other.classes) != list(loaded[0].classes):
                mismatch = describe_class_mismatch(
                    f"split {loaded[0].split!r}",
                    loaded[0].classes,
                    f"split {other.split!r}",
                    other.classes,
                )
                raise DataError(
                    src_path, f"{mismatch}; convert the splits one at a time with --split"
                )
        tmp.mkdir(parents=True)
        taken: dict[str, Path] = {}
        for dataset in loaded:
            if not getattr(writer, "SHARED_IMAGES", False):
                taken = {}
            names = _unique_names(dataset.records, taken)
            out_dir = writer.image_dir(tmp, dataset.split)
            out_dir.mkdir(parents=True, exist_ok=True)
            desc = f"copying {dataset.split} images"
            for record, name in tqdm(
                list(zip(dataset.records, names)), desc=desc, disable=not progress, leave=False
            ):
                if not (out_dir / name).exists():
                    shutil.copyfile(record.path, out_dir / name)
            options: dict[str, Any] = {"segments": segments} if to == "yolo" else {}
            writer.write_split(tmp, dataset.split, dataset, names, notes, **options)
        writer.finish(tmp, loaded[0], [d.split for d in loaded], notes)
        marker = {
            "source": str(src_path.resolve()),
            "from": fmt,
            "to": to,
            "splits": [d.split for d in loaded],
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
        if dst_path.exists():
            shutil.rmtree(dst_path) if any(dst_path.iterdir()) else dst_path.rmdir()
        tmp.rename(dst_path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
        if made_dst and dst_path.is_dir() and not any(dst_path.iterdir()):
            dst_path.rmdir()
    for note in sorted(notes):
        logger.warning("%s", note)
    return sorted(notes)


def _check_destination(src: Path, dst: Path, overwrite: bool) -> None:
    src_r, dst_r = src.resolve(), dst.resolve()
    if dst_r == src_r or dst_r.is_relative_to(src_r) or src_r.is_relative_to(dst_r):
        raise DataError(dst, f"the output must be outside the source dataset {src}")
    if dst.exists() and not dst.is_dir():
        raise DataError(dst, "the output exists and is not a folder")
    if dst.is_dir() and any(dst.iterdir()):
        if not overwrite:
            raise DataError(
                dst,
                "the output folder is not empty (pass --overwrite to replace "
                "an earlier conversion)",
            )
        if not (dst / MARKER).is_file():
            raise DataError(
                dst,
                f"will not overwrite a folder visionlab did not write (no "
                f"{MARKER}); choose an empty or new folder",
            )


def _unique_names(records: Sequence[ImageRecord], taken: dict[str, Path]) -> list[str]:
    """Output file names, unique by stem (VOC and YOLO name annotation files by stem)."""
    names = []
    for record in records:
        stem, suffix = record.path.stem, record.path.suffix
        candidate, n = stem, 0
        while candidate in taken and taken[candidate] != record.path:
            n += 1
            candidate = f"{stem}_{record.image_id}" + (f"_{n}" if n > 1 else "")
        taken[candidate] = record.path
        names.append(candidate + suffix)
    return names

"""Image folders for classification: one sub-folder of images per class.

Layouts: ``ROOT/CLASS/*.jpg`` (one split, ``all``) or ``ROOT/SPLIT/CLASS/*.jpg`` with SPLIT
one of train, val, valid, validation, test. Class names are the sorted sub-folder names,
taken over every split so that label k means the same class in each (label k <->
``classes[k]``, 0..C-1). Images may sit in nested folders under their class folder;
files that are not images (by extension) and hidden files are ignored.
"""

from __future__ import annotations

from pathlib import Path

from visionlab.data.imageio import is_image_file
from visionlab.data.problems import Problems
from visionlab.data.records import ImageRecord, ParsedSplit

_SPLIT_NAMES = ("train", "val", "valid", "validation", "test")


def _visible_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_under(path: Path) -> list[Path]:
    """Image files below ``path``, skipping hidden files and folders *inside* it (the
    folder itself may live under a hidden one, such as ~/.cache)."""
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and is_image_file(p)
        and not any(s.startswith(".") for s in p.relative_to(path).parts)
    )


def _has_images(path: Path) -> bool:
    return any(is_image_file(p) for p in path.rglob("*") if p.is_file())


def find_splits(path: Path, *, task: str = "classification") -> list[str]:
    """Split folders (train/, val/, ...) that hold class folders; ``[]`` for one split."""
    if not path.is_dir():
        return []
    return [
        d.name
        for d in _visible_dirs(path)
        if d.name in _SPLIT_NAMES and any(_has_images(c) for c in _visible_dirs(d))
    ]


def looks_like(path: Path) -> bool:
    """Sub-folders of images (``CLASS/`` or ``SPLIT/CLASS/``)."""
    if not path.is_dir():
        return False
    return bool(find_splits(path)) or any(_has_images(d) for d in _visible_dirs(path))


def _classes(root: Path) -> list[str]:
    splits = find_splits(root)
    bases = [root / s for s in splits] if splits else [root]
    return sorted({d.name for base in bases for d in _visible_dirs(base)})


def read_split(path: Path, split: str | None, *, problems: Problems) -> ParsedSplit:
    """Records of one split: ``category`` is the class index 0..C-1."""
    classes = _classes(path)
    base = path / split if split else path
    loose = [p for p in base.iterdir() if p.is_file() and is_image_file(p)]
    if loose:
        problems.warn(
            loose[0],
            f"{len(loose)} image(s) directly in {base} (not in a class folder) are ignored",
            kind="image outside a class folder",
        )
    records: list[ImageRecord] = []
    for index, name in enumerate(classes):
        folder = base / name
        images = _images_under(folder) if folder.is_dir() else []
        if not images:
            problems.warn(folder, "class has no images in this split", kind="empty class")
        for image in images:
            records.append(
                ImageRecord(
                    image_id=len(records) + 1,
                    file_name=image.relative_to(base).as_posix(),
                    path=image,
                    height=0,
                    width=0,
                    source=str(folder),
                    category=index,
                )
            )
    return ParsedSplit(records, classes)

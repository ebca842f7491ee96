"""The ``visionlab data check`` report: every split of a dataset read in collecting mode
(:class:`~visionlab.data.problems.Problems` with ``strict=False``), with images, objects per
class, empty images, relationships per predicate (datasets with predicates) and every
problem found.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionlab.data import datasets
from visionlab.data.imageio import load_image
from visionlab.data.problems import Problem, Problems
from visionlab.data.records import record_masks, record_semantic
from visionlab.errors import DataError


@dataclass
class SplitReport:
    """What ``check`` found in one split."""

    split: str
    images: int = 0
    objects: int = 0
    empty_images: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    relationships: int = 0
    per_predicate: dict[str, int] = field(default_factory=dict)  # empty without predicates
    read: bool = True  # False when the split's annotations could not be read at all


@dataclass
class CheckReport:
    """The result of :func:`check_dataset`."""

    root: Path
    format: str
    splits: list[SplitReport]
    errors: list[Problem]
    warnings: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.errors


def check_dataset(
    path: str | Path,
    splits: list[str] | None = None,
    *,
    decode_images: bool = True,
    images: str | Path | None = None,
    progress: bool = True,
) -> CheckReport:
    """Read every split of a dataset, collecting problems instead of stopping at the first.

    Args:
        path: a dataset folder (or COCO json / YOLO yaml) in any supported format.
        splits: the splits to check; default all splits found.
        decode_images: decode every image and mask (finds corrupt and truncated files,
            size mismatches, undecodable masks); when False only the annotations and the
            files' presence are checked.
        images: the images folder for a COCO json file given directly.
        progress: show a progress bar while decoding.
    """
    path = datasets.resolve_path(path)
    fmt = datasets.detect_format(path)
    task = "classification" if fmt == "folder" else "detection"
    found = datasets.list_splits(path, fmt, task)
    problems = Problems(strict=False)
    reports: list[SplitReport] = []
    for split in splits or found:
        report = SplitReport(split)
        reports.append(report)
        try:
            dataset = datasets.open_split(
                path, fmt, split, task=task, problems=problems, images=images
            )
        except DataError as err:
            report.read = False
            problems.add(err)
            continue
        _count(dataset, report)
        if decode_images:
            _decode_all(dataset, problems, progress=progress)
    return CheckReport(path, fmt, reports, problems.errors, problems.warnings)


def _count(dataset: Any, report: SplitReport) -> None:
    report.images = len(dataset)
    counts: Counter[int] = Counter()
    predicates: Counter[int] = Counter()
    for i in range(len(dataset)):
        target = dataset.annotations(i)
        labels = target["labels"].reshape(-1).tolist()
        counts.update(labels)
        report.objects += len(labels)
        report.empty_images += not labels
        if "relations" in target:
            predicates.update(target["relations"][:, 1].tolist())
    if dataset.task == "classification":
        report.objects, report.empty_images = 0, 0
        report.per_class = {name: counts[k] for k, name in enumerate(dataset.classes)}
    else:
        report.per_class = {name: counts[k + 1] for k, name in enumerate(dataset.classes)}
    report.relationships = sum(predicates.values())
    report.per_predicate = {name: predicates[k] for k, name in enumerate(dataset.predicates)}


def _decode_all(dataset: Any, problems: Problems, *, progress: bool) -> None:
    from tqdm import tqdm

    desc = f"decoding {dataset.split} images"
    for i in tqdm(range(len(dataset)), desc=desc, disable=not progress, leave=False):
        record = dataset.record(i)
        try:
            if record.class_png is not None:
                record_semantic(record, len(dataset.classes), dataset.colormap)
            if len(record.labels) and record.has_masks:
                record_masks(record)
            image = load_image(record.path, ref=record.ref)
            size = tuple(image.shape[1:])
            if record.height and size != (record.height, record.width):
                problems.error(
                    record.path,
                    f"image is {size[0]}x{size[1]} (HxW, after EXIF orientation) but "
                    f"{record.source} says {record.height}x{record.width}",
                    field=record.ref,
                )
        except DataError as err:
            problems.add(err)


def format_report(report: CheckReport) -> str:
    """The text ``visionlab data check`` prints."""
    lines = [f"dataset: {report.root} ({report.format})"]
    for split in report.splits:
        if not split.read:
            lines.append(f"split {split.split}: could not be read (see errors)")
            continue
        if report.format == "folder":
            lines.append(f"split {split.split}: {split.images} images")
            lines.append("  images per class: " + _counts(split.per_class))
            continue
        lines.append(
            f"split {split.split}: {split.images} images, {split.objects} objects, "
            f"{split.empty_images} empty images"
        )
        lines.append("  objects per class: " + _counts(split.per_class))
        if split.per_predicate:
            lines.append(f"  relationships: {split.relationships}")
            lines.append("  relationships per predicate: " + _counts(split.per_predicate))
    for title, items in (("errors", report.errors), ("warnings", report.warnings)):
        lines.append(f"{title}: {len(items)}")
        lines += [f"  {item}" for item in items]
    lines.append("OK" if report.ok else "FAILED: the dataset has errors")
    return "\n".join(lines)


def _counts(per_class: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in per_class.items()) or "(no classes)"

"""Object size buckets shared by the benchmarks' "by size" tables: the longer side of the
box in the stored image's pixels, split where naming gets hard (the scenes classification
view crops nothing under 12 px)."""

from __future__ import annotations

import math
from collections.abc import Sequence

SIZE_BUCKETS: tuple[tuple[int, int | None], ...] = ((0, 12), (12, 20), (20, 32), (32, None))


def size_bucket(box: Sequence[float], scale: float = 1.0) -> int:
    """Index in :data:`SIZE_BUCKETS` of an xyxy ``box`` whose longer side, times ``scale``,
    is its size."""
    side = max(box[2] - box[0], box[3] - box[1]) * scale
    return next(i for i, (_, high) in enumerate(SIZE_BUCKETS) if high is None or side < high)


def bucket_names() -> list[str]:
    """Column headers: ``< 12 px``, ``12-20 px``, ``20-32 px``, ``>= 32 px``."""
    return [
        f"< {hi} px" if lo == 0 else f">= {lo} px" if hi is None else f"{lo}-{hi} px"
        for lo, hi in SIZE_BUCKETS
    ]


def size_head(first: str) -> list[str]:
    """The two header lines of a by-size table whose first column is ``first``."""
    return [
        f"| {first} | " + " | ".join(bucket_names()) + " |",
        "|:--|" + "--:|" * len(SIZE_BUCKETS),
    ]


def shares(counts: list[tuple[int, int]] | list[list[int]]) -> list[float]:
    """``hits / objects`` per bucket from ``(objects, hits, ...)`` rows (NaN: no object)."""
    return [row[1] / row[0] if row[0] else math.nan for row in counts]


def cell(value: float, digits: int = 2) -> str:
    """A table cell: the value, or ``-`` for NaN (a bucket without objects)."""
    return "-" if math.isnan(value) else f"{value:.{digits}f}"

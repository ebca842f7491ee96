"""Object size buckets shared by the benchmarks' "by size" tables.

The scenes objects are 8 to 64 px (longer side of the box at 128 px); the buckets split them
where naming gets hard: under 12 px (the scenes classification view crops nothing smaller),
12-20, 20-32 and from 32 px.
"""

from __future__ import annotations

import math

SIZE_BUCKETS: tuple[tuple[int, int | None], ...] = ((0, 12), (12, 20), (20, 32), (32, None))


def size_bucket(side: float) -> int:
    """Index in :data:`SIZE_BUCKETS` of an object whose box's longer side is ``side`` px."""
    return next(i for i, (_, high) in enumerate(SIZE_BUCKETS) if high is None or side < high)


def bucket_names() -> list[str]:
    """Column headers: ``< 12 px``, ``12-20 px``, ``20-32 px``, ``>= 32 px``."""
    return [
        f"< {hi} px" if lo == 0 else f">= {lo} px" if hi is None else f"{lo}-{hi} px"
        for lo, hi in SIZE_BUCKETS
    ]


def shares(counts: list[tuple[int, int]] | list[list[int]]) -> list[float]:
    """``hits / objects`` per bucket from ``(objects, hits, ...)`` rows (NaN: no object)."""
    return [row[1] / row[0] if row[0] else math.nan for row in counts]


def cell(value: float, digits: int = 2) -> str:
    """A table cell: the value, or ``-`` for NaN (a bucket without objects)."""
    return "-" if math.isnan(value) else f"{value:.{digits}f}"

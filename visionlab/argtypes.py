"""argparse ``type`` functions the commands share: a usage error saying what was expected,
never a traceback."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse ``type``: a whole number ``>= minimum``, else a usage error saying
    ``what`` was expected."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    return parse


positive_int = int_at_least(1, "a positive integer")
non_negative_int = int_at_least(0, "a whole number, 0 or more")


def unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value

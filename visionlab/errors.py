"""Errors a user can act on. The CLI prints them as one clear line, never a traceback.

:func:`describe_class_mismatch` words the difference of two class lists for such a line.
"""

from __future__ import annotations

from collections.abc import Sequence


class VisionLabError(Exception):
    """Base class for errors caused by user input (files, arguments, configs)."""


class DataError(VisionLabError):
    """A dataset file is missing, unreadable or malformed.

    The message names the file and, where there is one, the annotation id or field.
    """

    def __init__(self, path: object, message: str, *, field: str | None = None) -> None:
        self.path = str(path)
        self.field = field
        self.reason = message  # the message without the file and field
        where = f"{self.path}" + (f" [{field}]" if field else "")
        super().__init__(f"{where}: {message}")


class ConfigError(VisionLabError):
    """A recipe or a key=value override is invalid."""


class CheckpointError(VisionLabError):
    """A checkpoint cannot be loaded safely or does not describe a model."""


def describe_class_mismatch(
    left_name: str, left: Sequence[str], right_name: str, right: Sequence[str]
) -> str:
    """One line saying how two class lists differ, for an error message.

    The counts, then: for lists of one length, the first positions that differ (index and
    both names); for different lengths, the names only one side has (the positions would all
    shift). At most three items of each kind and 40 characters of each name are shown.

    Example: ``split 'train' has 20 classes, split 'val' has 20; they differ at [10]
    'cat' vs 'dog'``.
    """
    left, right = [str(c) for c in left], [str(c) for c in right]
    if left == right:
        return f"{left_name} and {right_name} have the same {_count(len(left))}"
    head = f"{left_name} has {_count(len(left))}, {right_name} has {len(right)}"
    if len(left) != len(right):
        left_set, right_set = set(left), set(right)
        only_left = [c for c in left if c not in right_set]
        only_right = [c for c in right if c not in left_set]
        only = [
            f"only {name} has {_items([_name(c) for c in names])}"
            for name, names in ((left_name, only_left), (right_name, only_right))
            if names
        ]
        if only:
            return f"{head}; {'; '.join(only)}"
    elif sorted(left) == sorted(right):
        head += ": the same names in another order"
    positions = [
        f"[{i}] {_name(left[i]) if i < len(left) else '(none)'} vs "
        f"{_name(right[i]) if i < len(right) else '(none)'}"
        for i in range(max(len(left), len(right)))
        if i >= len(left) or i >= len(right) or left[i] != right[i]
    ]
    return f"{head}; they differ at {_items(positions)}"


def _count(n: int) -> str:
    return f"{n} class" if n == 1 else f"{n} classes"


def _name(name: str, width: int = 40) -> str:
    return repr(name if len(name) <= width else name[:width] + "...")


def _items(items: list[str], shown: int = 3) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more

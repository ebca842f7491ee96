"""Errors a user can act on. The CLI prints them as one clear line, never a traceback."""

from __future__ import annotations


class VisionLabError(Exception):
    """Base class for errors caused by user input (files, arguments, configs)."""


class DataError(VisionLabError):
    """A dataset file is missing, unreadable or malformed.

    The message names the file and, where there is one, the annotation id or field.
    """

    def __init__(self, path: object, message: str, *, field: str | None = None) -> None:
        self.path = str(path)
        self.field = field
        where = f"{self.path}" + (f" [{field}]" if field else "")
        super().__init__(f"{where}: {message}")


class ConfigError(VisionLabError):
    """A recipe or a key=value override is invalid."""


class CheckpointError(VisionLabError):
    """A checkpoint cannot be loaded safely or does not describe a model."""

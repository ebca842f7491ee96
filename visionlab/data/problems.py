"""The collector every dataset reader reports to: :class:`Problems` (errors and warnings).

Strict (what :func:`~visionlab.data.datasets.load_dataset` uses): the first error raises
:class:`DataError`, warnings are logged (a few per kind, then a count). Collecting (what
``visionlab data check`` uses): errors and warnings are kept and reading goes on, skipping the
offending annotation, so one run lists every problem. A leaf of the data package: the
readers, the records and the check report all import it.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from visionlab.errors import DataError

logger = logging.getLogger(__name__)

# Strict mode logs this many warnings of one kind, then only counts them.
_LOGGED_PER_KIND = 3


@dataclass(frozen=True)
class Problem:
    """One problem: ``severity`` is ``"error"`` or ``"warning"``."""

    severity: str
    path: str
    message: str
    field: str | None = None

    def __str__(self) -> str:
        where = self.path + (f" [{self.field}]" if self.field else "")
        return f"{where}: {self.message}"


class Problems:
    """Collects errors and warnings while a dataset is read.

    Args:
        strict: raise :class:`DataError` on the first error (else keep it and go on).
    """

    def __init__(self, *, strict: bool = True) -> None:
        self.strict = strict
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []
        self._kinds: Counter[str] = Counter()

    def error(self, path: object, message: str, *, field: str | None = None) -> None:
        """Report an error: raises in strict mode, else records it."""
        if self.strict:
            raise DataError(path, message, field=field)
        self.errors.append(Problem("error", str(path), message, field))

    def add(self, err: DataError) -> None:
        """Record an already raised DataError (collecting mode) or re-raise it (strict)."""
        if self.strict:
            raise err
        message = str(err)
        prefix = err.path + (f" [{err.field}]" if err.field else "") + ": "
        message = message.removeprefix(prefix)
        self.errors.append(Problem("error", err.path, message, err.field))

    def warn(self, path: object, message: str, *, field: str | None = None, kind: str = "") -> None:
        """Report a warning; ``kind`` groups repeats so a log shows a few, then a count."""
        problem = Problem("warning", str(path), message, field)
        self.warnings.append(problem)
        kind = kind or message
        self._kinds[kind] += 1
        if self.strict and self._kinds[kind] <= _LOGGED_PER_KIND:
            logger.warning("%s", problem)

    def flush(self) -> None:
        """Log how many warnings of each kind were not shown (strict mode)."""
        if self.strict:
            for kind, count in self._kinds.items():
                if count > _LOGGED_PER_KIND:
                    logger.warning("... %d more warnings like: %s", count - _LOGGED_PER_KIND, kind)
        self._kinds.clear()

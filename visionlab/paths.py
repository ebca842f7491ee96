"""Where visionlab keeps what it makes for itself (built-in dataset, proposal caches)."""

from __future__ import annotations

import os
from pathlib import Path


def visionlab_home() -> Path:
    """``$VISIONLAB_HOME``, by default ``~/.cache/visionlab``."""
    return Path(os.environ.get("VISIONLAB_HOME") or "~/.cache/visionlab").expanduser()

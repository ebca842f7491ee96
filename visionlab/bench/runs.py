"""What a finished training run recorded, for benchmarks that reuse it (``--reuse``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _record(run_dir: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def recorded_training(run_dir: Path) -> tuple[float, int | None]:
    """Training wall time and steps a run recorded in its ``eval.json`` (NaN / None when it
    has none, or when it was resumed, so its time is only a part)."""
    record = _record(run_dir)
    if record is None:
        return float("nan"), None
    seconds = record.get("train_seconds")
    if not isinstance(seconds, int | float) or record.get("resumed", False):
        return float("nan"), None
    step = record.get("step")
    return float(seconds), step if isinstance(step, int) else None


def recorded_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The final validation metrics a run recorded in its ``eval.json`` (None without one)."""
    record = _record(run_dir)
    metrics = record.get("metrics") if record else None
    return metrics if isinstance(metrics, dict) else None

"""The training runs of benchmarks: their options, starting one, and reading what a finished
one recorded (``--reuse``)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """``--epochs`` / ``--max-steps`` over every recipe, ``--threads``, ``--runs-dir``."""
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    parser.add_argument("--max-steps", type=int, default=None, help="override train.max_steps")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--runs-dir", default=None, help="keep the runs here (default: temp)")


def add_overrides(parser: argparse.ArgumentParser, what: str) -> None:
    """Positional ``KEY=VALUE`` recipe overrides; ``what`` starts their help."""
    example = "model_args.pretrained_backbone=RUN/checkpoints/best.pt"
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=f"{what}, e.g. {example}")


def schedule_overrides(args: argparse.Namespace) -> list[str]:
    """The recipe overrides ``--epochs`` and ``--max-steps`` ask for."""
    names = {"epochs": args.epochs, "max_steps": args.max_steps}
    return [f"train.{k}={v}" for k, v in names.items() if v is not None]


def timed_train(config: str | Path, overrides: list[str]) -> tuple[Any, float]:
    """:func:`visionlab.engine.api.train` into the bench's own run folder (overwritten): its
    result and wall seconds."""
    from visionlab.engine.api import train

    start = time.perf_counter()
    result = train(config, list(overrides), overwrite=True)
    return result, time.perf_counter() - start


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

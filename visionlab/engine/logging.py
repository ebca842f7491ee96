"""Where a run reports: ``metrics.jsonl`` and TensorBoard events.

``metrics.jsonl`` has one JSON object per line: training records every ``log_every`` steps
(``{"type": "train", "step", "epoch", "lr", "loss", "loss_classifier": ..., "time"}``: the total and
each loss term, averaged since the previous record) and one per evaluation
(``{"type": "eval", "step", "epoch", "val/top1": ..., "metrics": {...}}``: every scalar
metric as ``val/<name>``, plus the evaluator's whole dict, per-class values included).
Scalars go to TensorBoard under the same names (``train/loss_classifier``, ``train/lr``,
``val/top1``). Only the main process writes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


def to_plain(value: Any) -> Any:
    """JSON-safe copy: tensors and numpy scalars become numbers; NaN/inf become strings."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (missing file: empty list; torn last line ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricsLogger:
    """Append records to ``run_dir/metrics.jsonl`` and scalars to ``run_dir/tb``.

    Args:
        run_dir: the run directory.
        resume_step: when resuming, records after this step (written by the interrupted run
            after its last checkpoint) are dropped, so the file reads as one run.
    """

    def __init__(self, run_dir: str | Path, *, resume_step: int | None = None) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        elif self.path.exists():
            self.path.unlink()
        self._file = self.path.open("a", encoding="utf-8")
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=resume_step)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (a ``time`` stamp is added) and its scalars to TensorBoard."""
        record = to_plain({**record, "time": round(time.time(), 3)})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        step = int(record.get("step", 0))
        for key, value in record.items():
            if key in ("step", "epoch", "time") or isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                name = key if "/" in key else f"train/{key}"
                self._tb.add_scalar(name, value, step)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None

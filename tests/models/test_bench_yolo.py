"""`visionlab bench yolo --reuse`: the training time a reused run recorded."""

from __future__ import annotations

import json
import math
from pathlib import Path

from visionlab.bench import yolo as bench


def test_reused_run_reports_its_recorded_training_time(tmp_path: Path) -> None:
    assert math.isnan(bench._recorded_training(tmp_path)[0])  # no eval.json
    (tmp_path / "eval.json").write_text("{torn")
    seconds, steps = bench._recorded_training(tmp_path)
    assert math.isnan(seconds) and steps is None
    record = {"step": 2500, "train_seconds": 498.2, "resumed": False}
    (tmp_path / "eval.json").write_text(json.dumps(record))
    assert bench._recorded_training(tmp_path) == (498.2, 2500)
    (tmp_path / "eval.json").write_text(json.dumps({**record, "resumed": True}))
    seconds, steps = bench._recorded_training(tmp_path)
    assert math.isnan(seconds) and steps is None  # only a part of the time: not reported
    assert bench._seconds(float("nan")) == "-" and bench._seconds(498.2) == "498"

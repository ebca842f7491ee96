"""`visionlab bench yolo`: the training time a reused run recorded; one image size."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from visionlab.bench import yolo as bench
from visionlab.errors import VisionLabError


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


def test_recipes_of_different_image_sizes_are_refused() -> None:
    rows = [{"name": "yolo_scenes", "size": 128}, {"name": "faster_rcnn_scenes", "size": 128}]
    bench.check_one_size(rows)
    rows.append({"name": "faster_rcnn_scenes_256", "size": 256})
    with pytest.raises(VisionLabError, match=r"'faster_rcnn_scenes_256': 256"):
        bench.check_one_size(rows)


def test_timings_run_each_model_in_passes_of_its_own_then_interleaved() -> None:
    calls: list[tuple[str, int]] = []

    def model(name: str):
        return lambda batch: calls.append((name, int(batch[0].item())))

    images = [torch.tensor(float(i)) for i in range(3)]
    blocked, interleaved = bench._timings({"a": model("a"), "b": model("b")}, images, repeats=2)
    assert set(blocked) == set(interleaved) == {"a", "b"}
    assert all(v >= 0 for v in (*blocked.values(), *interleaved.values()))
    one_repeat = [
        *[("a", 0), ("a", 0), ("a", 1), ("a", 2)],  # warm-up, then a's pass
        *[("b", 0), ("b", 0), ("b", 1), ("b", 2)],
        *[("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)],  # turn by turn
    ]
    assert calls == one_repeat * 2

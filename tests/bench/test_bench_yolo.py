"""`visionlab bench yolo`: the training time a reused run recorded; one image size."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch

from visionlab.bench import yolo as bench
from visionlab.bench.runs import recorded_metrics, recorded_training
from visionlab.bench.sizes import cell
from visionlab.errors import VisionLabError


def test_reused_run_reports_its_recorded_training_time(tmp_path: Path) -> None:
    assert math.isnan(recorded_training(tmp_path)[0])  # no eval.json
    (tmp_path / "eval.json").write_text("{torn")
    seconds, steps = recorded_training(tmp_path)
    assert math.isnan(seconds) and steps is None
    record = {"step": 2500, "train_seconds": 498.2, "resumed": False}
    (tmp_path / "eval.json").write_text(json.dumps(record))
    assert recorded_training(tmp_path) == (498.2, 2500)
    (tmp_path / "eval.json").write_text(json.dumps({**record, "resumed": True}))
    seconds, steps = recorded_training(tmp_path)
    assert math.isnan(seconds) and steps is None  # only a part of the time: not reported
    assert recorded_metrics(tmp_path) is None  # no metrics recorded
    (tmp_path / "eval.json").write_text(json.dumps({**record, "metrics": {"mIoU": 0.74}}))
    assert recorded_metrics(tmp_path) == {"mIoU": 0.74}
    assert cell(float("nan"), 0) == "-" and cell(498.2, 0) == "498"


def test_recipes_of_different_image_sizes_are_refused() -> None:
    rows = [{"name": "yolo_scenes", "size": 128}, {"name": "faster_rcnn_scenes", "size": 128}]
    bench.check_one_size(rows)
    rows.append({"name": "faster_rcnn_scenes_256", "size": 256})
    with pytest.raises(VisionLabError, match=r"'faster_rcnn_scenes_256': 256"):
        bench.check_one_size(rows)


def test_timings_run_each_model_on_a_block_in_a_row_then_interleaved() -> None:
    calls: list[tuple[str, int]] = []

    def model(name: str, ms: float):
        def predict(batch):
            calls.append((name, int(batch[0].item())))
            time.sleep(ms / 1000)

        return predict

    images = [torch.tensor(float(i)) for i in range(3)]
    models = {"a": model("a", 2.0), "b": model("b", 6.0)}
    blocked, interleaved = bench._timings(models, images, repeats=2, block=2)
    assert set(blocked) == set(interleaved) == {"a", "b"}
    # median ms per image: at least the time slept, and under twice that (a sum over the
    # images, seconds for milliseconds, or one model's time booked to the other fall outside)
    for times in (blocked, interleaved):
        assert 2.0 <= times["a"] < 4.0 and 6.0 <= times["b"] < 12.0, times
    one_repeat = [
        *[("a", 0), ("a", 0), ("a", 1)],  # warm-up, then a's block
        *[("b", 0), ("b", 0), ("b", 1)],
        *[("a", 2), ("a", 2), ("b", 2), ("b", 2)],  # the last, shorter block
        *[("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)],  # turn by turn
    ]
    assert calls == one_repeat * 2


def test_found_by_size_buckets_objects_in_stored_pixels() -> None:
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0], [40.0, 40.0, 120.0, 120.0]])  # at 256 px
    target = {"boxes": boxes, "labels": torch.tensor([1, 2])}
    target |= {"orig_size": (128, 128), "input_size": (256, 256)}  # stored at 128: 10, 40 px
    pred = {
        "boxes": torch.tensor([[0.0, 0.0, 20.0, 21.0], [40.0, 40.0, 120.0, 120.0]]),
        "labels": torch.tensor([1, 1]),  # the large object is named wrong
        "scores": torch.tensor([0.9, 0.8]),
    }
    counts, found = bench.judge_top_detections([pred], [target], 2)
    assert counts == {"correct": 1, "localization": 0, "other": 0, "background": 0}
    assert found == {(0, 0)}  # class 1 has one object: its top 1 detection only is judged
    assert bench.found_by_size([target], found) == [(1, 1), (0, 0), (0, 0), (1, 0)]
    unscaled = {k: v for k, v in target.items() if k != "input_size"}
    assert bench.found_by_size([unscaled], found) == [(0, 0), (0, 0), (1, 1), (1, 0)]

"""`visionlab bench rcnn`: the window-count sweep of the features time."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from visionlab.bench import rcnn as bench
from visionlab.bench.machine import comma_list
from visionlab.errors import VisionLabError


def test_random_windows_lie_in_the_image_with_the_stated_sizes():
    g = torch.Generator().manual_seed(0)
    boxes = bench.random_windows((96, 128), 4000, g)
    assert boxes.shape == (4000, 4)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 128).all() and (boxes[:, 3] <= 96).all()
    side = (w * h).sqrt()
    assert side.min() >= 8 - 1e-4 and side.max() <= 48 + 1e-4  # 8 px .. half the shorter side
    assert ((w / h) >= 0.5 - 1e-4).all() and ((w / h) <= 2 + 1e-4).all()
    assert side.min() < 9 and side.max() > 44  # the whole range is drawn
    again = bench.random_windows((96, 128), 4000, torch.Generator().manual_seed(0))
    assert torch.equal(boxes, again)


class _Recorder:
    """Stands in for a region detector: records the windows it was given; its fc step takes
    ``ms_per_window`` per window plus ``ms_fixed`` (slept, so never less)."""

    def __init__(self, ms_per_window: float, ms_fixed: float) -> None:
        self.seen: list[torch.Tensor] = []
        self.ms_per_window, self.ms_fixed = ms_per_window, ms_fixed

    def pool_features(self, images, boxes):
        self.seen.append(boxes[0])
        return torch.zeros(len(boxes[0]), 2)

    def fc_features(self, pooled):
        time.sleep((self.ms_fixed + self.ms_per_window * len(pooled)) / 1000)
        return pooled


def test_time_windows_gives_both_models_the_same_windows():
    models = {"rcnn": _Recorder(2.0, 0.0), "sppnet": _Recorder(0.0, 5.0)}
    dataset = [(torch.rand(3, 64, 80), {}) for _ in range(3)]
    out = bench.time_windows(models, dataset, [5, 20], images=2)
    assert set(out) == {"rcnn", "sppnet"} and set(out["rcnn"]) == {5, 20}
    # ms per image of each model's own features step: at least the time slept, and under
    # twice that (a sum over the images, or another model's time, would reach it)
    expected = {"rcnn": {5: 10.0, 20: 40.0}, "sppnet": {5: 5.0, 20: 5.0}}
    for name, per_count in expected.items():
        for count, ms in per_count.items():
            assert ms <= out[name][count] < 2 * ms, (name, count, out[name][count])
    rc, sp = models["rcnn"].seen, models["sppnet"].seen
    assert [len(b) for b in rc] == [5, 20, 5, 20]  # 2 images x 2 counts
    assert all(torch.equal(a, b) for a, b in zip(rc, sp))


def test_window_counts_are_checked_and_reported():
    assert comma_list("100, 2000", "--windows", int) == [100, 2000]
    assert comma_list("", "--windows", int) == []
    for bad in ("10,x", "0"):
        with pytest.raises(VisionLabError, match="--windows"):
            comma_list(bad, "--windows", int)
    metrics = {"AP50": 0.5, "AP": 0.3, "voc07_mAP": 0.4, "voc_mAP": 0.5}
    res = {
        "images": 2,
        "mean_proposals": 10.0,
        "with_reg": metrics,
        "without_reg": metrics,
        "ms": {"features": 10.0, "classification": 1.0, "nms": 1.0},
    }
    model = SimpleNamespace(proposal_settings=SimpleNamespace(search_size=256))
    args = SimpleNamespace(threads=1, timing_images=2, window_images=2)
    sweep = {"rcnn": {100: 50.0, 2000: 1000.0}, "sppnet": {100: 10.0, 2000: 20.0}}
    text = bench.report({"rcnn": res, "sppnet": res}, 5.0, args, {"rcnn": model}, sweep)
    assert "| 100 | 50.0 | 10.0 | 5.0x |" in text
    assert "| 2000 | 1000.0 | 20.0 | 50.0x |" in text
    assert "against the number of windows" not in bench.report(
        {"rcnn": res, "sppnet": res}, 5.0, args, {"rcnn": model}
    )

"""`visionlab bench rcnn`: the window-count sweep of the features time."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from visionlab.bench import rcnn as bench
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
    """Stands in for a region detector: records the windows it was given."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def pool_features(self, images, boxes):
        self.seen.append(boxes[0])
        return torch.zeros(len(boxes[0]), 2)

    def fc_features(self, pooled):
        return pooled


def test_time_windows_gives_both_models_the_same_windows():
    models = {"rcnn": _Recorder(), "sppnet": _Recorder()}
    dataset = [(torch.rand(3, 64, 80), {}) for _ in range(3)]
    out = bench.time_windows(models, dataset, [5, 20], images=2)
    assert set(out) == {"rcnn", "sppnet"} and set(out["rcnn"]) == {5, 20}
    assert all(v >= 0 for m in out.values() for v in m.values())
    rc, sp = models["rcnn"].seen, models["sppnet"].seen
    assert [len(b) for b in rc] == [5, 20, 5, 20]  # 2 images x 2 counts
    assert all(torch.equal(a, b) for a, b in zip(rc, sp))


def test_window_counts_are_checked_and_reported():
    assert bench._counts("100, 2000") == [100, 2000] and bench._counts("") == []
    for bad in ("10,x", "0"):
        with pytest.raises(VisionLabError, match="--windows"):
            bench._counts(bad)
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

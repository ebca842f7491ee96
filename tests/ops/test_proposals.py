"""Selective search (OpenCV) with its cache, sliding windows, and proposal recall / AR."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visionlab import ops
from visionlab.ops import proposals as proposals_mod


@pytest.fixture(scope="module")
def scene() -> torch.Tensor:
    """A small ``[3, 48, 64]`` float image: two coloured rectangles on a gradient."""
    g = torch.Generator().manual_seed(0)
    ys = torch.linspace(0, 1, 48)[:, None].expand(48, 64)
    image = torch.stack([ys * 0.4, 0.2 + ys * 0.3, 0.9 - ys * 0.4])
    image[:, 8:30, 6:30] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    image[:, 20:44, 36:60] = torch.tensor([0.1, 0.8, 0.2])[:, None, None]
    return (image + 0.05 * torch.rand(image.shape, generator=g)).clamp(0, 1)


def test_selective_search_boxes_are_valid_xyxy(scene, tmp_path):
    boxes = ops.selective_search(scene, "fast", cache_dir=tmp_path)
    assert boxes.dtype == torch.float32 and boxes.dim() == 2 and boxes.shape[1] == 4
    assert boxes.shape[0] > 3
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 64).all() and (boxes[:, 3] <= 48).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert [0.0, 0.0, 64.0, 48.0] in boxes.tolist()  # the last merge covers the image
    # the red rectangle is found (OpenCV's xywh converted to xyxy, not taken as corners)
    assert ops.box_iou(torch.tensor([[6.0, 8.0, 30.0, 30.0]]), boxes).max() > 0.8


def test_selective_search_is_deterministic_and_modes_differ(scene, tmp_path):
    a = ops.selective_search(scene, "fast", cache=False)
    b = ops.selective_search(scene, "fast", cache=False)
    assert torch.equal(a, b)  # same boxes in the same order
    quality = ops.selective_search(scene, "quality", cache=False)
    assert quality.shape[0] > a.shape[0]
    assert set(map(tuple, quality.tolist())) != set(map(tuple, a.tolist()))
    assert torch.equal(ops.selective_search(scene, "fast", max_boxes=5, cache=False), a[:5])
    # a uint8 HWC RGB array of the same pixels gives the same boxes
    hwc = (scene * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert torch.equal(ops.selective_search(hwc, "fast", cache=False), a)


def test_selective_search_cache_hit_skips_opencv(scene, tmp_path, monkeypatch):
    calls = []
    real = proposals_mod._run_opencv

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(proposals_mod, "_run_opencv", counting)
    first = ops.selective_search(scene, "fast", cache_dir=tmp_path)
    second = ops.selective_search(scene, "fast", cache_dir=tmp_path)
    assert len(calls) == 1 and torch.equal(first, second)
    files = list(tmp_path.rglob("*.npy"))
    assert len(files) == 1 and not list(tmp_path.rglob("*.tmp"))
    ops.selective_search(scene, "quality", cache_dir=tmp_path)  # settings are part of the key
    ops.selective_search(scene.flip(-1), "fast", cache_dir=tmp_path)  # and so is the content
    assert len(calls) == 3 and len(list(tmp_path.rglob("*.npy"))) == 3
    # a corrupt cache file is recomputed and replaced, not trusted
    files[0].write_bytes(b"not a numpy file")
    again = ops.selective_search(scene, "fast", cache_dir=tmp_path)
    assert len(calls) == 4 and torch.equal(again, first)
    assert np.load(files[0]).shape == (first.shape[0], 4)


def test_selective_search_default_cache_dir_and_errors(scene, tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONLAB_HOME", str(tmp_path))
    ops.selective_search(scene[:, :24, :24], "fast")
    assert list((tmp_path / "ss_cache").rglob("*.npy"))
    with pytest.raises(ValueError, match="mode"):
        ops.selective_search(scene, "slow")
    with pytest.raises(ValueError, match=r"Tensor\[3, H, W\]"):
        ops.selective_search(scene[0], "fast")
    with pytest.raises(ValueError, match="uint8"):
        ops.selective_search(np.zeros((8, 8, 3), np.float32), "fast")


def test_sliding_windows_grid():
    boxes = ops.sliding_windows((100, 120), sizes=[40], aspect_ratios=[1.0], stride=30)
    # x1 in {0, 30, 60, 80}, y1 in {0, 30, 60}: the last start touches the right/bottom edge
    assert boxes.shape == (12, 4) and boxes.dtype == torch.float32
    assert boxes[:4].tolist() == [
        [0, 0, 40, 40],
        [30, 0, 70, 40],
        [60, 0, 100, 40],
        [80, 0, 120, 40],
    ]
    assert boxes[:, 2].max() == 120 and boxes[:, 3].max() == 100
    mixed = ops.sliding_windows((64, 64), sizes=[16, 32, 200], aspect_ratios=[0.5, 2.0], stride=16)
    w, h = mixed[:, 2] - mixed[:, 0], mixed[:, 3] - mixed[:, 1]
    assert set(zip(w.tolist(), h.tolist())) == {
        (23.0, 11.0),
        (11.0, 23.0),
        (45.0, 23.0),
        (23.0, 45.0),
    }
    assert (mixed >= 0).all() and (mixed[:, 2:] <= 64).all()  # all inside; 200 skipped
    assert ops.sliding_windows((10, 10), [50], stride=4).shape == (0, 4)


def test_proposal_recall_definition():
    gt = [torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]]), torch.tensor([[0.0, 0, 10, 20]])]
    props = [
        torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 34]]),  # IoU 1.0 and 0.7
        torch.tensor([[0.0, 0, 10, 11], [0, 0, 10, 8]]),  # best IoU 0.55
    ]
    r = ops.proposal_recall(props, gt, iou_thresholds=(0.5, 0.7, 0.9))
    assert r["recall@0.5"] == pytest.approx(1.0)
    assert r["recall@0.7"] == pytest.approx(2 / 3)
    assert r["recall@0.9"] == pytest.approx(1 / 3)
    # AR: mean recall over 0.5, 0.55, ..., 0.95 of best IoUs 1.0, 0.7, 0.55
    best = [1.0, 0.7, 0.55]
    thresholds = [0.5 + 0.05 * i for i in range(10)]
    ar = sum(sum(b >= t - 1e-9 for b in best) / 3 for t in thresholds) / 10
    assert r["AR"] == pytest.approx(ar)
    assert r["num_gt"] == 3 and r["num_images"] == 2 and r["mean_proposals"] == 2.0
    top1 = ops.proposal_recall(props, gt, max_proposals=1)
    assert top1["recall@0.5"] == pytest.approx(2 / 3) and top1["mean_proposals"] == 1.0


def test_proposal_recall_empty_cases():
    r = ops.proposal_recall([torch.zeros(0, 4)], [torch.tensor([[0.0, 0, 5, 5]])])
    assert r["recall@0.5"] == 0.0 and r["AR"] == 0.0
    r = ops.proposal_recall([torch.zeros(3, 4)], [torch.zeros(0, 4)])
    assert r["num_gt"] == 0 and np.isnan(r["AR"])
    with pytest.raises(ValueError, match="images"):
        ops.proposal_recall([torch.zeros(0, 4)], [])

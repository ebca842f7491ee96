"""visionlab.ops.boxes against naive pure-Python references and torchvision."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from visionlab import ops
from visionlab.ops import boxes as boxes_mod


def random_boxes(n: int, dtype=torch.float32, seed: int = 0, extent: float = 100.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * extent
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * extent / 2
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


def iou_py(a: list[float], b: list[float]) -> float:
    """Reference IoU of two xyxy boxes (0 for an empty union)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def giou_py(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    iou = inter / union if union > 0 else 0.0
    return iou - ((hull - union) / hull if hull > 0 else 0.0)


def reference_nms(boxes: torch.Tensor, scores: torch.Tensor, thresh: float) -> list[int]:
    """Greedy NMS, one pair at a time (after torchvision's TestNMS._reference_nms)."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    b = boxes.tolist()
    keep: list[int] = []
    suppressed = set()
    for pos, i in enumerate(order):
        if i in suppressed:
            continue
        keep.append(i)
        for j in order[pos + 1 :]:
            if iou_py(b[i], b[j]) > thresh:
                suppressed.add(j)
    return keep


def reference_soft_nms(boxes, scores, method, sigma, nt, thresh):
    """Soft-NMS exactly as Algorithm 1 of Bodla et al., one pair at a time."""
    b, s = boxes.tolist(), scores.tolist()
    alive = [v >= thresh for v in s]
    keep, kept = [], []
    while any(alive):
        i = max((j for j in range(len(s)) if alive[j]), key=lambda j: (s[j], -j))
        keep.append(i)
        kept.append(s[i])
        alive[i] = False
        for j in range(len(s)):
            if not alive[j]:
                continue
            iou = iou_py(b[i], b[j])
            if method == "linear":
                s[j] *= (1 - iou) if iou > nt else 1.0
            else:
                s[j] *= math.exp(-(iou * iou) / sigma)
            if s[j] < thresh:
                alive[j] = False
    return keep, kept


@pytest.mark.parametrize("in_fmt", ["xyxy", "xywh", "cxcywh"])
@pytest.mark.parametrize("out_fmt", ["xyxy", "xywh", "cxcywh"])
def test_box_convert_matches_torchvision_and_round_trips(in_fmt, out_fmt):
    boxes = random_boxes(20, torch.float64)
    ours = ops.box_convert(boxes, in_fmt, out_fmt)
    torch.testing.assert_close(ours, torchvision.ops.box_convert(boxes, in_fmt, out_fmt))
    torch.testing.assert_close(ops.box_convert(ours, out_fmt, in_fmt), boxes)
    assert ops.box_convert(boxes[:0], in_fmt, out_fmt).shape == (0, 4)


def test_box_convert_known_values_and_errors():
    xyxy = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    assert ops.box_convert(xyxy, "xyxy", "xywh").tolist() == [[10.0, 20.0, 20.0, 40.0]]
    assert ops.box_convert(xyxy, "xyxy", "cxcywh").tolist() == [[20.0, 40.0, 20.0, 40.0]]
    with pytest.raises(ValueError, match="unknown box format"):
        ops.box_convert(xyxy, "xyxy", "yxyx")
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        ops.box_convert(torch.zeros(3, 5), "xyxy", "xywh")


def test_clip_and_area_and_remove_small():
    boxes = torch.tensor([[-5.0, -5.0, 50.0, 20.0], [10.0, 10.0, 200.0, 300.0], [3, 3, 3, 9]])
    clipped = ops.clip_boxes_to_image(boxes, (100, 120))
    assert clipped.tolist() == [[0, 0, 50, 20], [10, 10, 120, 100], [3, 3, 3, 9]]
    torch.testing.assert_close(clipped, torchvision.ops.clip_boxes_to_image(boxes, (100, 120)))
    assert ops.box_area(clipped).tolist() == [1000.0, 9900.0, 0.0]
    assert ops.box_area(torch.tensor([[0, 0, 3, 4]])).dtype == torch.float32  # int upcast
    many = random_boxes(200)
    torch.testing.assert_close(
        ops.remove_small_boxes(many, 10.0), torchvision.ops.remove_small_boxes(many, 10.0)
    )
    assert ops.remove_small_boxes(boxes, 1.0).tolist() == [0, 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_iou_and_giou_against_reference_and_torchvision(dtype):
    a, b = random_boxes(15, dtype, seed=1), random_boxes(11, dtype, seed=2)
    ref_iou = torch.tensor([[iou_py(x, y) for y in b.tolist()] for x in a.tolist()], dtype=dtype)
    ref_giou = torch.tensor([[giou_py(x, y) for y in b.tolist()] for x in a.tolist()], dtype=dtype)
    iou, giou = ops.box_iou(a, b), ops.generalized_box_iou(a, b)
    assert iou.shape == (15, 11) and iou.dtype == dtype
    torch.testing.assert_close(iou, ref_iou)
    torch.testing.assert_close(giou, ref_giou)
    assert torch.equal(iou, torchvision.ops.box_iou(a, b))
    assert torch.equal(giou, torchvision.ops.generalized_box_iou(a, b))
    assert (ref_iou > 0).any() and (ref_giou < 0).any()  # the test covers both regimes


def test_iou_empty_and_degenerate():
    a = random_boxes(4)
    assert ops.box_iou(a, a[:0]).shape == (4, 0)
    assert ops.generalized_box_iou(a[:0], a).shape == (0, 4)
    point = torch.tensor([[5.0, 5.0, 5.0, 5.0]])
    line = torch.tensor([[0.0, 5.0, 10.0, 5.0]])
    other_point = torch.tensor([[8.0, 9.0, 8.0, 9.0]])
    # zero-area boxes: IoU 0 instead of torchvision's NaN
    assert ops.box_iou(point, point).item() == 0.0
    assert ops.box_iou(line, point).item() == 0.0
    assert ops.generalized_box_iou(point, point).item() == 0.0
    assert ops.generalized_box_iou(point, other_point).item() == pytest.approx(-1.0)
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assert ops.box_iou(box, point).item() == 0.0
    assert not torch.isnan(ops.generalized_box_iou(torch.cat([box, point]), point)).any()


def test_iou_gradients():
    a = random_boxes(3, torch.float64, seed=3).requires_grad_()
    b = random_boxes(4, torch.float64, seed=4).requires_grad_()
    b.data[0] = a.data[0] + 1.0  # an overlapping pair so the gradient is not all zero
    assert torch.autograd.gradcheck(ops.box_iou, (a, b))
    assert torch.autograd.gradcheck(ops.generalized_box_iou, (a, b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("thresh", [0.3, 0.7])
def test_nms_matches_reference_and_torchvision(dtype, thresh):
    boxes = random_boxes(150, dtype, seed=5)
    scores = torch.rand(150, generator=torch.Generator().manual_seed(6), dtype=dtype)
    keep = ops.nms(boxes, scores, thresh)
    assert keep.dtype == torch.int64
    assert keep.tolist() == reference_nms(boxes, scores, thresh)
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, thresh))


def test_nms_empty_and_bad_input():
    assert ops.nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)
    assert (
        ops.batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0).long(), 0.5).numel() == 0
    )
    with pytest.raises(ValueError, match="scores must be"):
        ops.nms(torch.zeros(3, 4), torch.zeros(2), 0.5)


def test_batched_nms_is_nms_per_class():
    boxes = random_boxes(120, seed=7)
    g = torch.Generator().manual_seed(8)
    scores = torch.rand(120, generator=g)
    classes = torch.randint(0, 4, (120,), generator=g)
    keep = ops.batched_nms(boxes, scores, classes, 0.5)
    expected = []
    for c in range(4):
        idx = torch.where(classes == c)[0]
        expected += [int(idx[k]) for k in reference_nms(boxes[idx], scores[idx], 0.5)]
    assert sorted(keep.tolist()) == sorted(expected)
    assert scores[keep].diff().le(0).all()  # by decreasing score


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_soft_nms_matches_reference(method):
    boxes = random_boxes(60, torch.float64, seed=9, extent=60)
    scores = torch.rand(60, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    keep, kept = ops.soft_nms(boxes, scores, method, sigma=0.5, iou_threshold=0.3)
    ref_keep, ref_kept = reference_soft_nms(boxes, scores, method, 0.5, 0.3, 0.001)
    assert keep.tolist() == ref_keep
    torch.testing.assert_close(kept, torch.tensor(ref_kept, dtype=torch.float64))
    assert kept.diff().le(1e-12).all()  # non-increasing
    assert (kept <= scores[keep]).all() and (kept < scores[keep]).any()  # scores decayed


def test_soft_nms_float32_threshold_and_empty():
    boxes = random_boxes(40, torch.float32, seed=11, extent=40)
    scores = torch.rand(40, generator=torch.Generator().manual_seed(12))
    keep, kept = ops.soft_nms(boxes, scores, "gaussian", score_threshold=0.2)
    ref_keep, ref_kept = reference_soft_nms(
        boxes.double(), scores.double(), "gaussian", 0.5, 0.3, 0.2
    )
    assert keep.tolist() == ref_keep
    torch.testing.assert_close(kept, torch.tensor(ref_kept, dtype=torch.float32))
    assert kept.dtype == torch.float32 and (kept >= 0.2).all()
    # disjoint boxes: nothing decays, order is by score
    disjoint = torch.tensor([[0.0, 0, 1, 1], [5, 5, 6, 6], [9, 9, 10, 10]])
    keep, kept = ops.soft_nms(disjoint, torch.tensor([0.2, 0.9, 0.5]))
    assert keep.tolist() == [1, 2, 0] and kept.tolist() == pytest.approx([0.9, 0.5, 0.2])
    keep, kept = ops.soft_nms(torch.zeros(0, 4), torch.zeros(0))
    assert keep.shape == (0,) and kept.shape == (0,)
    keep, _ = ops.soft_nms(disjoint, torch.full((3,), 1e-4))  # all below score_threshold
    assert keep.numel() == 0
    with pytest.raises(ValueError, match="method"):
        ops.soft_nms(disjoint, torch.ones(3), method="hard")


def test_soft_nms_identical_boxes_linear_drops_duplicates():
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(3, 1)
    keep, kept = ops.soft_nms(box, torch.tensor([0.5, 0.9, 0.7]), "linear")
    assert keep.tolist() == [1]  # IoU 1 decays the others to 0
    assert kept.tolist() == pytest.approx([0.9])


def test_batched_soft_nms_is_soft_nms_per_class():
    boxes = random_boxes(50, torch.float64, seed=13, extent=50)
    g = torch.Generator().manual_seed(14)
    scores = torch.rand(50, generator=g, dtype=torch.float64)
    classes = torch.randint(0, 3, (50,), generator=g)
    keep, kept = ops.batched_soft_nms(boxes, scores, classes, "gaussian")
    got = dict(zip(keep.tolist(), kept.tolist()))
    for c in range(3):
        idx = torch.where(classes == c)[0]
        ref_keep, ref_kept = reference_soft_nms(boxes[idx], scores[idx], "gaussian", 0.5, 0.3, 1e-3)
        for k, s in zip(ref_keep, ref_kept):
            assert got.pop(int(idx[k])) == pytest.approx(s)
    assert not got


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_soft_nms_row_by_row_path_equals_dense_path(method, monkeypatch):
    boxes = random_boxes(80, torch.float64, seed=15, extent=60)
    scores = torch.rand(80, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    dense = ops.soft_nms(boxes, scores, method)
    monkeypatch.setattr(boxes_mod, "_SOFT_NMS_DENSE", 10)  # as for more than 2048 boxes
    rows = ops.soft_nms(boxes, scores, method)
    assert torch.equal(dense[0], rows[0])
    torch.testing.assert_close(dense[1], rows[1])

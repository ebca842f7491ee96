"""The one detection post-processor: against a plain-loop reference (threshold, clipping, small
boxes, greedy NMS per class, top-k), its use by all five detectors, the knobs' old spellings
refused with the new names, and checkpoints written before it giving the same detections."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from visionlab.errors import ConfigError, VisionLabError
from visionlab.models import postprocess as pp
from visionlab.models.postprocess import (
    DetectionSettings,
    postprocess_detections,
    upgrade_model_args,
)
from visionlab.models.registry import build_model, model_info

DETECTORS = ("rcnn", "sppnet", "fast_rcnn", "faster_rcnn", "yolo")
OLD_DETECTORS = Path(__file__).parent / "data" / "old_detectors.pt"
# The settings dict that held the knobs before they became model arguments (YOLO: none).
OLD_HOMES = {"rcnn": "test", "sppnet": "test", "fast_rcnn": "box_head", "faster_rcnn": "box_head"}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("VISIONLAB_HOME", str(tmp_path / "home"))  # selective-search cache
    torch.set_num_threads(1)


# --------------------------------------------------------------------------- reference


def _iou(a: list[float], b: list[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _reference(scores, boxes, image_size, s: DetectionSettings) -> list[tuple]:
    """Plain loops: ``[(score, label, [x1, y1, x2, y2])]`` best first; ties keep input order
    (row, then class)."""
    height, width = image_size
    n_rows, n_classes = scores.shape
    candidates = []  # (score, order, label, box)
    for n in range(n_rows):
        for k in range(n_classes):
            score = float(scores[n, k])
            if not score >= s.score_thresh:
                continue
            box = boxes[n, k] if boxes.dim() == 3 else boxes[n]
            x1, y1, x2, y2 = (float(v) for v in box)
            x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
            y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
            if min(x2 - x1, y2 - y1) < s.min_size:
                continue
            candidates.append((score, n * n_classes + k, k + 1, [x1, y1, x2, y2]))
    kept = []
    for label in range(1, n_classes + 1):
        mine = sorted((c for c in candidates if c[2] == label), key=lambda c: (-c[0], c[1]))
        survivors = []
        for c in mine:
            if all(_iou(c[3], o[3]) <= s.nms_thresh for o in survivors):
                survivors.append(c)
        kept += survivors
    kept.sort(key=lambda c: (-c[0], c[1]))
    return [(c[0], c[2], c[3]) for c in kept[: s.detections_per_img]]


def _check_against_reference(scores, boxes, image_size, settings) -> dict:
    out = postprocess_detections(scores, boxes, image_size, settings)
    want = _reference(scores, boxes, image_size, settings)
    assert out["labels"].dtype == torch.int64 and out["boxes"].shape == (len(want), 4)
    assert out["scores"].tolist() == pytest.approx([w[0] for w in want], abs=0)
    assert out["labels"].tolist() == [w[1] for w in want]
    torch.testing.assert_close(
        out["boxes"], torch.tensor([w[2] for w in want]).reshape(-1, 4), rtol=0, atol=1e-6
    )
    return out


def _box(x1, y1, x2, y2) -> list[float]:
    return [float(x1), float(y1), float(x2), float(y2)]


# --------------------------------------------------------------------------- the function


@pytest.mark.parametrize("seed", range(6))
def test_random_inputs_match_the_reference(seed):
    g = torch.Generator().manual_seed(seed)
    n, k = 40, 3
    xy = torch.rand(n, k, 2, generator=g) * 70 - 10  # some start outside the 64 x 48 image
    wh = torch.rand(n, k, 2, generator=g) * 30
    boxes = torch.cat([xy, xy + wh], -1)
    scores = (torch.rand(n, k, generator=g) * 10).round() / 10  # many ties, some at 0.3
    settings = DetectionSettings(
        score_thresh=0.3, nms_thresh=0.4, detections_per_img=25, min_size=2.0
    )
    _check_against_reference(scores, boxes, (48, 64), settings)
    _check_against_reference(scores, boxes[:, 0], (48, 64), settings)  # class-agnostic


def test_scores_at_the_threshold_are_kept():
    boxes = torch.tensor([_box(0, 0, 10, 10), _box(20, 20, 30, 30), _box(40, 40, 50, 50)])
    scores = torch.tensor([[0.5], [0.5 - 1e-6], [0.7]])
    out = _check_against_reference(scores, boxes, (64, 64), DetectionSettings(score_thresh=0.5))
    assert out["scores"].tolist() == pytest.approx([0.7, 0.5])


def test_tied_scores_keep_the_first_row_and_stay_together():
    # rows 0 and 1 overlap (IoU 0.82) with one score: the first suppresses the second;
    # row 2 ties with them elsewhere and survives
    boxes = torch.tensor([_box(0, 0, 10, 10), _box(1, 0, 11, 10), _box(30, 30, 40, 40)])
    scores = torch.full((3, 1), 0.6)
    out = _check_against_reference(scores, boxes, (64, 64), DetectionSettings())
    assert out["boxes"].tolist() == [_box(0, 0, 10, 10), _box(30, 30, 40, 40)]


def test_empty_input_and_everything_below_the_threshold():
    for n in (0, 4):
        scores, boxes = torch.full((n, 3), 0.01), torch.rand(n, 3, 4) * 10
        boxes[..., 2:] += boxes[..., :2]
        out = _check_against_reference(scores, boxes, (32, 32), DetectionSettings())
        assert out["boxes"].shape == (0, 4) and out["scores"].shape == (0,)
        assert out["labels"].shape == (0,) and out["labels"].dtype == torch.int64


def test_nms_is_class_wise():
    two = torch.tensor([_box(0, 0, 10, 10), _box(1, 0, 11, 10)])  # IoU 0.82
    # different classes: both survive
    out = _check_against_reference(
        torch.tensor([[0.9, 0.0], [0.0, 0.8]]), two, (64, 64), DetectionSettings()
    )
    assert out["labels"].tolist() == [1, 2]
    # one class: the better one only
    out = _check_against_reference(
        torch.tensor([[0.9, 0.0], [0.8, 0.0]]), two, (64, 64), DetectionSettings()
    )
    assert out["labels"].tolist() == [1] and out["scores"].tolist() == pytest.approx([0.9])
    # IoU at the threshold is kept (NMS drops IoU > nms_thresh)
    half = torch.tensor([_box(0, 0, 10, 10), _box(0, 0, 10, 5)])  # IoU 0.5
    out = _check_against_reference(
        torch.tensor([[0.9], [0.8]]), half, (64, 64), DetectionSettings(nms_thresh=0.5)
    )
    assert len(out["boxes"]) == 2


def test_top_k_keeps_the_best():
    boxes = torch.tensor([_box(10 * i, 0, 10 * i + 8, 8) for i in range(5)])
    scores = torch.tensor([[0.2], [0.9], [0.4], [0.8], [0.6]])
    out = _check_against_reference(scores, boxes, (64, 64), DetectionSettings(detections_per_img=2))
    assert out["scores"].tolist() == pytest.approx([0.9, 0.8])
    # topk_candidates: only the best candidates enter the NMS
    settings = DetectionSettings(topk_candidates=3)
    out = postprocess_detections(scores, boxes, (64, 64), settings)
    assert out["scores"].tolist() == pytest.approx([0.9, 0.8, 0.6])


def test_boxes_are_clipped_to_the_image_and_small_ones_dropped():
    boxes = torch.tensor(
        [
            _box(-5, -5, 10, 10),  # clipped to (0, 0, 10, 10)
            _box(50, 20, 80, 30),  # clipped to (50, 20, 64, 30)
            _box(70, 0, 90, 10),  # outside: clipped to zero width, dropped
            _box(5, 40, 5.5, 45),  # 0.5 px wide: below min_size 1
        ]
    )
    scores = torch.tensor([[0.9], [0.8], [0.7], [0.6]])
    out = _check_against_reference(scores, boxes, (48, 64), DetectionSettings(min_size=1.0))
    assert out["boxes"].tolist() == [_box(0, 0, 10, 10), _box(50, 20, 64, 30)]


def test_a_decoder_sees_only_the_candidates():
    g = torch.Generator().manual_seed(0)
    boxes = torch.rand(30, 4, generator=g) * 20
    boxes[:, 2:] += boxes[:, :2] + 1
    scores = torch.rand(30, 4, generator=g)
    settings = DetectionSettings(score_thresh=0.7)
    calls = []

    def decode(rows, labels):
        calls.append((rows.clone(), labels.clone()))
        return boxes[rows]

    out = postprocess_detections(scores, decode, (40, 40), settings, return_indices=True)
    want = postprocess_detections(scores, boxes, (40, 40), settings)
    ((rows, labels),) = calls
    assert len(rows) == int((scores >= 0.7).sum()) < scores.numel()
    assert bool((scores[rows, labels - 1] >= 0.7).all())
    for key in want:
        assert torch.equal(out[key], want[key])
    assert torch.equal(boxes[out["indices"]], out["boxes"])
    calls.clear()
    postprocess_detections(scores * 0, decode, (40, 40), settings)
    assert calls == []  # nothing past the threshold: nothing decoded


def test_bad_shapes_and_settings():
    with pytest.raises(ValueError, match="Tensor"):
        postprocess_detections(torch.rand(3, 2), torch.rand(3, 3, 4), (8, 8), DetectionSettings())
    with pytest.raises(ValueError, match="scores"):
        postprocess_detections(torch.rand(3), torch.rand(3, 4), (8, 8), DetectionSettings())
    bad_settings = [
        {"nms_thresh": 1.5},
        {"detections_per_img": -1},
        {"min_size": -1.0},
        {"score_thresh": float("nan")},
        {"topk_candidates": 2.5},
    ]
    for bad in bad_settings:
        with pytest.raises(ConfigError):
            DetectionSettings(**bad)


# --------------------------------------------------------------------------- the detectors


def _tiny_args(name: str) -> dict:
    common = {"num_classes": 3, "backbone_width": 1}
    return {
        "rcnn": {**common, "input_size": 32, "context": 2, "fc_width": 8},
        "sppnet": {**common, "scales": [64], "levels": [2, 1], "fc_width": 8},
        "fast_rcnn": {**common, "box_head": {"fc_width": 8, "pool_size": 2}},
        "faster_rcnn": {**common, "box_head": {"fc_width": 8, "pool_size": 2}},
        "yolo": {
            **common,
            "input_size": 64,
            "head": "conv",
            "feature_stride": 16,
            "head_convs": 1,
            "head_channels": 8,
        },
    }[name]


def _fixed_proposals(model, proposals: list[torch.Tensor]) -> None:
    """Replace selective search by fixed regions (R-CNN, SPPNet, Fast R-CNN)."""
    if hasattr(model, "pool_features"):  # a RegionDetector proposes one image at a time
        model.propose = lambda image: proposals[0]
    elif hasattr(getattr(model, "proposer", None), "search"):
        model.proposer.search = lambda image: proposals[0]


@pytest.mark.parametrize("name", DETECTORS)
def test_each_detector_calls_the_one_post_processor(name, monkeypatch):
    original = pp.postprocess_detections
    calls = []

    def counting(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(out)
        return out

    torch.manual_seed(0)
    model = build_model(name, **_tiny_args(name), score_thresh=0.0).eval()
    # every model module that bound the function by name (imported by now)
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("visionlab.models.") and (
            getattr(module, "postprocess_detections", None) is original
        ):
            monkeypatch.setattr(module, "postprocess_detections", counting)
    _fixed_proposals(model, [torch.tensor([_box(4, 4, 30, 30), _box(10, 8, 50, 40)])])
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    with torch.no_grad():
        outputs = model(images)
    assert len(calls) == len(images)
    for out, seen in zip(outputs, calls):
        assert len(out["boxes"]) > 0 and torch.equal(out["boxes"], seen["boxes"])


def test_builders_keep_their_defaults():
    want = {
        "rcnn": (0.05, 0.3, 100, 1e-2),
        "sppnet": (0.05, 0.3, 100, 1e-2),
        "fast_rcnn": (0.05, 0.5, 100, 1e-2),
        "faster_rcnn": (0.05, 0.5, 100, 1e-2),
        "yolo": (0.005, 0.5, 100, 0.0),
    }
    for name, values in want.items():
        args = model_info(name).args
        assert tuple(args[k] for k in pp.DETECTION_KNOBS) == values, name
    model = build_model("yolo", **_tiny_args("yolo"), nms_thresh=0.4)
    assert model.detection_settings == DetectionSettings(
        score_thresh=0.005, nms_thresh=0.4, min_size=0.0, topk_candidates=1000
    )
    model = build_model("faster_rcnn", **_tiny_args("faster_rcnn"), detections_per_img=7)
    assert model.roi_heads.box.detection_settings == DetectionSettings(detections_per_img=7)


@pytest.mark.parametrize("name", DETECTORS)
@pytest.mark.parametrize("old, new", list(pp.RENAMED_KNOBS.items()))
def test_old_spellings_are_refused_with_the_new_name(name, old, new):
    value = 10 if new == "detections_per_img" else 0.3
    with pytest.raises(VisionLabError, match=f"did you mean .*'{new}'"):
        build_model(name, **_tiny_args(name), **{old: value})
    home = OLD_HOMES.get(name)
    if home is None:
        return
    args = _tiny_args(name)
    for key in (old, new):  # nested, under either spelling: a model argument of its own
        args[home] = {**(args.get(home) or {}), key: value}
        with pytest.raises(ConfigError, match=f"did you mean the model argument '{new}'"):
            build_model(name, **args)
        del args[home][key]


def test_upgrade_model_args_maps_the_old_keys_once():
    old = {
        "num_classes": 4,
        "test": {
            "score_threshold": 0.1,
            "nms_threshold": 0.3,
            "detections_per_image": 9,
            "chunk": 64,
        },
    }
    new = upgrade_model_args("rcnn", old)
    assert new == {
        "num_classes": 4,
        "test": {"chunk": 64},
        "score_thresh": 0.1,
        "nms_thresh": 0.3,
        "detections_per_img": 9,
    }
    assert old["test"]["score_threshold"] == 0.1  # not modified
    assert upgrade_model_args("rcnn", new) == new  # current arguments pass unchanged
    box = {"box_head": {"fc_width": 16, "nms_threshold": 0.4}, "pooler": "roi_align"}
    assert upgrade_model_args("faster_rcnn", box) == {
        "box_head": {"fc_width": 16},
        "pooler": "roi_align",
        "nms_thresh": 0.4,
    }
    yolo = {"score_thresh": 0.2, "detections_per_img": 5}
    assert upgrade_model_args("yolo", yolo) == yolo
    assert upgrade_model_args("fcn8s", {"backbone": "vgg16"}) == {"backbone": "vgg16"}


def test_old_checkpoints_give_the_same_detections():
    """``data/old_detectors.pt`` was written by the code before the one post-processor
    (``data/make_old_detectors.py``): rebuilt through :func:`upgrade_model_args`, each
    detector gives the stored detections (Fast and Faster R-CNN's state-dict keys are
    those of their two classes before the two-stage skeleton, renamed on load). YOLO's
    threshold moved from ``>`` to ``>=``; the file's YOLO scores are all more than 1e-4
    away from its threshold, so both keep the same candidates."""
    record = torch.load(OLD_DETECTORS, weights_only=True)
    assert set(record) == set(DETECTORS)
    for name, saved in record.items():
        assert saved["model_name"] == name
        args = upgrade_model_args(name, saved["model_args"])
        model = build_model(name, **args)
        model.load_state_dict(saved["state_dict"])
        model.eval()
        images = [im.float() / 255 for im in saved["images"]]
        proposals = saved["proposals"]
        if name in ("rcnn", "sppnet"):
            by_shape = {tuple(im.shape): p for im, p in zip(images, proposals)}
            model.propose = lambda image, by_shape=by_shape: by_shape[tuple(image.shape)]
        elif name == "fast_rcnn":
            model.proposer.forward = lambda images, *_, proposals=proposals: (list(proposals), {})
        with torch.no_grad():
            outputs = model(images)
        for got, want in zip(outputs, saved["outputs"], strict=True):
            assert len(want["boxes"]) > 0, name  # the file holds detections
            assert got["labels"].tolist() == want["labels"].tolist(), name
            torch.testing.assert_close(got["boxes"], want["boxes"], rtol=0, atol=1e-4)
            torch.testing.assert_close(got["scores"], want["scores"], rtol=0, atol=1e-5)
            order = [s["scores"].argsort(descending=True, stable=True) for s in (got, want)]
            assert torch.equal(*order), name


def test_the_rpn_nms_knob_is_spelt_once() -> None:
    from visionlab.errors import VisionLabError

    old = {"rpn": {"nms_threshold": 0.6, "anchor_sizes": [16, 32]}, "backbone_width": 4}
    new = upgrade_model_args("faster_rcnn", old)
    assert new["rpn"] == {"nms_thresh": 0.6, "anchor_sizes": [16, 32]}
    assert old["rpn"]["nms_threshold"] == 0.6  # not modified
    model = build_model("faster_rcnn", num_classes=3, **new)
    assert model.proposer.settings.nms_thresh == 0.6
    with pytest.raises(VisionLabError, match="nms_thresh"):  # a recipe's old spelling
        build_model("faster_rcnn", num_classes=3, rpn={"nms_threshold": 0.6})

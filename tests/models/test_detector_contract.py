"""The detector contract (visionlab.models.detector.Detector), checked on every registered
detection model with its tiny settings: one base, finite losses under each model's keys,
eval outputs in the data contract, images without objects, extras by argument, the hooks."""

from __future__ import annotations

import pytest
import torch
from tiny_detectors import TINY

from visionlab.errors import VisionLabError
from visionlab.models.backbones import STRIDES
from visionlab.models.detector import EXTRA_KEYS, Detector
from visionlab.models.registry import build_model, list_models

NUM_CLASSES = 3  # background + 2
# The loss keys each model returns today (torchvision's names where the model is
# torchvision's kind: Fast / Faster R-CNN).
LOSS_KEYS = {
    "rcnn": {"loss_classifier"},
    "sppnet": {"loss_classifier"},
    "fast_rcnn": {"loss_classifier", "loss_box_reg"},
    "faster_rcnn": {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"},
    "yolo": {"loss_box_xy", "loss_box_wh", "loss_objectness", "loss_noobject", "loss_classifier"},
    "mask_rcnn": {
        "loss_objectness",
        "loss_rpn_box_reg",
        "loss_classifier",
        "loss_box_reg",
        "loss_mask",
    },
    "relation_rcnn": {
        "loss_objectness",
        "loss_rpn_box_reg",
        "loss_classifier",
        "loss_box_reg",
        "loss_relation",
    },
    # the frequency baseline counts its predicates; only its detector learns
    "relation_freq": {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"},
}
DETECTION_KEYS = {"boxes", "labels", "scores"}
RELATION_KEYS = DETECTION_KEYS | {"relations", "relation_scores"}
OUTPUT_KEYS = {  # instance segmentation adds masks, relation models their triplets
    "mask_rcnn": DETECTION_KEYS | {"masks"},
    "relation_rcnn": RELATION_KEYS,
    "relation_freq": RELATION_KEYS,
}
CASES = sorted(
    {name for task in ("detection", "instance", "relation") for name in list_models(task=task)}
    | set(TINY)
)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("VISIONLAB_HOME", str(tmp_path / "home"))  # selective-search cache


def _build(case: str) -> Detector:
    if case not in TINY:
        pytest.fail(f"{case}: add its tiny settings to tests/models/tiny_detectors.py")
    torch.manual_seed(0)
    # a low threshold: the untrained models' scores still make detections to check
    return build_model(
        case.removesuffix("_fpn"), num_classes=NUM_CLASSES, score_thresh=1e-3, **TINY[case][0]
    )


@pytest.mark.parametrize("case", CASES)
def test_given_boxes_replace_the_detections_where_the_model_takes_them(case):
    model = _build(case).eval()
    given = [{"boxes": t["boxes"], "labels": t["labels"]} for t in _targets()]
    if not model.takes_given:
        with pytest.raises(VisionLabError, match="cannot run on given boxes"):
            model(_images(), given=given)
        return
    with torch.no_grad():
        labelled = model(_images(), given=given)
        classified = model(_images(), given=[{"boxes": g["boxes"]} for g in given])
    for out, g, cls in zip(labelled, given, classified):
        assert set(out) == OUTPUT_KEYS.get(case, DETECTION_KEYS)
        assert torch.equal(out["boxes"], g["boxes"]) and torch.equal(out["labels"], g["labels"])
        assert torch.equal(out["scores"], torch.ones(len(g["boxes"])))
        assert torch.equal(cls["boxes"], g["boxes"])  # the given order, labels from the model
        assert bool(((cls["labels"] >= 1) & (cls["labels"] < NUM_CLASSES)).all())
        assert bool(((cls["scores"] > 0) & (cls["scores"] <= 1)).all())
    with pytest.raises(ValueError, match="given"):
        model(_images(), given=given[:1])


def _images() -> list[torch.Tensor]:
    """A square and a wide image (sizes differ within a batch), grey with coloured squares."""
    images = []
    for (h, w), (x, y) in (((64, 64), (8, 10)), ((48, 80), (40, 12))):
        image = torch.full((3, h, w), 0.5)
        image[:, y : y + 24, x : x + 24] = torch.tensor([1.0, 0.2, 0.1])[:, None, None]
        images.append(image)
    return images


def _targets(empty: bool = False) -> list[dict[str, torch.Tensor]]:
    """Boxes, labels and instance masks (the squares of :func:`_images`); detectors that
    do not segment ignore the masks."""
    targets = []
    for image, box, label in zip(_images(), ([8.0, 10, 32, 34], [40.0, 12, 64, 36]), (1, 2)):
        h, w = image.shape[-2:]
        if empty:
            targets.append(
                {
                    "boxes": torch.zeros(0, 4),
                    "labels": torch.zeros(0, dtype=torch.int64),
                    "masks": torch.zeros(0, h, w, dtype=torch.bool),
                    "relations": torch.zeros(0, 3, dtype=torch.int64),
                }
            )
            continue
        x0, y0, x1, y1 = (int(v) for v in box)
        masks = torch.zeros(1, h, w, dtype=torch.bool)
        masks[0, y0:y1, x0:x1] = True
        targets.append(
            {
                "boxes": torch.tensor([box, [0.0, 0, 6, 6]]),
                "labels": torch.tensor([label, 1]),
                "masks": torch.cat([masks, torch.zeros(1, h, w, dtype=torch.bool)]),
                # the square is "predicate 1" of the corner box (relation models only)
                "relations": torch.tensor([[0, 1, 1]]),
            }
        )
    return targets


def _check_losses(case: str, losses: dict[str, torch.Tensor]) -> None:
    assert set(losses) == LOSS_KEYS[case.removesuffix("_fpn")]
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values()), losses
    total = sum(losses.values())
    assert total.requires_grad
    total.backward()


@pytest.mark.parametrize("case", CASES)
def test_derives_from_the_one_base(case):
    model = _build(case)
    assert isinstance(model, Detector)
    assert type(model).__bases__ == (Detector,)  # one level of subclassing
    assert model.supported_extras <= set(EXTRA_KEYS)


@pytest.mark.parametrize("case", CASES)
def test_training_step_returns_finite_losses(case):
    model = _build(case).train()
    _check_losses(case, model(_images(), _targets()))
    assert any(p.grad is not None for p in model.head_parameters())


@pytest.mark.parametrize("case", CASES)
def test_images_without_objects_train(case):
    model = _build(case).train()
    _check_losses(case, model(_images(), _targets(empty=True)))


@pytest.mark.parametrize("case", CASES)
def test_eval_outputs_follow_the_data_contract(case):
    model = _build(case).eval()
    images = _images()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == len(images)
    for out, image in zip(outputs, images):
        assert set(out) == OUTPUT_KEYS.get(case, DETECTION_KEYS)  # no extra unless asked for
        boxes, labels, scores = out["boxes"], out["labels"], out["scores"]
        n = len(boxes)
        if "masks" in out:  # one bool mask per detection, at the image's size
            assert out["masks"].shape == (n, *image.shape[-2:])
            assert out["masks"].dtype == torch.bool
        assert boxes.shape == (n, 4) and boxes.dtype == torch.float32
        assert labels.shape == (n,) and labels.dtype == torch.int64
        assert scores.shape == (n,) and scores.is_floating_point()
        h, w = image.shape[-2:]
        assert bool((boxes[:, :2] >= 0).all() and (boxes[:, 2:] >= boxes[:, :2]).all())
        assert bool((boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all())
        assert bool(((labels >= 1) & (labels <= NUM_CLASSES - 1)).all())
        assert bool((scores[:-1] >= scores[1:]).all())  # best first
    assert any(len(out["boxes"]) > 0 for out in outputs)


@pytest.mark.parametrize("case", CASES)
def test_extras_come_back_only_when_asked_for(case):
    model = _build(case).eval()
    images = _images()
    with torch.no_grad():
        plain = model(images)
        for extra in sorted(model.supported_extras):
            outputs = model(images, extras=(extra,))
            for out, base in zip(outputs, plain):
                assert set(out) == OUTPUT_KEYS.get(case, DETECTION_KEYS) | set(EXTRA_KEYS[extra])
                assert torch.equal(out["boxes"], base["boxes"])  # the same detections
                if extra == "proposals":
                    assert out["proposals"].dim() == 2 and out["proposals"].shape[1] == 4
                    assert len(out["proposals"]) > 0
                if extra == "grid":
                    assert isinstance(out["grid_size"], int) and out["grid_size"] > 0
                    assert out["cells"].shape == (len(out["boxes"]), 2)
                    assert bool(((out["cells"] >= 0) & (out["cells"] < out["grid_size"])).all())


@pytest.mark.parametrize("case", CASES)
def test_an_unsupported_extra_is_refused(case):
    model = _build(case).eval()
    name = case.removesuffix("_fpn")
    for extra in sorted({*EXTRA_KEYS, "attention"} - model.supported_extras):
        with pytest.raises(VisionLabError, match=f"{name} cannot return the extra '{extra}'"):
            model(_images(), extras=(extra,))
    with pytest.raises(VisionLabError, match="not the string"):
        model(_images(), extras=next(iter(model.supported_extras)))
    model.train()
    with pytest.raises(VisionLabError, match="eval outputs"):
        model(_images(), _targets(), extras=tuple(model.supported_extras))


@pytest.mark.parametrize("case", CASES)
def test_declared_hooks(case):
    model = _build(case).train()
    model.prepare_data([None], transform=None)  # every detector takes it; None is skipped
    backbone = {id(p) for p in model.backbone.parameters()}
    assert {id(p) for p in model.backbone_parameters()} == backbone
    head = {id(p) for p in model.head_parameters()}
    assert head and not head & backbone
    assert head | backbone == {id(p) for p in model.parameters()}

    model.freeze_backbone()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    _check_losses(case, model(_images(), _targets()))
    assert all(p.grad is None for p in model.backbone.parameters())
    assert any(p.grad is not None for p in model.head_parameters())

    model.unfreeze_backbone()  # Backbone.freeze_to(0): the stages the model runs train again
    used = TINY[case][1]
    for stride in STRIDES:
        params = [p for m in model.backbone.stage_modules(stride) for p in m.parameters()]
        assert all(p.requires_grad == (stride <= used) for p in params), stride

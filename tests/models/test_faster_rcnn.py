"""Faster R-CNN: the detector contract, settings, empty targets, and overfitting a few images."""

from __future__ import annotations

import pytest
import torch

from visionlab.errors import VisionLabError
from visionlab.models.registry import build_model
from visionlab.ops import box_iou

SMALL = {
    "backbone_width": 8,
    "rpn": {"anchor_sizes": [16, 32, 64], "pre_nms_top_n_test": 100, "post_nms_top_n_test": 30},
    "box_head": {"fc_width": 64},
}


def _scene(seed: int, size: int = 64) -> tuple[torch.Tensor, dict]:
    """A grey image with two flat-coloured rectangles: class 1 left, class 2 right."""
    g = torch.Generator().manual_seed(seed)
    image = torch.full((3, size, size), 0.5)
    boxes = []
    for label, colour in ((1, (1.0, 0.1, 0.1)), (2, (0.1, 0.1, 1.0))):
        w, h = torch.randint(size // 5, size * 2 // 5, (2,), generator=g).tolist()
        x = (label - 1) * size // 2 + int(torch.randint(0, 4, (1,), generator=g))
        y = int(torch.randint(0, size - h, (1,), generator=g))
        image[:, y : y + h, x : x + w] = torch.tensor(colour)[:, None, None]
        boxes.append([x, y, x + w, y + h])
    target = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor([1, 2])}
    return image, target


def _empty(size: int = 64) -> tuple[torch.Tensor, dict]:
    target = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)}
    return torch.rand(3, size, size), target


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"pooler": "roi_pool"}, {"fpn": True}, {"frozen_stride": 4}],
    ids=["align", "pool", "fpn", "frozen"],
)
def test_train_and_eval_contract(kwargs):
    torch.manual_seed(0)
    args = {**SMALL, **kwargs}
    model = build_model("faster_rcnn", num_classes=3, **args)
    images, targets = zip(*[_scene(0), _scene(1, size=48)])  # different sizes: padded batch
    losses = model(list(images), list(targets))
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    grads = {name: p.grad is not None for name, p in model.backbone.named_parameters()}
    early = [name for name in grads if name.startswith(("stem.", "stages.0."))]
    assert all(grads[name] != bool(kwargs.get("frozen_stride")) for name in early)
    assert all(grads[name] for name in grads if name.startswith("stages.1."))
    model.eval()
    with torch.no_grad():
        out = model(list(images))
    assert len(out) == 2 and set(out[0]) == {"boxes", "labels", "scores"}
    assert out[1]["boxes"].shape[1] == 4 and out[1]["labels"].dtype == torch.int64
    # untrained, three classes: every score is near 1/3, above the 0.05 threshold
    assert len(out[1]["boxes"]) > 0
    assert out[1]["boxes"][:, 2:].max() <= 48 and out[1]["labels"].min() >= 1
    with torch.no_grad():
        out = model(list(images), extras=("proposals",))
    assert out[0]["proposals"].shape[1] == 4 and len(out[0]["proposals"]) <= 30


def test_images_without_objects_train():
    torch.manual_seed(0)
    model = build_model("faster_rcnn", num_classes=3, **SMALL)
    images, targets = zip(_empty(), _empty())
    losses = model(list(images), list(targets))
    assert losses["loss_rpn_box_reg"].item() == 0.0 and losses["loss_box_reg"].item() == 0.0
    assert losses["loss_objectness"] > 0 and losses["loss_classifier"] > 0
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # and mixed with an image that has objects
    images, targets = zip(_empty(), _scene(3))
    losses = model(list(images), list(targets))
    assert all(torch.isfinite(v) for v in losses.values())


def test_bad_settings_are_named():
    with pytest.raises(VisionLabError, match="anchor_size"):
        build_model("faster_rcnn", num_classes=3, rpn={"anchor_size": [8]})
    with pytest.raises(VisionLabError, match="pooler"):
        build_model("faster_rcnn", num_classes=3, pooler="max")
    with pytest.raises(VisionLabError, match="strides"):
        build_model("faster_rcnn", num_classes=3, feature_stride=12)
    with pytest.raises(VisionLabError, match="frozen_stride"):
        build_model("faster_rcnn", num_classes=3, frozen_stride=2)


def test_rebuild_from_build_args():
    model = build_model("faster_rcnn", num_classes=3, **SMALL)
    again = build_model(**model.build_args)
    again.load_state_dict(model.state_dict())


@pytest.mark.slow
def test_overfits_a_few_images():
    torch.manual_seed(0)
    data = [_scene(i) for i in range(3)]
    images, targets = [d[0] for d in data], [d[1] for d in data]
    model = build_model("faster_rcnn", num_classes=3, feature_stride=8, **SMALL)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(120):
        losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        out = model(images)
    for pred, target in zip(out, targets):
        keep = pred["scores"] > 0.5
        boxes, labels = pred["boxes"][keep], pred["labels"][keep]
        for gt_box, gt_label in zip(target["boxes"], target["labels"]):
            same = labels == gt_label
            assert same.any(), f"class {gt_label.item()} not detected"
            assert box_iou(gt_box[None], boxes[same]).max() > 0.7


@pytest.mark.slow
@pytest.mark.parametrize("model", ["faster_rcnn", "fast_rcnn"])
def test_train_eval_predict_commands(model, tmp_path, monkeypatch, capsys):
    """`visionlab train`, `eval --json` and `predict --show-proposals` on a tiny scenes copy."""
    import json

    from visionlab.cli import main
    from visionlab.data.scenes import render_scenes
    from visionlab.engine.api import load, predict

    monkeypatch.setenv("VISIONLAB_HOME", str(tmp_path / "home"))  # selective-search cache
    data = render_scenes(tmp_path / "sc", n_train=4, n_val=2, size=64, progress=False, workers=0)
    run = tmp_path / "run"
    args = [
        "train",
        f"data={data}",
        f"out={run}",
        "task=detection",
        f"model={model}",
        "model_args={'backbone_width': 4, 'feature_stride': 8, 'box_head': {'fc_width': 32}}",
        "image_size=64",
        "train.epochs=1",
        "train.batch_size=2",
        "train.progress=false",
    ]
    assert main(args) == 0
    best = run / "checkpoints" / "best.pt"
    capsys.readouterr()
    assert main(["eval", str(best), "--data", str(data), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {"AP", "AP50", "AP75"} <= set(metrics)
    images = data / "images" / "val"
    out = tmp_path / "pred"
    argv = ["predict", str(best), str(images), "--out", str(out), "--show-proposals"]
    capsys.readouterr()
    assert main([*argv, "--score-threshold", "0.0"]) == 0
    payload = json.loads((out / "predictions.json").read_text())
    record = payload["predictions"][0]
    assert "proposals" not in record
    # each count is the number of proposals the model makes for that image, within its cap
    reloaded = load(best, fuse=True)
    files = [r["file"] for r in payload["predictions"]]
    preds = predict(reloaded, files, device="cpu", extras=("proposals",))
    counts = [len(p["proposals"]) for p in preds]
    assert [r["num_proposals"] for r in payload["predictions"]] == counts
    proposer = reloaded.proposer
    cap = getattr(proposer, "max_proposals", None) or proposer.settings.post_nms_top_n_test
    assert all(0 < n <= cap for n in counts), (counts, cap)
    assert (out / record["proposals_drawing"]).is_file() and (out / record["drawing"]).is_file()
    written = len(list(out.glob("*.png")))  # a drawing and a proposals sheet per image
    assert written == 2 * len(payload["predictions"])
    assert f"and {written} PNGs" in capsys.readouterr().out

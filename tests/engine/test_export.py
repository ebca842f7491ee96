"""`visionlab export --format onnx | torch-export`: the exported graphs (pre- and
post-processing inside) give PyTorch's predictions on onnxruntime and ``torch.export``, for
two image sizes and an image with nothing in it, and `visionlab predict` takes them like a
checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from untrained import save_untrained

from visionlab.cli import main
from visionlab.engine.commands_export import export
from visionlab.errors import VisionLabError
from visionlab.export.runtime import load_exported

TOL = 1e-4
SIZE = 64  # every checkpoint's image_size (and YOLO's input size)
FORMATS = ("onnx", "torch-export")
CLASSES = ["circle", "square", "triangle"]


def _save(path: Path, name: str, task: str, args: dict, image_size: int | None = SIZE) -> Path:
    return save_untrained(path, name, task, args, image_size=image_size, classes=CLASSES)


def _images() -> dict[str, torch.Tensor]:
    """Batches of two image sizes and a blank image (one colour: nothing in it)."""
    g = torch.Generator().manual_seed(1)
    return {
        "model_size": torch.rand(2, 3, SIZE, SIZE, generator=g),
        "other_size": torch.rand(1, 3, 80, 48, generator=g),
        "blank": torch.full((1, 3, 72, 56), 0.5),
    }


# family -> (registered model, task, tiny builder arguments); the detectors' score_thresh is
# set by the fixture: above the blank image's best score, below the other images'
# a tiny Faster R-CNN with FPN (two levels, for the pooler's level choice)
TWO_STAGE_FPN = {
    "num_classes": 4,
    "backbone_width": 4,
    "fpn": True,
    "fpn_strides": [8, 16],
    "fpn_channels": 8,
    "rpn": {"anchor_sizes": [16, 32]},
    "box_head": {"fc_width": 16},
}
FAMILIES = {
    "classification": ("tiny_cnn", "classification", {"num_classes": 3, "width": 4}),
    "segmentation": ("fcn8s", "segmentation", {"num_classes": 4, "fc_width": 16}),
    "yolo": (
        "yolo",
        "detection",
        {
            "num_classes": 4,
            "backbone_width": 4,
            "input_size": SIZE,
            "head": "conv",
            "feature_stride": 8,
            "anchors": [[12.0, 12.0], [28.0, 28.0]],  # sigmoid confidences: scores above 0
        },
    ),
    "mask_rcnn": (  # Faster R-CNN's graph and the mask head; FPN for the pooler's levels
        "mask_rcnn",
        "instance",
        {
            **TWO_STAGE_FPN,
            "mask_head": {"width": 8, "num_convs": 1},
        },
    ),
    "relation": (  # Faster R-CNN's graph and the relation head on its detections
        "relation_rcnn",
        "relation",
        {
            **TWO_STAGE_FPN,
            "num_predicates": 3,
            "relation_head": {"width": 8, "embed_dim": 4, "max_objects": 8},
        },
    ),
}
DETECTORS = ("yolo", "mask_rcnn", "relation")
ONE_IMAGE = ("mask_rcnn", "relation")  # the two-stage graph proposes for one image


def _threshold(ckpt: Path) -> float:
    """A score threshold between the blank image's best score and the other images'."""
    from visionlab.engine.api import load, predict

    model, images = load(ckpt), _images()
    best = {
        k: max(float(p["scores"].max()) for p in predict(model, list(batch)))
        for k, batch in images.items()
    }
    others = min(best["model_size"], best["other_size"])
    assert best["blank"] < others
    return best["blank"] + 0.3 * (others - best["blank"])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    ckpts = {}
    for family, (name, task, args) in FAMILIES.items():
        path = root / family / "best.pt"
        if family in DETECTORS:
            probe = _save(
                root / "probe" / f"{family}.pt", name, task, {**args, "score_thresh": 0.0}
            )
            args = {**args, "score_thresh": _threshold(probe)}
        ckpts[family] = _save(path, name, task, args)
    return ckpts


@pytest.fixture(scope="module")
def exports(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("exported")
    return {
        (family, fmt): export(ckpt, root / f"{family}-{fmt}", fmt)
        for family, ckpt in checkpoints.items()
        for fmt in FORMATS
    }


def _reference(ckpt: Path, batch: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """PyTorch's predictions for ``batch``: the eval transform, the model, the task's
    post-processing, mapped back onto the images (``visionlab.predict``)."""
    from visionlab.engine.api import load, predict

    return predict(load(ckpt), list(batch), topk=len(CLASSES), device="cpu")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("family", FAMILIES)
def test_exported_graph_predicts_as_pytorch(
    family: str, fmt: str, checkpoints: dict, exports: dict
) -> None:
    model = load_exported(exports[family, fmt])
    one_image = family in ONE_IMAGE
    assert model.meta["dynamic"] == {"batch": not one_image, "height": True, "width": True}
    counts = {}
    for key, batch in _images().items():
        expected = _reference(checkpoints[family], batch)
        if family == "classification":
            out = model.outputs(batch)
            torch.testing.assert_close(out["scores"], torch.stack([e["scores"] for e in expected]))
            assert out["labels"].tolist() == [e["labels"].tolist() for e in expected]
        elif family == "segmentation":
            out = model.outputs(batch)
            assert out["semantic"].shape == batch[:, 0].shape  # the input's pixels
            assert torch.equal(out["semantic"], torch.stack([e["semantic"] for e in expected]))
            sem_scores = torch.stack([e["scores"] for e in expected])
            torch.testing.assert_close(out["scores"], sem_scores, atol=TOL, rtol=0)
        else:
            got = model(list(batch))
            counts[key] = sum(len(g["boxes"]) for g in got)
            for g, e in zip(got, expected, strict=True):
                torch.testing.assert_close(g["boxes"], e["boxes"], atol=TOL, rtol=0)
                torch.testing.assert_close(g["scores"], e["scores"], atol=TOL, rtol=0)
                assert g["labels"].tolist() == e["labels"].tolist()
                if "masks" in e:  # in the input's pixels
                    assert g["masks"].shape == e["masks"].shape and torch.equal(
                        g["masks"], e["masks"]
                    )
                if "relations" in e:  # indices into the detections, ranked inside
                    assert g["relations"].tolist() == e["relations"].tolist()
                    torch.testing.assert_close(
                        g["relation_scores"], e["relation_scores"], atol=TOL, rtol=0
                    )
                    assert "pairs" not in g  # the extra, only when asked
    if family in DETECTORS:
        assert counts["blank"] == 0 and counts["model_size"] > 0 and counts["other_size"] > 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_relations_without_graph_constraint_rank_as_pytorch(
    fmt: str, checkpoints: dict, exports: dict
) -> None:
    from visionlab.engine.api import load, predict

    batch = list(_images()["model_size"])
    options = {"graph_constraint": False, "device": "cpu"}
    expected = predict(load(checkpoints["relation"]), batch, **options)
    got = predict(load_exported(exports["relation", fmt]), batch, **options)
    for g, e in zip(got, expected, strict=True):
        assert len(e["relations"]) > len(e["boxes"])  # pairs with several predicates
        assert g["relations"].tolist() == e["relations"].tolist()
        torch.testing.assert_close(g["relation_scores"], e["relation_scores"], atol=TOL, rtol=0)


def test_logits_equal_the_models(checkpoints: dict, exports: dict) -> None:
    from visionlab.engine.api import load
    from visionlab.export.graphs import resize_input

    batch = _images()["other_size"]
    eager = load(checkpoints["classification"])
    with torch.no_grad():
        logits = eager(resize_input(batch, SIZE))
    for fmt in FORMATS:
        got = load_exported(exports["classification", fmt]).outputs(batch)["logits"]
        torch.testing.assert_close(got, logits, atol=TOL, rtol=0)


def test_metadata_names_classes_task_and_opset(exports: dict) -> None:
    import onnx

    from visionlab.export.writers import META_KEY, OPSET

    proto = onnx.load(str(exports["yolo", "onnx"]))
    props = {p.key: p.value for p in proto.metadata_props}
    meta = json.loads(props[META_KEY])
    assert json.loads(props["classes"]) == CLASSES and props["task"] == "detection"
    assert meta["opset"] == OPSET == proto.opset_import[0].version
    assert meta["image_size"] == SIZE and meta["detection_settings"]["nms_thresh"] == 0.5
    beside = json.loads((exports["yolo", "torch-export"].parent / "meta.json").read_text())
    assert beside["classes"] == CLASSES and beside["outputs"][-1] == "batch_index"


@pytest.mark.parametrize("fmt", FORMATS)
def test_predict_takes_an_export_like_the_checkpoint(
    fmt: str, checkpoints: dict, exports: dict, tmp_path: Path
) -> None:
    images = []
    for i, batch in enumerate(_images().values()):
        pixels = (batch[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        images.append(tmp_path / "in" / f"{i}.png")
        images[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(images[-1])
    common = [*map(str, images), "--score-threshold", "0", "--workers", "0", "--no-save-images"]
    records = {}
    exported = exports["yolo", fmt]  # the .pt2 by its folder, the .onnx by its file
    exported = exported.parent if fmt == "torch-export" else exported
    for name, model in (("ckpt", checkpoints["yolo"]), ("export", exported)):
        assert main(["predict", str(model), *common, "--out", str(tmp_path / name)]) == 0
        payload = json.loads((tmp_path / name / "predictions.json").read_text())
        records[name] = payload["predictions"]
    assert len(records["export"]) == len(images)
    for got, want in zip(records["export"], records["ckpt"], strict=True):
        assert len(got["detections"]) == len(want["detections"])
        for g, w in zip(got["detections"], want["detections"]):
            assert g["label"] == w["label"]
            # the JSON rounds boxes to 0.01 px, scores to 1e-5: a 1e-4 difference may cross one
            assert np.allclose(g["box"], w["box"], atol=0.01 + TOL, rtol=0)
            assert abs(g["score"] - w["score"]) <= 1e-5 + TOL
    assert records["export"][2]["detections"] == []  # the blank image


def test_a_selective_search_detector_is_refused_in_one_line(tmp_path: Path) -> None:
    ckpt = _save(
        tmp_path / "fast.pt",
        "fast_rcnn",
        "detection",
        {"num_classes": 4, "backbone_width": 4, "feature_stride": 8, "box_head": {"fc_width": 16}},
    )
    with pytest.raises(VisionLabError, match="safetensors"):
        export(ckpt, tmp_path / "out", "onnx")


def test_a_graph_that_holds_for_some_sizes_only_is_refused(tmp_path: Path) -> None:
    # an FCN without an image size pads only the sizes that need it: a condition on the size
    ckpt = _save(tmp_path / "fcn.pt", *FAMILIES["segmentation"], image_size=None)
    with pytest.raises(VisionLabError, match="image_size"):
        export(ckpt, tmp_path / "out", "torch-export")

"""Instance targets from every format that holds masks, scored as pycocotools scores them
(crowd regions ignored), and carried by `visionlab data convert` where the target format
can hold them (what it cannot hold is named in a warning)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from visionlab.bench.coco_eval import pycocotools_eval
from visionlab.cli import main
from visionlab.data.convert import convert_dataset
from visionlab.data.datasets import load_dataset
from visionlab.data.records import encode_masks
from visionlab.eval.coco import STAT_KEYS
from visionlab.eval.detection import DetectionEvaluator


def _masks(root: Path, split: str = "train") -> list[torch.Tensor]:
    ds = load_dataset(root, split, task="instance")
    return [ds.annotations(i)["masks"] for i in range(len(ds))]


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_coco_polygon_rle_and_crowd_targets_score_as_pycocotools(coco_root: Path) -> None:
    # the crowd region becomes a "cat" crowd: a detection on it must be ignored, not wrong
    ann_file = coco_root / "annotations" / "instances_train.json"
    gt = json.loads(ann_file.read_text())
    gt["annotations"][2]["category_id"] = 3
    ann_file.write_text(json.dumps(gt))
    ds = load_dataset(coco_root, "train", task="instance")
    targets = [ds.annotations(i) for i in range(len(ds))]
    assert [t["masks"].shape[0] for t in targets] == [2, 1, 0]
    assert targets[1]["iscrowd"].tolist() == [1] and targets[1]["masks"].any()
    # every object found, and a corner of the crowd region with the best score of all
    preds = []
    for t, score in zip(targets, (0.8, 0.95, 0.5)):
        n = len(t["labels"])
        preds.append({k: t[k].clone() for k in ("boxes", "labels", "masks")})
        preds[-1]["scores"] = torch.full((n,), score)
    preds[1]["boxes"][0] = torch.tensor([0.0, 0.0, 5.0, 5.0])
    preds[1]["masks"][0, 5:] = False
    preds[1]["masks"][0, :, 5:] = False
    evaluator = DetectionEvaluator(ds.classes, iou_type="segm")
    evaluator.update(preds, targets)
    result = evaluator.compute()
    assert result["mask_AP"] == pytest.approx(1.0) and result["AP"] == pytest.approx(1.0)
    dt = [
        {"image_id": image_id, "category_id": ds.category_ids[int(lab) - 1], "score": 0.8,
         "segmentation": rle}
        for image_id, p in zip((10, 11, 12), preds)
        for lab, rle in zip(p["labels"], encode_masks(p["masks"]))
    ]  # fmt: skip
    dt[-1]["score"] = 0.95  # the crowd detection, as above
    ref = pycocotools_eval(gt, dt, "segm")
    assert [result[f"mask_{k}"] for k in STAT_KEYS] == pytest.approx(list(ref.stats))
    # without the crowd flag the corner is a false positive ranked first (IoU 25 / 200)
    for t in targets:
        t["iscrowd"] = torch.zeros_like(t["iscrowd"])
    evaluator.reset()
    evaluator.update(preds, targets)
    assert evaluator.compute()["mask_AP"] < 1.0


def test_voc_object_pngs_convert_to_coco_exactly_and_to_yolo_polygons(
    voc_root: Path, tmp_path: Path
) -> None:
    source = _masks(voc_root)
    assert source[0].shape == (2, 32, 48) and not source[0][:, 5, 10].any()  # 255: no object
    convert_dataset(voc_root, tmp_path / "coco", to="coco", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(_masks(tmp_path / "coco"), source))
    notes = convert_dataset(voc_root, tmp_path / "yolo", to="yolo", progress=False)
    assert any("instance masks are not written" in n for n in notes)
    convert_dataset(voc_root, tmp_path / "seg", to="yolo", segments=True, progress=False)
    polygons = _masks(tmp_path / "seg")
    assert [_iou(a, b) > 0.8 for a, b in zip(polygons[0], source[0])] == [True, True]


def test_coco_masks_convert_to_voc_and_yolo_polygons(coco_root: Path, tmp_path: Path) -> None:
    source = _masks(coco_root)
    notes = convert_dataset(coco_root, tmp_path / "voc", to="voc", progress=False)
    assert any("crowd" in n for n in notes)  # written as difficult objects
    voc = _masks(tmp_path / "voc")
    assert len(voc) == len(source)
    assert all(torch.equal(a, b) for a, b in zip(voc, source))
    notes = convert_dataset(coco_root, tmp_path / "seg", to="yolo", segments=True, progress=False)
    assert any("crowd annotations (iscrowd=1) are dropped" in n for n in notes)
    yolo = _masks(tmp_path / "seg")
    assert yolo[0].shape == source[0].shape and yolo[1].shape[0] == 0  # the crowd is gone
    assert all(_iou(a, b) > 0.8 for a, b in zip(yolo[0], source[0]))


def test_yolo_polygons_convert_to_coco_and_voc_exactly(yolo_root: Path, tmp_path: Path) -> None:
    labels = yolo_root / "labels" / "train"
    (labels / "x.txt").write_text("1 0.1 0.1 0.3 0.1 0.3 0.4\n0 0.5 0.5 0.9 0.5 0.9 0.9 0.5 0.9\n")
    (labels / "y.txt").write_text("")
    source = _masks(yolo_root)
    assert source[0].shape == (2, 40, 50) and source[0].sum() > 0
    for fmt in ("coco", "voc"):
        assert convert_dataset(yolo_root, tmp_path / fmt, to=fmt, progress=False) == []
        assert all(torch.equal(a, b) for a, b in zip(_masks(tmp_path / fmt), source)), fmt


def test_scenes_instance_targets_and_the_cli_naming_dropped_masks(
    scenes_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys
) -> None:
    scenes = load_dataset("scenes", "val", task="instance")
    target = next(t for _, t in (scenes[i] for i in range(len(scenes))) if len(t["boxes"]))
    masks = target["masks"]
    assert masks.dtype == torch.bool and masks.shape[0] == len(target["boxes"]) > 0
    assert masks.flatten(1).any(1).all()  # every object has pixels
    with caplog.at_level(logging.WARNING):
        args = ["data", "convert", str(scenes_root), str(tmp_path / "y"), "--to", "yolo"]
        assert main(args) == 0
    assert "instance masks are not written (pass --segments" in caplog.text
    assert "warning(s) above" in capsys.readouterr().out

"""Instance segmentation end to end: a tiny Mask R-CNN trained by `visionlab train` on a
scenes copy, scored by `visionlab eval` (box and mask AP), run by `visionlab predict`
(RLE masks, COCO results, per-instance drawings) and its results scored by
`visionlab eval detections --iou-type segm`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from tiny_runs import train_on_scenes_copy

from visionlab.cli import main
from visionlab.eval.coco import STAT_KEYS

TINY_MASK_RCNN = (
    "model_args={'backbone_width': 4, 'feature_stride': 8, 'box_head': {'fc_width': 32}, "
    "'mask_head': {'width': 8}, 'score_thresh': 0.0, 'detections_per_img': 5}"
)


@pytest.fixture(scope="module")
def instance_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(scenes copy, run directory) of a one-epoch Mask R-CNN; every detection is kept
    (``score_thresh`` 0), so the untrained-looking model still predicts."""
    return train_on_scenes_copy(
        tmp_path_factory.mktemp("instance"), "instance", "mask_rcnn", TINY_MASK_RCNN
    )


def test_eval_reports_box_and_mask_ap(instance_run, capsys) -> None:
    data, run = instance_run
    best = run / "checkpoints" / "best.pt"
    capsys.readouterr()
    assert main(["eval", str(best), "--data", str(data), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    for key in STAT_KEYS:
        assert -1 <= metrics[key] <= 1 and -1 <= metrics[f"mask_{key}"] <= 1, key
    assert set(metrics["mask_per_class"]) == set(metrics["per_class"])
    assert json.loads((run / "eval.json").read_text())["metrics"]["mask_AP"] == metrics["mask_AP"]
    # training's validation used the same evaluator; mask_AP picked best.pt
    evals = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    evals = [r for r in evals if r["type"] == "eval"]
    assert evals and {"val/AP", "val/mask_AP", "val/mask_AP50"} <= set(evals[-1])
    from visionlab.engine.checkpoint import load_checkpoint

    assert load_checkpoint(best)["best_metric"]["name"] == "mask_AP"
    capsys.readouterr()
    assert main(["eval", str(best), "--data", str(data)]) == 0
    table = capsys.readouterr().out
    assert "mask_AP" in table and "mask per class:" in table


def test_predict_writes_rle_masks_coco_results_and_drawings(instance_run, tmp_path, capsys):
    from visionlab.engine.api import load, predict

    data, run = instance_run
    best = run / "checkpoints" / "best.pt"
    images = data / "images" / "val"
    out = tmp_path / "pred"
    argv = ["predict", str(best), str(images), "--out", str(out), "--score-threshold", "0"]
    assert main(argv) == 0
    payload = json.loads((out / "predictions.json").read_text())
    assert payload["task"] == "instance"
    records = payload["predictions"]
    assert len(records) == 2
    dets = [d for r in records for d in r["detections"]]
    assert dets, "the model predicted nothing: the mask checks below would be empty"
    preds = predict(load(best, fuse=True), [r["file"] for r in records], device="cpu")
    for record, pred in zip(records, preds):
        assert len(record["detections"]) == len(pred["masks"])
        for det, mask in zip(record["detections"], pred["masks"]):
            rle = det["segmentation"]
            assert rle["size"] == [record["height"], record["width"]]
            assert isinstance(rle["counts"], str)
            decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
            assert np.array_equal(decoded.astype(bool), mask.numpy())
        drawing = Image.open(out / record["drawing"])  # upscaled by a whole factor to 512
        scale = drawing.size[0] / record["width"]
        assert scale == int(scale) and drawing.size[1] == scale * record["height"]
        assert max(drawing.size) >= 512
    # COCO results: the same detections, image ids from the file names (000001.png -> 1)
    results = json.loads((out / "coco_results.json").read_text())
    assert len(results) == len(dets)
    assert {r["image_id"] for r in results} == {int(Path(r["file"]).stem) for r in records}
    assert [r["segmentation"] for r in results] == [d["segmentation"] for d in dets]
    assert "coco_results.json" in capsys.readouterr().out

    # scored against the dataset's own ground truth by `visionlab eval detections`
    gt_file = data / "annotations" / "instances_val.json"
    dt_file = out / "coco_results.json"
    argv = ["eval", "detections", "--gt", str(gt_file), "--dt", str(dt_file), "--json"]
    capsys.readouterr()
    assert main([*argv, "--iou-type", "segm"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert all(-1 <= scored[k] <= 1 for k in STAT_KEYS)
    # and against ground truth made of the non-empty predicted masks: every one is found
    gt = json.loads(gt_file.read_text())
    kept = [r for r in results if mask_utils.area(_bytes(r["segmentation"])) > 0]
    assert kept, "every predicted mask is empty"
    gt["annotations"] = [
        {
            "id": k + 1,
            "image_id": r["image_id"],
            "category_id": r["category_id"],
            "segmentation": r["segmentation"],
            "bbox": r["bbox"],
            "iscrowd": 0,
        }
        for k, r in enumerate(kept)
    ]
    (tmp_path / "self_gt.json").write_text(json.dumps(gt))
    (tmp_path / "kept.json").write_text(json.dumps(kept))
    argv = ["eval", "detections", "--gt", str(tmp_path / "self_gt.json")]
    assert main([*argv, "--dt", str(tmp_path / "kept.json"), "--iou-type", "segm", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["AP"] == pytest.approx(1.0)


def _bytes(rle: dict) -> dict:
    return {"size": rle["size"], "counts": rle["counts"].encode()}

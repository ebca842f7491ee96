"""`visionlab eval detections`: the JSON output and clear errors for bad files."""

from __future__ import annotations

import json

import pytest

from visionlab.bench.coco_eval import synthetic_coco
from visionlab.cli import main
from visionlab.eval.coco import STAT_KEYS, coco_evaluate

KEYS = {*STAT_KEYS, "voc07_mAP", "voc_mAP", "per_class"}


@pytest.fixture
def files(tmp_path):
    gt, dt = synthetic_coco(12, seed=7)
    gt["annotations"][0]["difficult"] = 1
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dt))
    return tmp_path / "gt.json", tmp_path / "dt.json", gt, dt


def test_json_output(files, capsys):
    gt_path, dt_path, gt, dt = files
    assert main(["eval", "detections", "--gt", str(gt_path), "--dt", str(dt_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)  # exactly one JSON object
    assert set(out) == KEYS
    ref = coco_evaluate(gt, dt)
    assert [out[k] for k in STAT_KEYS] == [round(ref[k], 6) for k in STAT_KEYS]
    assert out["per_class"]["class21"] is None  # no ground truth: null, not NaN
    assert set(out["per_class"]) == {c["name"] for c in gt["categories"]}
    assert 0 < out["voc07_mAP"] < 1 and 0 < out["voc_mAP"] < 1


def test_table_output(files, capsys):
    gt_path, dt_path, *_ = files
    assert main(["eval", "detections", "--gt", str(gt_path), "--dt", str(dt_path)]) == 0
    text = capsys.readouterr().out
    assert "AP50" in text and "VOC mAP@0.5, 2007 11-point" in text and "class13" in text


def _run_bad(tmp_path, capsys, gt_text=None, dt_text=None, extra=()):
    gt, dt = tmp_path / "gt.json", tmp_path / "dt.json"
    if gt_text is not None:
        gt.write_text(gt_text)
    if dt_text is not None:
        dt.write_text(dt_text)
    code = main(["eval", "detections", "--gt", str(gt), "--dt", str(dt), *extra])
    return code, capsys.readouterr().err


GT = {
    "images": [{"id": 1, "height": 10, "width": 10}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25}],
    "categories": [{"id": 1, "name": "x"}],
}
DET = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}


@pytest.mark.parametrize(
    ("gt_text", "dt_text", "expect"),
    [
        (json.dumps(GT), None, ["dt.json", "not found"]),
        (json.dumps(GT), "[{", ["dt.json", "not valid JSON"]),
        ("{", "[]", ["gt.json", "not valid JSON"]),
        (
            json.dumps(GT),
            json.dumps([{k: v for k, v in DET.items() if k != "bbox"}]),
            ["dt.json", "[results[0].bbox]"],
        ),
        (
            json.dumps(GT),
            json.dumps([{**DET, "score": float("nan")}]),
            ["dt.json", "[results[0].score]", "finite"],
        ),
        (
            json.dumps(GT),
            json.dumps([DET, {**DET, "category_id": 5}]),
            ["dt.json", "[results[1].category_id]"],
        ),
        (
            json.dumps(GT),
            json.dumps([{**DET, "image_id": 2}]),
            ["dt.json", "[results[0].image_id]"],
        ),
        (json.dumps({"images": []}), "[]", ["gt.json", "[annotations]"]),
    ],
)
def test_bad_files_are_one_clear_line(tmp_path, capsys, gt_text, dt_text, expect):
    code, err = _run_bad(tmp_path, capsys, gt_text, dt_text)
    assert code == 2
    assert "Traceback" not in err and err.count("\n") == 1
    for word in expect:
        assert word in err


def test_segm_needs_segmentation(tmp_path, capsys):
    code, err = _run_bad(
        tmp_path, capsys, json.dumps(GT), json.dumps([DET]), ["--iou-type", "segm"]
    )
    assert code == 2 and "segmentation" in err and "gt.json" in err

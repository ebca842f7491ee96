"""`visionlab eval detections`: the JSON output and clear errors for bad files."""

from __future__ import annotations

import json

import pytest
from tiny_runs import train_on_scenes_copy

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


TINY_FASTER_RCNN = (
    "model_args={'backbone_width': 4, 'feature_stride': 8, 'box_head': {'fc_width': 32}, "
    "'score_thresh': 0.0, 'detections_per_img': 5}"
)


@pytest.fixture(scope="module")
def detector_run(tmp_path_factory):
    """(scenes copy, checkpoint) of a one-epoch Faster R-CNN that keeps every detection."""
    data, run = train_on_scenes_copy(
        tmp_path_factory.mktemp("detector"), "detection", "faster_rcnn", TINY_FASTER_RCNN
    )
    return data, run / "checkpoints" / "best.pt"


def test_eval_plots_writes_the_error_analysis(detector_run, tmp_path, capsys):
    from PIL import Image

    from visionlab.data.datasets import load_dataset

    data, ckpt = detector_run
    capsys.readouterr()
    assert main(["eval", str(ckpt), "--data", str(data), "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    out = tmp_path / "plots"
    argv = ["eval", str(ckpt), "--data", str(data), "--json", "--plots", str(out)]
    assert main([*argv, "--plots-score", "0"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == plain  # the same metrics, still one JSON object
    assert str(out) in captured.err and "analysis.json" in captured.err

    report = json.loads((out / "analysis.json").read_text())
    assert report["task"] == "detection" and report["score_threshold"] == 0.0
    for name in report["files"]:
        with Image.open(out / name) as im:
            assert im.format == "PNG" and min(im.size) > 100, name
    assert {"pr_curves.png", "ap_by_size.png", "confusion.png", "error_breakdown.png"} <= set(
        report["files"]
    )
    # every ground-truth object is in exactly one cell of its class's row
    dataset = load_dataset(data, "val", task="detection")
    classes = list(dataset.classes)
    labels = [int(c) for i in range(len(dataset)) for c in dataset.annotations(i)["labels"]]
    matrix = report["confusion"]["matrix"]
    assert report["confusion"]["rows"] == [*classes, "background"]
    assert [sum(row) for row in matrix[:-1]] == [labels.count(k) for k in range(1, 8)]
    detections = sum(sum(row[:-1]) for row in matrix)
    assert detections > 0, "the model predicted nothing: the analysis would be empty"
    # the curves and sizes are the evaluator's numbers
    curves = report["pr_curves"]["curves"]
    ap50 = [c["AP"] for c in curves["0.5"].values()]
    assert sum(ap50) / len(ap50) == pytest.approx(plain["AP50"])
    assert set(curves["0.5"]) == {classes[k - 1] for k in set(labels)}
    for size, key in zip(("small", "medium", "large"), ("APs", "APm", "APl")):
        if plain[key] > -1:
            assert report["ap_by_size"]["all"][size] == pytest.approx(plain[key])
    assert report["ap_by_size"]["area"]["ground truth"] == "box area (w * h)"
    counts = report["error_breakdown"]["counts"]
    assert 0 < counts["detections"] <= len(labels)
    assert (
        sum(counts[k] for k in ("correct", "localization", "similar", "other", "background"))
        == counts["detections"]
    )
    worst = report["worst_images"]
    assert worst and worst[0]["errors"] >= worst[-1]["errors"] > 0
    assert all((out / w["png"]).is_file() and w["file"] for w in worst)

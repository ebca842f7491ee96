"""COCO evaluation: our engine against pycocotools (the reference), edge cases, bad input."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from visionlab.bench.coco_eval import pycocotools_eval, synthetic_coco
from visionlab.errors import DataError
from visionlab.eval.coco import STAT_KEYS, coco_evaluate, parse_ground_truth, parse_results
from visionlab.eval.coco_engine import evaluate_arrays


def _assert_equal_to_pycocotools(gt: dict, dt: list[dict], iou_type: str) -> dict:
    ref = pycocotools_eval(gt, dt, iou_type)
    g = parse_ground_truth(gt, iou_type)
    ours = evaluate_arrays(g, parse_results(dt, g, iou_type), iou_type)
    # the whole tables, not only the means: same floats everywhere
    np.testing.assert_array_equal(ours.precision, ref.eval["precision"])
    np.testing.assert_array_equal(ours.recall, ref.eval["recall"])
    assert [ours.stats[k] for k in STAT_KEYS] == list(ref.stats)
    result = coco_evaluate(gt, dt, iou_type)
    assert [result[k] for k in STAT_KEYS] == list(ref.stats)
    for k, name in enumerate(g.category_names):  # detectron2's per-class AP
        p = ref.eval["precision"][:, :, k, 0, -1]
        expected = float(np.mean(p[p > -1])) if (p > -1).any() else math.nan
        assert result["per_class"][name] == pytest.approx(expected, nan_ok=True, abs=0)
    return result


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bbox_equals_pycocotools(seed):
    gt, dt = synthetic_coco(40, seed=seed)
    result = _assert_equal_to_pycocotools(gt, dt, "bbox")
    assert math.isnan(result["per_class"]["class21"])  # the category without ground truth
    assert 0 < result["AP"] < 1


@pytest.mark.parametrize("seed", [0, 1])
def test_segm_equals_pycocotools(seed):
    gt, dt = synthetic_coco(25, seed=seed, segm=True)
    _assert_equal_to_pycocotools(gt, dt, "segm")
    # without "bbox" in the results, the detection area is the mask area (pycocotools' rule)
    no_box = [{k: v for k, v in d.items() if k != "bbox"} for d in dt]
    _assert_equal_to_pycocotools(gt, no_box, "segm")


def _dense_case(seed: int) -> tuple[dict, list[dict]]:
    """Few images, clusters of overlapping boxes, many crowds, annotation id 0, areas on the
    range boundaries, an 'ignore' field (not read), coarse scores (ties), 150 detections in
    one image, an image with ground truth only and one with detections only."""
    rng = np.random.default_rng(seed)
    images = [{"id": i, "height": 200, "width": 200} for i in (30, 10, 70, 20, 50, 60)]
    cats = [{"id": 4, "name": "a"}, {"id": 2, "name": "b"}, {"id": 9, "name": "no_gt"}]
    anns, dets = [], []
    for img in (30, 10, 70, 20, 50):
        for _ in range(3):
            cx, cy, s = rng.uniform(40, 160), rng.uniform(40, 160), rng.uniform(8, 120)
            for _ in range(int(rng.integers(1, 5))):
                box = np.array([cx - s / 2, cy - s / 2, s, s]) + rng.normal(0, 0.1 * s, 4)
                box = [round(float(v), 1) for v in box]
                box[2], box[3] = max(box[2], 1.0), max(box[3], 1.0)
                area = float(rng.choice([32.0**2, 96.0**2, box[2] * box[3]]))
                anns.append(
                    {
                        "id": len(anns),  # starts at 0
                        "image_id": img,
                        "category_id": int(rng.choice([4, 2])),
                        "bbox": box,
                        "area": area,
                        "iscrowd": int(rng.random() < 0.25),
                        "ignore": int(rng.random() < 0.3),
                    }
                )
            if img == 50:
                continue  # ground truth only
            for _ in range(150 if img == 70 else int(rng.integers(3, 12))):
                box = np.array([cx - s / 2, cy - s / 2, s, s]) + rng.normal(0, 0.15 * s, 4)
                box = [round(float(v), 1) for v in box]
                box[2], box[3] = max(box[2], 1.0), max(box[3], 1.0)
                if rng.random() < 0.1:
                    box[2] = box[3] = 32.0  # detection area exactly on a boundary
                score = float(rng.choice([0.1, 0.3, 0.5, 0.7, 0.9]))
                cat = int(rng.choice([4, 2, 9]))
                dets.append({"image_id": img, "category_id": cat, "bbox": box, "score": score})
    dets += [{"image_id": 60, "category_id": 4, "bbox": [1, 1, 50, 50], "score": 0.5}]
    return {"images": images, "annotations": anns, "categories": cats}, dets


@pytest.mark.parametrize("seed", range(4))
def test_dense_overlaps_crowds_and_ties_equal_pycocotools(seed):
    gt, dt = _dense_case(seed)
    _assert_equal_to_pycocotools(gt, dt, "bbox")


def test_empty_results_are_zero_with_a_warning(caplog):
    gt, _ = synthetic_coco(10, seed=3)
    with caplog.at_level(logging.WARNING):
        result = coco_evaluate(gt, [], "bbox")
    assert "empty" in caplog.text
    for k in STAT_KEYS:
        assert result[k] in (0.0, -1.0)  # -1 only where an area range has no ground truth
    assert result["AP"] == 0.0 and result["AR100"] == 0.0
    assert all(v == 0.0 or math.isnan(v) for v in result["per_class"].values())


def test_perfect_detections_score_one():
    gt, _ = synthetic_coco(10, seed=4)
    dt = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1}
        for a in gt["annotations"]
        if not a["iscrowd"]
    ]
    result = coco_evaluate(gt, dt)
    assert result["AP"] == pytest.approx(1.0) and result["AP50"] == pytest.approx(1.0)


def test_missing_area_and_iscrowd_fall_back():
    gt = {
        "images": [{"id": 1}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]}],
        "categories": [{"id": 1, "name": "x"}],
    }
    dt = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9}]
    result = coco_evaluate(gt, dt)
    # 1 - 2e-16: pycocotools' precision is tp / (tp + fp + eps)
    assert result["AP"] == pytest.approx(1.0) and result["APs"] == pytest.approx(1.0)
    assert result["APl"] == -1.0


def _small() -> tuple[dict, list[dict]]:
    gt = {
        "images": [{"id": 1, "height": 20, "width": 20}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 9, 9]}],
        "categories": [{"id": 1, "name": "x"}],
    }
    dt = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 9, 9], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.5},
    ]
    return gt, dt


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (lambda dt: dt[1].update(image_id=99), "results[1].image_id", "image id 99"),
        (lambda dt: dt[1].update(category_id=7), "results[1].category_id", "category id 7"),
        (lambda dt: dt[1].pop("score"), "results[1].score", "missing"),
        (lambda dt: dt[0].update(score=float("nan")), "results[0].score", "finite"),
        (lambda dt: dt[1].update(bbox=[1, 2, 3]), "results[1].bbox", "4 finite numbers"),
        (lambda dt: dt[1].pop("image_id"), "results[1].image_id", "missing"),
    ],
)
def test_bad_results_name_file_and_field(change, field, words):
    gt, dt = _small()
    change(dt)
    with pytest.raises(DataError) as err:
        coco_evaluate(gt, dt, dt_path="my_results.json")
    assert err.value.field == field
    assert "my_results.json" in str(err.value) and words in str(err.value)


def test_bad_ground_truth_and_types():
    gt, dt = _small()
    with pytest.raises(DataError, match="images"):
        coco_evaluate({"annotations": [], "categories": []}, dt, gt_path="gt.json")
    with pytest.raises(DataError, match="JSON list"):
        coco_evaluate(gt, {"annotations": dt})
    gt["annotations"].append(dict(gt["annotations"][0]))
    with pytest.raises(DataError, match="unique"):
        coco_evaluate(gt, dt)
    with pytest.raises(ValueError, match="iou_type"):
        coco_evaluate(*_small(), iou_type="keypoints")


def test_user_data_is_not_modified():
    gt, dt = synthetic_coco(5, seed=5, segm=True)
    before = (repr(gt), repr(dt))
    coco_evaluate(gt, dt, "segm")
    coco_evaluate(gt, dt, "bbox")
    assert (repr(gt), repr(dt)) == before

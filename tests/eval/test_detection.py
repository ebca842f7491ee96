"""Pascal VOC mAP (hand-worked case, naive devkit re-implementation, difficult) and the
streaming DetectionEvaluator (against pycocotools on the same data)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from visionlab.bench.coco_eval import pycocotools_eval
from visionlab.errors import VisionLabError
from visionlab.eval.coco import STAT_KEYS
from visionlab.eval.detection import DetectionEvaluator, voc_ap, voc_class_ap, voc_map


def _hand_case() -> tuple[dict, dict]:
    # image 1: A (counts), B (difficult); image 2: C (counts) -> 2 positives
    gt = {
        "image_ids": [1, 1, 2],
        "boxes": [[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]],
        "difficult": [False, True, False],
    }
    dt = {
        "image_ids": [1, 1, 2, 1, 2],
        "scores": [0.9, 0.8, 0.7, 0.6, 0.5],
        "boxes": [
            [0, 0, 10, 10],  # A: true positive
            [20, 20, 30, 30],  # B, difficult: ignored
            [50, 50, 60, 60],  # nothing: false positive
            [0, 0, 10, 9],  # A again: false positive (duplicate)
            [1, 0, 10, 10],  # C: true positive
        ],
    }
    return dt, gt


def test_voc_hand_worked_case():
    dt, gt = _hand_case()
    # tp = [1, -, 1, 1, 2], fp = [0, -, 1, 2, 2]; recall .5 .5 .5 1, precision 1 .5 1/3 .5
    # all-point: .5 * 1 + .5 * .5 = .75; 11-point: (6 * 1 + 5 * .5) / 11
    assert voc_class_ap(dt, gt) == pytest.approx(0.75)
    assert voc_class_ap(dt, gt, use_07_metric=True) == pytest.approx(8.5 / 11)
    # B not difficult: it becomes a third positive and the second detection a true positive
    gt_easy = dict(gt, difficult=[False, False, False])
    assert voc_class_ap(dt, gt_easy) != pytest.approx(0.75)
    # tp = [1, 2, 2, 2, 3] of 3: envelope 1 up to recall 2/3, then 3/5
    assert voc_class_ap(dt, gt_easy) == pytest.approx(1 / 3 + 1 / 3 + 1 / 3 * 0.6)


def test_voc_ap_curves():
    rec, prec = np.array([0.5, 1.0]), np.array([1.0, 0.5])
    assert voc_ap(rec, prec) == pytest.approx(0.75)
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx(8.5 / 11)
    assert voc_ap(np.zeros(0), np.zeros(0)) == 0.0


def _naive_voc(dt, gt, use_07: bool, thr: float = 0.5) -> float:
    """py-faster-rcnn's voc_eval, loop by loop (continuous IoU, >= threshold)."""
    per_image: dict = {}
    for img, box, diff in zip(gt["image_ids"], gt["boxes"], gt["difficult"]):
        per_image.setdefault(img, []).append([np.array(box, float), bool(diff), False])
    npos = sum(not d for d in gt["difficult"])
    order = sorted(range(len(dt["scores"])), key=lambda i: -dt["scores"][i])
    tp, fp = [], []
    for i in order:
        b = np.array(dt["boxes"][i], float)
        best, jbest = -1.0, None
        for j, (g, _, _) in enumerate(per_image.get(dt["image_ids"][i], [])):
            iw = max(min(b[2], g[2]) - max(b[0], g[0]), 0)
            ih = max(min(b[3], g[3]) - max(b[1], g[1]), 0)
            inter = iw * ih
            union = (b[2] - b[0]) * (b[3] - b[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
            iou = inter / union if union > 0 else 0.0
            if iou > best:
                best, jbest = iou, j
        t = f = 0
        if best >= thr:
            rec = per_image[dt["image_ids"][i]][jbest]
            if not rec[1]:
                if not rec[2]:
                    t, rec[2] = 1, True
                else:
                    f = 1
        else:
            f = 1
        tp.append(t)
        fp.append(f)
    if npos == 0:
        return math.nan
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / npos
    precision = tp / np.maximum(tp + fp, np.finfo(float).eps)
    if use_07:
        return sum(
            (precision[recall >= t].max() if (recall >= t).any() else 0) / 11
            for t in np.arange(0, 1.1, 0.1)
        )
    mrec = np.concatenate(([0], recall, [1]))
    mpre = np.concatenate(([0], precision, [0]))
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _random_voc(seed: int, n_images: int = 12) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    dets, gts = {}, {}
    for c in ("cat", "dog", "empty"):
        g_img, g_box, g_diff, d_img, d_box, d_score = [], [], [], [], [], []
        for img in range(n_images):
            for _ in range(0 if c == "empty" else int(rng.integers(0, 4))):
                xy = rng.uniform(0, 80, 2)
                box = [*xy, *(xy + rng.uniform(5, 30, 2))]
                g_img.append(img)
                g_box.append(box)
                g_diff.append(bool(rng.random() < 0.2))
                for _ in range(int(rng.integers(0, 3))):
                    d_img.append(img)
                    d_box.append(list(np.array(box) + rng.normal(0, 3, 4)))
                    d_score.append(float(rng.choice([0.2, 0.4, 0.6, 0.8])))  # ties
            for _ in range(int(rng.integers(0, 2))):
                xy = rng.uniform(0, 80, 2)
                d_img.append(img)
                d_box.append([*xy, *(xy + 20)])
                d_score.append(float(rng.uniform()))
        gts[c] = {"image_ids": g_img, "boxes": g_box, "difficult": g_diff}
        dets[c] = {"image_ids": d_img, "boxes": d_box, "scores": d_score}
    return dets, gts


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("use_07", [True, False])
def test_voc_map_matches_naive_devkit(seed, use_07):
    dets, gts = _random_voc(seed)
    mean, per_class = voc_map(dets, gts, use_07_metric=use_07)
    for c in gts:
        expected = _naive_voc(dets[c], gts[c], use_07)
        assert per_class[c] == pytest.approx(expected, nan_ok=True)
    assert math.isnan(per_class["empty"])  # no ground truth: NaN, out of the mean
    assert mean == pytest.approx(np.mean([per_class["cat"], per_class["dog"]]))


def _random_images(seed: int, n: int = 8, num_classes: int = 3, masks: bool = False):
    g = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    for i in range(n):
        m = int(torch.randint(0, 5, (1,), generator=g))
        xy = torch.rand(m, 2, generator=g) * 40
        boxes = torch.cat([xy, xy + 4 + torch.rand(m, 2, generator=g) * 40], 1).round()
        labels = torch.randint(1, num_classes + 1, (m,), generator=g)
        target = {"boxes": boxes, "labels": labels, "image_id": i}
        target["iscrowd"] = (torch.rand(m, generator=g) < 0.15).long()
        reps = torch.randint(0, 3, (m,), generator=g)
        p_boxes = boxes.repeat_interleave(reps, 0)
        p_boxes = p_boxes + torch.randn(p_boxes.shape, generator=g) * 2
        k = len(p_boxes)
        pred = {
            "boxes": p_boxes,
            "labels": labels.repeat_interleave(reps),
            "scores": torch.rand(k, generator=g),
        }
        if masks:
            target["masks"] = _box_masks(boxes)
            pred["masks"] = _box_masks(p_boxes)
        preds.append(pred)
        targets.append(target)
    return preds, targets


def _box_masks(boxes: torch.Tensor, size: int = 96) -> torch.Tensor:
    ys, xs = torch.arange(size)[:, None] + 0.5, torch.arange(size)[None] + 0.5
    b = boxes[:, :, None, None]
    return (xs >= b[:, 0]) & (xs < b[:, 2]) & (ys >= b[:, 1]) & (ys < b[:, 3])


def _as_coco(preds, targets, class_names, segm: bool):
    """The same data as COCO dicts, boxes converted to xywh exactly as the evaluator does."""
    from pycocotools import mask as mask_utils

    def xywh(b):
        b = b.double().numpy()
        return [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in b.tolist()]

    def rles(m):
        r = mask_utils.encode(np.asfortranarray(m.permute(1, 2, 0).numpy().astype(np.uint8)))
        return [{"size": x["size"], "counts": x["counts"].decode()} for x in r]

    images, anns, dts = [], [], []
    for i, (p, t) in enumerate(zip(preds, targets)):
        images.append({"id": i, "height": 96, "width": 96})
        t_rles = rles(t["masks"]) if segm and len(t["boxes"]) else []
        for j, (box, label, crowd) in enumerate(zip(xywh(t["boxes"]), t["labels"], t["iscrowd"])):
            ann = {"id": len(anns) + 1, "image_id": i, "category_id": int(label), "bbox": box}
            ann.update(iscrowd=int(crowd), area=box[2] * box[3])
            if segm:
                ann.update(segmentation=t_rles[j], area=float(t["masks"][j].sum()))
            anns.append(ann)
        p_rles = rles(p["masks"]) if segm and len(p["boxes"]) else []
        for j, (box, label, score) in enumerate(zip(xywh(p["boxes"]), p["labels"], p["scores"])):
            det = {"image_id": i, "category_id": int(label), "score": float(score)}
            dts.append({**det, "segmentation": p_rles[j]} if segm else {**det, "bbox": box})
    cats = [{"id": k + 1, "name": n} for k, n in enumerate(class_names)]
    return {"images": images, "annotations": anns, "categories": cats}, dts


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_detection_evaluator_equals_pycocotools(iou_type):
    names = ["a", "b", "c"]
    segm = iou_type == "segm"
    evaluator = DetectionEvaluator(names, iou_type=iou_type)
    preds, targets = _random_images(0, masks=segm)
    for s in range(0, len(preds), 3):  # streamed in batches
        evaluator.update(preds[s : s + 3], targets[s : s + 3])
    result = evaluator.compute()
    gt, dt = _as_coco(preds, targets, names, segm)
    if segm:  # masks: pycocotools' segm; boxes: its bbox against the same ground truth
        ref_masks = pycocotools_eval(gt, dt, "segm")
        assert [result[f"mask_{k}"] for k in STAT_KEYS] == list(ref_masks.stats)
        assert 0.1 < result["mask_AP"] < 1
        assert set(result["mask_per_class"]) == set(names)
        dt = _as_coco(preds, targets, names, segm=False)[1]
    else:
        assert not any(k.startswith("mask_") for k in result)
    ref = pycocotools_eval(gt, dt, "bbox")
    assert [result[k] for k in STAT_KEYS] == list(ref.stats)
    assert 0.1 < result["AP"] < 1
    assert set(result["per_class"]) == set(names)
    assert 0 <= result["voc07_mAP"] <= 1 and 0 <= result["voc_mAP"] <= 1
    assert evaluator.primary == ("mask_AP" if segm else "AP")
    assert evaluator.primary in result
    evaluator.reset()
    empty = evaluator.compute()
    assert empty["AP"] == -1.0 and empty.get("mask_AP", -1.0) == -1.0


def test_detection_evaluator_difficult_is_ignored():
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 70.0, 70.0]])
    target = {"boxes": box, "labels": torch.tensor([1, 1]), "difficult": torch.tensor([0, 1])}
    pred = {"boxes": box, "labels": torch.tensor([1, 1]), "scores": torch.tensor([0.6, 0.9])}
    evaluator = DetectionEvaluator(["x"])
    evaluator.update([pred], [target])
    result = evaluator.compute()
    # the detection of the difficult box is neither right nor wrong: a perfect score
    assert result["voc_mAP"] == pytest.approx(1.0)
    assert result["voc07_mAP"] == pytest.approx(1.0)
    assert result["AP50"] == pytest.approx(1.0)


def test_detection_evaluator_rejects_bad_labels():
    evaluator = DetectionEvaluator(["x", "y"])
    target = {"boxes": torch.zeros(1, 4), "labels": torch.tensor([3])}
    pred = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0), "scores": torch.zeros(0)}
    with pytest.raises(VisionLabError, match=r"outside 1\.\.2"):
        evaluator.update([pred], [target])
    with pytest.raises(ValueError, match="predictions for"):
        evaluator.update([pred, pred], [target])


def test_segm_reports_box_and_mask_ap_apart():
    # the box is right and the mask is wrong: box AP 1, mask AP 0, from one pass
    box = torch.tensor([[0.0, 0.0, 20.0, 20.0]])
    gt_mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    gt_mask[0, :10, :10] = True
    pred_mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    pred_mask[0, 10:20, 10:20] = True
    target = {"boxes": box, "labels": torch.tensor([1]), "masks": gt_mask}
    pred = {"boxes": box, "labels": torch.tensor([1]), "scores": torch.tensor([0.9])}
    evaluator = DetectionEvaluator(["x"], iou_type="segm")
    evaluator.update([{**pred, "masks": pred_mask}], [target])
    result = evaluator.compute()
    assert result["AP"] == pytest.approx(1.0) and result["mask_AP"] == 0.0
    assert result["per_class"]["x"] == pytest.approx(1.0) and result["mask_per_class"]["x"] == 0
    evaluator.reset()
    evaluator.update([{**pred, "masks": gt_mask}], [target])
    assert evaluator.compute()["mask_AP"] == pytest.approx(1.0)

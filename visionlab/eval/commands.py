"""Score a COCO results file against COCO ground truth: the 12 COCO numbers (equal to
pycocotools), the Pascal VOC mAP at IoU 0.5 (2007 11-point and 2010+ all-point) and the AP of
each class.

The VOC numbers come from the same files: box IoU, every detection (no 100 per image cut),
ground truth marked ``difficult`` (or ``ignore``, or ``iscrowd``) neither counts as a positive
nor penalises the detections it matches.

    visionlab eval detections --gt instances_val.json --dt results.json [--iou-type segm] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from visionlab.eval.coco import STAT_KEYS, load_json, parse_ground_truth, parse_results
from visionlab.eval.coco_engine import evaluate_arrays
from visionlab.eval.detection import voc_inputs, voc_map

# key -> (IoU, area, maxDets), as pycocotools' summary names them
_SETTINGS = {
    "AP": ("0.50:0.95", "all", 100),
    "AP50": ("0.50", "all", 100),
    "AP75": ("0.75", "all", 100),
    "APs": ("0.50:0.95", "small", 100),
    "APm": ("0.50:0.95", "medium", 100),
    "APl": ("0.50:0.95", "large", 100),
    "AR1": ("0.50:0.95", "all", 1),
    "AR10": ("0.50:0.95", "all", 10),
    "AR100": ("0.50:0.95", "all", 100),
    "ARs": ("0.50:0.95", "small", 100),
    "ARm": ("0.50:0.95", "medium", 100),
    "ARl": ("0.50:0.95", "large", 100),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--gt", required=True, help="COCO ground-truth JSON (instances_*.json)")
    parser.add_argument("--dt", required=True, help="COCO results JSON (a list of detections)")
    parser.add_argument(
        "--iou-type", choices=("bbox", "segm"), default="bbox", help="box or mask IoU (bbox)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")


def evaluate_files(gt_path: str, dt_path: str, iou_type: str = "bbox") -> dict[str, Any]:
    """COCO stats, ``voc07_mAP``, ``voc_mAP`` and ``per_class`` (name -> COCO AP) of two files."""
    gt = parse_ground_truth(load_json(gt_path, "ground truth"), iou_type, path=gt_path)
    dt = parse_results(load_json(dt_path, "results"), gt, iou_type, path=dt_path)
    result = evaluate_arrays(gt, dt, iou_type)
    dets, gts = voc_inputs(gt, dt)
    voc07, voc07_per_class = voc_map(dets, gts, use_07_metric=True)
    voc, voc_per_class = voc_map(dets, gts, use_07_metric=False)
    return {
        **result.stats,
        "voc07_mAP": voc07,
        "voc_mAP": voc,
        "per_class": result.per_class,
        "voc_per_class": voc_per_class,
        "voc07_per_class": voc07_per_class,
        "counts": {
            "images": len(gt.image_ids),
            "annotations": len(gt.image),
            "detections": len(dt.image),
        },
    }


def _json_value(v: float) -> float | None:
    return None if math.isnan(v) else round(v, 6)


def _fmt(v: float) -> str:
    return "   -  " if math.isnan(v) else f"{v:6.3f}"


def run(args: argparse.Namespace) -> int:
    r = evaluate_files(args.gt, args.dt, args.iou_type)
    if args.json:
        out: dict[str, Any] = {k: _json_value(r[k]) for k in (*STAT_KEYS, "voc07_mAP", "voc_mAP")}
        out["per_class"] = {name: _json_value(v) for name, v in r["per_class"].items()}
        print(json.dumps(out))
        return 0
    c = r["counts"]
    print(
        f"{args.iou_type} evaluation: {c['images']} images, {c['annotations']} ground-truth "
        f"objects, {c['detections']} detections (-1: no ground truth in that range)"
    )
    for key in STAT_KEYS:
        iou, area, max_dets = _SETTINGS[key]
        print(f"  {key:<6} IoU={iou:<9}  area={area:<6}  maxDets={max_dets:<3}  {r[key]:6.3f}")
    print(f"  {'VOC mAP@0.5, 2007 11-point':<48}{_fmt(r['voc07_mAP'])}")
    print(f"  {'VOC mAP@0.5, 2010+ all-point':<48}{_fmt(r['voc_mAP'])}")
    width = max([len(n) for n in r["per_class"]] + [5])
    print(f"\n  {'class':<{width}}  AP@[.5:.95]  VOC07 AP50  VOC AP50")
    for name, ap in r["per_class"].items():
        voc07, voc = r["voc07_per_class"][name], r["voc_per_class"][name]
        print(f"  {name:<{width}}  {_fmt(ap):>11}  {_fmt(voc07):>10}  {_fmt(voc):>8}")
    print("  (-: no ground truth for the class, left out of the means)")
    return 0

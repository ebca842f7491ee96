"""The detector lineage measured side by side: R-CNN, SPPNet, Fast R-CNN, Faster R-CNN (RoI
align, and RoI pool as the ablation), Mask R-CNN and YOLO (v1 and its anchor option) on one
scenes split, one image size, one backbone initialisation and one evaluator.

Trains each recipe of ``configs/`` through the engine (or reuses the runs of ``--reuse``),
then measures in one run: COCO AP (all, 0.5, 0.75, by size), training time, test ms/image
split into proposals / features / heads / NMS, the speed-up over R-CNN, each paper's claim
beside the measured figure (the verdicts are computed from the numbers), proposal recall
against the number of proposals, the error breakdown of YOLO's Sec. 4.2, and, when
``make peers`` installed it, an Ultralytics YOLO trained on the same data, image size and
wall-clock budget. Writes ``OUT_DIR/lineage.md``, ``lineage.json`` and three PNGs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from visionlab.bench.lineage_report import SPLIT, claims, markdown, speedups
from visionlab.bench.machine import (
    comma_list,
    elapsed_ms,
    load_average,
    load_line,
    machine_description,
    write_markdown,
)
from visionlab.bench.runs import add_overrides, add_training_arguments
from visionlab.errors import VisionLabError

# key -> (name in the report, recipe, recipe overrides that make the variant)
DETECTORS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "rcnn": ("R-CNN", "configs/rcnn_scenes.yaml", ()),
    "sppnet": ("SPPNet", "configs/sppnet_scenes.yaml", ()),
    "fast_rcnn": ("Fast R-CNN", "configs/fast_rcnn_scenes.yaml", ()),
    "faster_rcnn": ("Faster R-CNN", "configs/faster_rcnn_scenes.yaml", ()),
    "faster_rcnn_roi_pool": (
        "Faster R-CNN, RoI pool",
        "configs/faster_rcnn_scenes.yaml",
        ("model_args.pooler=roi_pool",),
    ),
    "mask_rcnn": ("Mask R-CNN", "configs/mask_rcnn_scenes.yaml", ()),
    "yolo": ("YOLO v1", "configs/yolo_scenes.yaml", ()),
    "yolo_anchors": ("YOLO, anchors", "configs/yolo_anchors_scenes.yaml", ()),
}
BACKBONE = "runs/classify_scenes/checkpoints/best.pt"
QUICK = {
    "train_images": 160,
    "val_images": 40,
    "max_steps": 150,
    "finetune_images": 24,
    "timing_images": 10,
    "recall_images": 5,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detectors", default=",".join(DETECTORS), help="comma-separated")
    parser.add_argument(
        "--data", default="scenes", help="scenes (built-in) or a COCO folder; --quick renders"
    )
    parser.add_argument("--image-size", type=int, default=128, help="every model's image px")
    parser.add_argument(
        "--backbone-init", default=BACKBONE, help="every model's backbone weights ('none': random)"
    )
    parser.add_argument("--val-images", type=int, default=None, help="val images scored (all)")
    parser.add_argument("--timing-images", type=int, default=20, help="val images timed")
    parser.add_argument("--recall-images", type=int, default=20, help="images of the recall plot")
    parser.add_argument("--finetune-images", type=int, default=None, help="R-CNN/SPPNet stage")
    parser.add_argument(
        "--reuse", default=None, metavar="DIR", help="use DIR/<recipe>/checkpoints/best.pt"
    )
    parser.add_argument(
        "--peer-python", default=".venv-peers/bin/python", help="the peers environment's python"
    )
    parser.add_argument("--peer-model", default="yolov8n.yaml", help="Ultralytics model yaml")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a small rendered split and short schedules ({QUICK}); about 15 min on 2 cores",
    )
    add_training_arguments(parser)
    add_overrides(parser, "overrides for every recipe")


def _data_root(args: argparse.Namespace, work: Path) -> Path:
    """The COCO folder every model trains and is scored on (``--quick``: rendered small)."""
    from visionlab.data.scenes import default_scenes_root, render_scenes

    if args.quick and args.data == "scenes":
        root = work / f"scenes_t{QUICK['train_images']}_v{QUICK['val_images']}"
        if not (root / "annotations" / "instances_val.json").is_file():
            render_scenes(
                root,
                n_train=QUICK["train_images"],
                n_val=QUICK["val_images"],
                size=args.image_size,
                progress=False,
                workers=0,
            )
        return root
    return default_scenes_root() if args.data == "scenes" else Path(args.data)


def recipe_overrides(args: argparse.Namespace, key: str, data: Path) -> list[str]:
    """The overrides that put recipe ``key`` on the shared data, size and backbone."""
    from visionlab.config import load_config

    _, config, variant = DETECTORS[key]
    init = None if args.backbone_init in ("none", "null", "") else args.backbone_init
    out = [
        f"data={str(data)!r}",
        f"image_size={args.image_size}",
        f"model_args.pretrained_backbone={init!r}",
        *variant,
    ]
    model_args = load_config(config, []).model_args
    if key.startswith("yolo"):
        out.append(f"model_args.input_size={args.image_size}")
    if "finetune" in model_args and args.finetune_images:
        out.append(f"model_args.finetune.images={args.finetune_images}")
        out.append(f"model_args.finetune.eval_images={min(args.finetune_images, 10)}")
    return [*out, *args.overrides]


def checkpoint(run_dir: Path) -> Path:
    """A run's ``best.pt``, or its ``last.pt`` where it keeps no best (R-CNN, SPPNet)."""
    best = run_dir / "checkpoints" / "best.pt"
    return best if best.is_file() else run_dir / "checkpoints" / "last.pt"


def train_all(args: argparse.Namespace, keys: list[str], data: Path, runs: Path) -> dict:
    """Train every detector through bench yolo's ``_train_or_reuse`` (``--reuse``: take a
    run's checkpoint and its recorded training time where it has one)."""
    from tqdm.auto import tqdm

    from visionlab.bench.runs import recorded_training
    from visionlab.bench.yolo import _train_or_reuse

    rows = {}
    for key in (bar := tqdm(keys, desc="training", unit="detector")):
        bar.set_postfix_str(key)
        name, config, variant = DETECTORS[key]
        # a variant trains into its own folder: _train_or_reuse names it by the recipe's stem
        parent = runs / key if variant else runs
        run_dir = parent / Path(config).stem
        if args.reuse and checkpoint(run_dir).is_file():
            seconds, steps = recorded_training(run_dir)
        else:
            one = SimpleNamespace(**vars(args))
            one.overrides, one.reuse = recipe_overrides(args, key, data), False
            trained = _train_or_reuse(one, config, parent)
            seconds, steps = trained["seconds"], trained["steps"]
        rows[key] = {
            "name": name,
            "config": config,
            "variant": list(variant),
            "train_s": seconds,
            "steps": steps,
            "run_dir": run_dir,
        }
    return rows


def search_once(dataset: Any, settings: Any) -> float:
    """Seconds of selective search over ``dataset`` (filling the disk cache that R-CNN,
    SPPNet and Fast R-CNN then share, so no training pays for it alone)."""
    from tqdm.auto import tqdm

    from visionlab.ops import selective_search

    start = time.perf_counter()
    for i in tqdm(range(len(dataset)), desc="selective search (once)", leave=False):
        selective_search(
            dataset[i][0], settings.mode, settings.max_proposals, search_size=settings.search_size
        )
    return time.perf_counter() - start


@torch.no_grad()
def predict_all(model: Any, dataset: Any, count: int) -> tuple[list[dict], list[dict]]:
    """Each of the first ``count`` images' boxes, labels and scores, and its target."""
    preds, targets = [], []
    for i in range(count):
        image, target = dataset[i]
        pred = model([image])[0]
        preds.append({k: pred[k] for k in ("boxes", "labels", "scores")})
        targets.append(target)
    return preds, targets


@torch.no_grad()
def test_split(key: str, model: Any, dataset: Any, images: list, classes: list[str]) -> dict:
    """ms/image of proposals / features / heads / NMS (None: a step the model has not) and
    their total; R-CNN and SPPNet also score with and without their box regressors."""
    from visionlab.bench.peers import split_times
    from visionlab.bench.rcnn import score_model, time_proposals

    if key in ("rcnn", "sppnet"):
        res = score_model(model, dataset, len(images), classes)
        parts = {
            "proposals": time_proposals(model, dataset, len(images)),
            "features": res["ms"]["features"],
            "heads": res["ms"]["classification"],
            "NMS": res["ms"]["nms"],
        }
        extra = {
            "AP50_box_reg": res["with_reg"]["AP50"],
            "AP50_no_box_reg": res["without_reg"]["AP50"],
            "mean_proposals": res["mean_proposals"],
        }
    elif key.startswith("yolo"):
        model([images[0]])  # warm-up
        total = statistics.mean(elapsed_ms(model, [im]) for im in images)
        return {"parts": dict.fromkeys(SPLIT), "total": total}
    else:
        parts = {
            k: v for k, v in split_times(model, images).items() if k in SPLIT or k == "backbone"
        }
        parts["features"] = parts.pop("backbone")
        extra = {}
    return {"parts": parts, "total": sum(parts[k] for k in SPLIT), **extra}


def measure(args: argparse.Namespace, rows: dict, dataset: Any, n_val: int, n_time: int) -> None:
    """AP, test time and the error breakdown of every trained detector, into ``rows``."""
    from tqdm.auto import tqdm

    from visionlab.engine.api import load
    from visionlab.eval.analysis import scores_and_errors

    classes = list(dataset.classes)
    images = [dataset[i][0] for i in range(n_time)]
    for key, row in (bar := tqdm(rows.items(), desc="measuring", unit="detector")):
        bar.set_postfix_str(key)
        model = load(checkpoint(row["run_dir"]))
        torch.set_num_threads(args.threads)
        if model.image_size != args.image_size:
            raise VisionLabError(f"{key}: trained at {model.image_size} px, not {args.image_size}")
        preds, targets = predict_all(model, dataset, n_val)
        row["metrics"], row["errors"] = scores_and_errors(preds, targets, classes)
        row.update(test_split(key, model, dataset, images, classes))
        row["run_dir"] = str(row["run_dir"])
        if key == "faster_rcnn":
            row["model"] = model  # for the RPN's recall (dropped before the JSON)


def run(args: argparse.Namespace) -> int:
    from visionlab.bench.lineage_peer import run_peer
    from visionlab.bench.lineage_plots import proposal_recall_curves, write_plots
    from visionlab.data.datasets import load_dataset
    from visionlab.engine.api import make_transform
    from visionlab.models.two_stage import SelectiveSearchProposer

    start = time.perf_counter()
    keys = comma_list(args.detectors, "--detectors", choices=tuple(DETECTORS))
    if args.quick:
        args.max_steps = args.max_steps or QUICK["max_steps"]
        args.val_images = args.val_images or QUICK["val_images"]
        args.finetune_images = args.finetune_images or QUICK["finetune_images"]
        args.timing_images = min(args.timing_images, QUICK["timing_images"])
        args.recall_images = min(args.recall_images, QUICK["recall_images"])
    if args.backbone_init not in ("none", "null", "") and not Path(args.backbone_init).is_file():
        print(f"note: {args.backbone_init} not found: every backbone starts from random weights")
        args.backbone_init = "none"
    torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="visionlab-bench-lineage-") as tmp:
        runs = Path(args.reuse or args.runs_dir or tmp)
        data = _data_root(args, runs)
        transform = make_transform("detection", False, args.image_size, {})
        val = load_dataset(str(data), "val", task="detection", transforms=transform)
        train = load_dataset(str(data), "train", task="detection", transforms=transform)
        search = SelectiveSearchProposer(mode="fast", max_proposals=2000, search_size=256)
        search_s = search_once(train, search) if not args.reuse else math.nan
        rows = train_all(args, keys, data, runs)
        n_val = min(args.val_images or len(val), len(val))
        n_time = min(args.timing_images, n_val)
        measure(args, rows, val, n_val, n_time)
        faster = rows.get("faster_rcnn", {}).pop("model", None)
        recall = proposal_recall_curves(val, args.recall_images, search, faster)
        yolo_s = rows["yolo"]["train_s"] if "yolo" in rows else None
        peer = run_peer(args, data, runs, val, n_val, yolo_s)
    if peer.get("status") == "ok" and "rcnn" in rows:
        peer["speedup_test"] = rows["rcnn"]["total"] / peer["total"]
        peer["speedup_train"] = rows["rcnn"]["train_s"] / peer["train_s"]
    record = {
        "settings": settings(args, data, keys, n_val, n_time, search_s),
        "rows": rows,
        "speedups": speedups(rows),
        "claims": claims(rows),
        "recall": recall,
        "peer": peer,
        "load": load_line(load_before, load_after := load_average()),
        "load_values": [load_before, load_after],
        "cores": os.cpu_count(),
    }
    pictures = write_plots(record, out_dir)
    record["bench_seconds"] = time.perf_counter() - start
    (out_dir / "lineage.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    write_markdown(out_dir, "lineage.md", markdown(record), *pictures)
    return 0


def settings(args, data: Path, keys: list[str], n_val: int, n_time: int, search_s: float) -> dict:
    """Every setting the report states."""
    from visionlab.bench.machine import command_line

    return {
        "machine": machine_description(),
        "command": command_line(),
        "quick": bool(args.quick),
        "data": str(data),
        "image_size": args.image_size,
        "backbone_init": args.backbone_init,
        "threads": args.threads,
        "max_steps": args.max_steps,
        "epochs": args.epochs,
        "finetune_images": args.finetune_images,
        "val_images": n_val,
        "timing_images": n_time,
        "recall_images": args.recall_images,
        "reuse": args.reuse,
        "overrides": list(args.overrides),
        "detectors": keys,
        "selective_search_once_s": search_s,
    }

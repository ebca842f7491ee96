"""YOLO v1 vs its anchor-prior option vs our Faster R-CNN, same backbone and image size.

Trains each recipe (``--configs``: ``configs/yolo_scenes.yaml``,
``configs/yolo_anchors_scenes.yaml``, ``configs/faster_rcnn_scenes.yaml``; all tiny_cnn at
128 px on the built-in scenes), or reuses ``RUNS/<name>/checkpoints/best.pt`` with
``--reuse``, then measures in this one run: validation AP50 / AP / AP75 / APs (the shared
:class:`~visionlab.eval.detection.DetectionEvaluator`), inference ms/image (batch 1, eval
mode, no grad, batch norms folded into the convolutions as ``visionlab predict`` runs them,
the same validation images for every model, in blocks of 10 images per model, the models
alternating; image-by-image interleaved times reported beside) and the ratio to Faster R-CNN,
and an error breakdown in the manner of the YOLO paper's Sec. 4.2 (Hoiem et al.): for each
class the top N detections (N = its objects) are correct, localisation errors, confusions
with another class, or background. Writes ``OUT_DIR/yolo.md`` and ``OUT_DIR/yolo_samples.png``
(YOLO's grid and Faster R-CNN's boxes on a few validation images).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from visionlab.bench.machine import header
from visionlab.bench.runs import recorded_training
from visionlab.bench.sizes import SIZE_BUCKETS, bucket_names, cell, shares, size_bucket
from visionlab.errors import VisionLabError

DEFAULT_CONFIGS = (
    "configs/yolo_scenes.yaml,configs/yolo_anchors_scenes.yaml,configs/faster_rcnn_scenes.yaml"
)
TARGET_AP50 = 0.85  # YOLO v1 recipe, scenes val, within 10 minutes on 2 cores
TARGET_SECONDS = 600
TARGET_SPEEDUP = 3.0  # inference vs our Faster R-CNN, same backbone and image size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated recipes")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    parser.add_argument("--max-steps", type=int, default=None, help="override train.max_steps")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--timing-images", type=int, default=50, help="val images timed")
    parser.add_argument("--repeats", type=int, default=5, help="passes over the timed images")
    parser.add_argument("--samples", type=int, default=4, help="images in yolo_samples.png")
    parser.add_argument("--runs-dir", default=None, help="keep the runs here (default: temp)")
    parser.add_argument(
        "--reuse", action="store_true", help="use RUNS/<name>/checkpoints/best.pt when present"
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 20 steps, 5 images")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="overrides for every recipe, e.g. "
        "model_args.pretrained_backbone=RUN/checkpoints/best.pt",
    )


def _name(config: str) -> str:
    return Path(config).stem


def _train_or_reuse(args: argparse.Namespace, config: str, runs: Path) -> dict[str, Any]:
    from visionlab.config import load_config
    from visionlab.engine.api import train
    from visionlab.models.registry import is_registered

    cfg = load_config(config, list(args.overrides))
    if not is_registered(cfg.model):
        raise VisionLabError(f"{config}: model {cfg.model!r} is not registered in this checkout")
    run_dir = runs / _name(config)
    best = run_dir / "checkpoints" / "best.pt"
    if args.reuse and best.is_file():
        seconds, steps = recorded_training(run_dir)
        return {"config": config, "run_dir": run_dir, "seconds": seconds, "steps": steps}
    overrides = [*args.overrides, f"out={run_dir}", "train.progress=false"]
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.max_steps is not None or args.quick:
        overrides.append(f"train.max_steps={20 if args.quick else args.max_steps}")
    start = time.perf_counter()
    result = train(config, overrides, overwrite=True)  # the bench's own run folder
    return {
        "config": config,
        "run_dir": run_dir,
        "seconds": time.perf_counter() - start,
        "steps": result.step,
    }


def check_one_size(rows: list[dict[str, Any]]) -> None:
    """The comparison is at one image size (every model is fed the same validation images)."""
    sizes = {row["name"]: row["size"] for row in rows}
    if len(set(sizes.values())) > 1:
        raise VisionLabError(
            f"bench yolo compares recipes at one image size; these differ: {sizes} "
            "(e.g. configs/faster_rcnn_scenes.yaml is the 128 px Faster R-CNN)"
        )


def _val_set(model: Any, quick: bool) -> Any:
    from visionlab.data.datasets import load_dataset
    from visionlab.engine.api import make_transform

    data = (model.meta.get("config") or {}).get("data", "scenes")
    transform = make_transform("detection", False, model.image_size, {})
    return load_dataset(data, "val", task="detection", transforms=transform)


@torch.no_grad()
def _evaluate(model: Any, dataset: Any, count: int) -> tuple[dict[str, Any], list, list]:
    from visionlab.eval.detection import DetectionEvaluator

    evaluator = DetectionEvaluator(list(dataset.classes))
    preds, targets = [], []
    for index in range(count):
        image, target = dataset[index]
        pred = {k: v for k, v in model([image])[0].items() if k in ("boxes", "labels", "scores")}
        evaluator.update([pred], [target])
        preds.append(pred)
        targets.append({**target, "input_size": tuple(image.shape[-2:])})
    return evaluator.compute(), preds, targets


def judge_top_detections(
    preds: list[dict], targets: list[dict], num_classes: int
) -> tuple[dict[str, int], set[tuple[int, int]]]:
    """The error breakdown of YOLO's Sec. 4.2 (after Hoiem et al.): each class's top
    detections judged.

    For each class c, its top N_c detections (N_c = objects of class c) are: ``correct``
    (class c, IoU > 0.5 with an object of class c), ``localization`` (class c, 0.1 < IoU <
    0.5), ``other`` (IoU > 0.1 with an object of another class), ``background`` (IoU < 0.1
    with every object). Duplicate detections count as localisation errors, as in the paper.

    Returns:
        The count of each verdict, and the objects ``(image, index)`` found correctly.
    """
    from visionlab.ops.boxes import box_iou

    counts = dict.fromkeys(("correct", "localization", "other", "background"), 0)
    found: set[tuple[int, int]] = set()
    for c in range(1, num_classes + 1):
        dets = []  # (score, image, box)
        n_gt = 0
        for i, (p, t) in enumerate(zip(preds, targets)):
            n_gt += int((t["labels"] == c).sum())
            mine = p["labels"] == c
            dets += [(float(s), i, b) for s, b in zip(p["scores"][mine], p["boxes"][mine])]
        dets.sort(key=lambda d: -d[0])
        for _, i, box in dets[:n_gt]:
            t = targets[i]
            if len(t["boxes"]) == 0:
                counts["background"] += 1
                continue
            iou = box_iou(box[None], t["boxes"])[0]
            same = t["labels"] == c
            best_same = iou.masked_fill(~same, -1).max()
            j = int(iou.masked_fill(~same, -1).argmax())
            if best_same > 0.5 and (i, j) not in found:
                counts["correct"] += 1
                found.add((i, j))
            elif best_same > 0.1:
                counts["localization"] += 1
            elif iou.masked_fill(same, -1).max() > 0.1:
                counts["other"] += 1
            else:
                counts["background"] += 1
    return counts, found


def _shares(counts: dict[str, int]) -> dict[str, float]:
    total = max(1, sum(counts.values()))
    return {k: v / total for k, v in counts.items()}


def found_by_size(targets: list[dict], found: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(objects, found)`` per :data:`SIZE_BUCKETS` bucket; ``found`` holds the objects
    ``(image, index)`` that one of their class's top N detections found (IoU > 0.5), as
    :func:`judge_top_detections` returns them.

    Sizes are the longer side of the box in the stored image's pixels (a target's
    ``orig_size`` over its ``input_size``, when both are given, undoes a resize).
    """
    rows = [[0, 0] for _ in SIZE_BUCKETS]
    for i, t in enumerate(targets):
        scale = 1.0
        if "orig_size" in t and "input_size" in t:
            scale = float(t["orig_size"][1]) / float(t["input_size"][1])
        for j, (x1, y1, x2, y2) in enumerate(t["boxes"].tolist()):
            row = rows[size_bucket(max(x2 - x1, y2 - y1) * scale)]
            row[0] += 1
            row[1] += int((i, j) in found)
    return [(n, k) for n, k in rows]


@torch.no_grad()
def _timings(
    models: dict[str, Any], images: list[torch.Tensor], repeats: int, block: int = 10
) -> tuple[dict[str, float], dict[str, float]]:
    """Median ms per image of each model at batch 1, measured two ways in one run.

    Returns ``(blocked, interleaved)``. ``blocked``: the images go in blocks of ``block``;
    each model predicts a whole block in a row (after one warm-up image), then the next
    model the same block: the steady state of a process that runs one model on a stream
    of images, as ``visionlab predict`` and a deployment do (and as ``torch.utils.benchmark``
    times a statement), with models alternating every few milliseconds so that the
    machine's drift hits them alike. ``interleaved``: the models take turns image by image,
    so each starts with caches the others filled; reported beside, not used for the ratio.
    """
    blocked: dict[str, list[float]] = {name: [] for name in models}
    interleaved: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for first in range(0, len(images), block):
            chunk = images[first : first + block]
            for name, model in models.items():
                model([chunk[0]])  # warm-up: the previous block was another model's
                for image in chunk:
                    start = time.perf_counter()
                    model([image])
                    blocked[name].append(1000 * (time.perf_counter() - start))
        for image in images:
            for name, model in models.items():
                start = time.perf_counter()
                model([image])
                interleaved[name].append(1000 * (time.perf_counter() - start))
    median = statistics.median
    return (
        {name: median(t) for name, t in blocked.items()},
        {name: median(t) for name, t in interleaved.items()},
    )


def _samples_picture(loaded: dict[str, Any], dataset: Any, path: Path, count: int) -> None:
    from visionlab.models.detector import supported_extras
    from visionlab.viz import draw_detections, draw_grid, image_grid

    tiles, titles = [], []
    shown = 0
    for index in range(len(dataset)):
        if shown == count:
            break
        image, target = dataset[index]
        if len(target["boxes"]) == 0:  # show images with objects
            continue
        shown += 1
        tiles.append(draw_detections(image, target["boxes"], target["labels"],
                                     class_names=dataset.classes, min_size=256))  # fmt: skip
        titles.append("ground truth")
        for name, model in loaded.items():
            extras = ("grid",) if "grid" in supported_extras(model) else ()
            with torch.no_grad():
                pred = model([image], extras=extras)[0]
            keep = pred["scores"] >= 0.3
            if "grid_size" in pred:
                tile = draw_grid(image, pred["grid_size"], pred["cells"][keep],
                                 boxes=pred["boxes"][keep], labels=pred["labels"][keep],
                                 class_names=dataset.classes, min_size=256)  # fmt: skip
            else:
                tile = draw_detections(
                    image,
                    pred["boxes"][keep],
                    pred["labels"][keep],
                    pred["scores"][keep],
                    dataset.classes,
                    min_size=256,
                )
            tiles.append(tile)
            titles.append(name)
    image_grid(tiles, cols=1 + len(loaded), titles=titles).save(path)


def run(args: argparse.Namespace) -> int:
    from visionlab.engine.api import load
    from visionlab.ops.fuse import fuse_conv_bn

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.threads < 1 or args.repeats < 1 or args.timing_images < 1:
        raise VisionLabError("--threads, --repeats and --timing-images must be >= 1")
    torch.set_num_threads(args.threads)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="visionlab-bench-yolo-") as tmp:
        runs = Path(args.runs_dir) if args.runs_dir else Path(tmp)
        for config in configs:
            rows.append(_train_or_reuse(args, config, runs))
        loaded = {}
        for row in rows:
            model = load(row["run_dir"] / "checkpoints" / "best.pt")
            torch.set_num_threads(args.threads)
            row["name"] = _name(row["config"])
            row["model"] = model.meta["model_name"]
            row["args"] = model.meta.get("model_args") or {}
            row["size"] = model.image_size
            row["grid"] = (getattr(model, "S", None), getattr(model, "B", None))
            row["params"] = sum(p.numel() for p in model.parameters())
            loaded[row["name"]] = model
        check_one_size(rows)
        dataset = _val_set(next(iter(loaded.values())), args.quick)
        count = 5 if args.quick else len(dataset)
        for row in rows:
            metrics, preds, targets = _evaluate(loaded[row["name"]], dataset, count)
            row["metrics"] = metrics
            counts, found = judge_top_detections(preds, targets, len(dataset.classes))
            row["errors"] = _shares(counts)
            row["by_size"] = found_by_size(targets, found)
        n_time = 5 if args.quick else min(args.timing_images, len(dataset))
        images = [dataset[i][0] for i in range(n_time)]
        for model in loaded.values():  # as deployed (and as `visionlab predict` runs them)
            fuse_conv_bn(model)
        ms, ms_interleaved = _timings(loaded, images, 1 if args.quick else args.repeats)
        if args.samples:
            _samples_picture(loaded, dataset, out_dir / "yolo_samples.png", args.samples)
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    _by_size_picture(rows, out_dir / "yolo_by_size.png")
    lines = _markdown(args, rows, (ms, ms_interleaved), count, n_time, (load_before, load_after))
    (out_dir / "yolo.md").write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {out_dir / 'yolo.md'}")
    return 0


def _seconds(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}"


def _describe(row: dict[str, Any]) -> str:
    a = row["args"]
    if row["model"] != "yolo":
        return f"{row['model']}, {a.get('backbone', '?')} stride {a.get('feature_stride', '?')}"
    kind = "anchors" if a.get("anchors") else "v1"
    ms = ", multi-scale" if a.get("multiscale") else ""
    S, B = row["grid"]
    return f"yolo {kind}, {a.get('backbone')}, {a.get('head')} head, S={S}, B={B}{ms}"


def _by_size_picture(rows: list[dict[str, Any]], out_png: Path) -> None:
    from visionlab.viz import plot_grouped_bars

    bars = {r["name"]: shares(r["by_size"]) for r in rows}
    plot_grouped_bars(bucket_names(), bars, out_png, ylabel="objects found (%)",
                      title="Objects found by the top detections, by size")  # fmt: skip


def _markdown(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    times: tuple[dict[str, float], dict[str, float]],
    count: int,
    n_time: int,
    loads: tuple[float, float],
) -> list[str]:
    ms, ms_inter = times
    base = next((r for r in rows if r["model"] == "faster_rcnn"), None)
    lines = [
        header("YOLO v1 (Redmon et al., CVPR 2016) vs anchors (YOLO9000) vs Faster R-CNN"),
        "",
        f"Each recipe trained in this run (or reused with `--reuse`), evaluated on the first "
        f"{count} scenes validation images. ms/image: batch 1, eval mode, no grad, "
        f"batch norms folded into the convolutions (every model), postprocessing (thresholds, "
        f"NMS) included, {args.threads} threads; median over {n_time} validation images x "
        f"{1 if args.quick else args.repeats} passes. ms/image: each model predicts a block of 10 "
        "images in a row, then the next model the same block (the steady state of a process "
        "running one model, as `visionlab predict` does, with the models alternating every "
        "few milliseconds against the machine's drift; the speed-up is from these). "
        "Interleaved: the models take turns image by image, each starting with caches the "
        "others filled.",
        "",
        "| recipe | model | image px | AP50 | AP | AP75 | APs | train s | steps | ms/image "
        "| speed-up vs Faster R-CNN | interleaved ms/image (speed-up) | parameters |",
        "|:--|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        m = r["metrics"]
        speed = f"{ms[base['name']] / ms[r['name']]:.1f}x" if base else "n/a"
        inter = f"{ms_inter[r['name']]:.1f}" + (
            f" ({ms_inter[base['name']] / ms_inter[r['name']]:.1f}x)" if base else ""
        )
        lines.append(
            f"| `{r['config']}` | {_describe(r)} | {r['size']} | {m['AP50']:.3f} | "
            f"{m['AP']:.3f} | {m['AP75']:.3f} | {m['APs']:.3f} | {_seconds(r['seconds'])} | "
            f"{r['steps'] if r['steps'] is not None else '-'} | {ms[r['name']]:.1f} | {speed} | "
            f"{inter} | {r['params'] / 1e6:.2f}M |"
        )
    lines += [
        "",
        "Error breakdown (paper Sec. 4.2, after Hoiem et al.): per class, its top N detections "
        "(N = its objects) are correct (IoU > 0.5), localisation (0.1 < IoU < 0.5, or a "
        "duplicate), other class (IoU > 0.1 with an object of another class) or background.",
        "",
        "| recipe | correct | localization | other class | background |",
        "|:--|--:|--:|--:|--:|",
    ]
    for r in rows:
        e = r["errors"]
        lines.append(
            f"| `{r['config']}` | {e['correct']:.3f} | {e['localization']:.3f} | "
            f"{e['other']:.3f} | {e['background']:.3f} |"
        )
    lines += [
        "",
        "Objects found by size (longer side of the box in the stored images): the share of "
        "each size's objects that one of its class's top N detections finds with IoU > 0.5 "
        "(the `correct` column above, per object). About a quarter of the scenes objects are "
        "under 12 px, where a box 1.5 px off on each side is already below IoU 0.5.",
        "",
        "| recipe | " + " | ".join(bucket_names()) + " |",
        "|:--|" + "--:|" * len(SIZE_BUCKETS),
    ]
    for r in rows:
        cells = " | ".join(cell(v, 3) for v in shares(r["by_size"]))
        lines.append(f"| `{r['config']}` | {cells} |")
    lines.append("| objects | " + " | ".join(str(n) for n, _ in rows[0]["by_size"]) + " |")
    lines += ["", "`yolo_by_size.png`: the same shares as bars."]
    lines += ["", "`yolo_samples.png`: ground truth, then each model's detections (score >= 0.3);"
              " YOLO's tiles shade the cells the detections came from.", ""]  # fmt: skip
    v1 = next((r for r in rows if r["model"] == "yolo" and not r["args"].get("anchors")), None)
    if v1 is not None:
        ap50, secs = v1["metrics"]["AP50"], v1["seconds"]
        met = ap50 >= TARGET_AP50 and secs <= TARGET_SECONDS
        lines.append(
            f"Target (YOLO v1 recipe, AP50 >= {TARGET_AP50} within {TARGET_SECONDS // 60} "
            f"minutes on 2 cores): "
            + ("met" if met else "**not met**")
            + f" (AP50 {ap50:.3f} in {secs:.0f} s)."
        )
        if base is not None:
            speed = ms[base["name"]] / ms[v1["name"]]
            lines.append(
                f"Target (inference >= {TARGET_SPEEDUP:.0f}x faster than our Faster R-CNN, "
                "same backbone and image size): "
                + ("met" if speed >= TARGET_SPEEDUP else "**not met**")
                + f" ({speed:.1f}x)."
            )
    lines += [
        "",
        f"Load average (1 min) before / after: {loads[0]:.1f} / {loads[1]:.1f} on "
        f"{os.cpu_count()} logical cores.",
        "",
    ]
    return lines

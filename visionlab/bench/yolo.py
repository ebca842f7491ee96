"""YOLO v1 vs its anchor-prior option vs our Faster R-CNN, same backbone and image size.

Trains (or reuses) each recipe, then measures in one run: validation AP, inference ms/image
(batch norms folded, as ``visionlab predict`` runs them) and the speed-up over Faster R-CNN,
the error breakdown of the YOLO paper's Sec. 4.2, and objects found by size. Writes
``OUT_DIR/yolo.md`` and its pictures.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from visionlab.bench.machine import (
    comma_list,
    elapsed_ms,
    header,
    load_average,
    load_line,
    row,
    take_turns,
    write_markdown,
)
from visionlab.bench.runs import (
    add_overrides,
    add_training_arguments,
    recorded_training,
    schedule_overrides,
    timed_train,
)
from visionlab.bench.sizes import SIZE_BUCKETS, bucket_names, cell, shares, size_bucket, size_head
from visionlab.errors import VisionLabError

DEFAULT_CONFIGS = (
    "configs/yolo_scenes.yaml,configs/yolo_anchors_scenes.yaml,configs/faster_rcnn_scenes.yaml"
)
TARGET_AP50 = 0.85  # YOLO v1 recipe, scenes val, within 10 minutes on 2 cores
TARGET_SECONDS = 600
TARGET_SPEEDUP = 3.0  # inference vs our Faster R-CNN, same backbone and image size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated recipes")
    add_training_arguments(parser)
    parser.add_argument("--timing-images", type=int, default=50, help="val images timed")
    parser.add_argument("--repeats", type=int, default=5, help="passes over the timed images")
    parser.add_argument("--samples", type=int, default=4, help="images in yolo_samples.png")
    parser.add_argument(
        "--reuse", action="store_true", help="use RUNS/<name>/checkpoints/best.pt when present"
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 20 steps, 5 images")
    add_overrides(parser, "overrides for every recipe")


def _train_or_reuse(args: argparse.Namespace, config: str, runs: Path) -> dict[str, Any]:
    from visionlab.config import load_config
    from visionlab.models.registry import is_registered

    cfg = load_config(config, list(args.overrides))
    if not is_registered(cfg.model):
        raise VisionLabError(f"{config}: model {cfg.model!r} is not registered in this checkout")
    run_dir = runs / Path(config).stem
    if args.reuse and (run_dir / "checkpoints" / "best.pt").is_file():
        seconds, steps = recorded_training(run_dir)
    else:
        overrides = [*args.overrides, f"out={run_dir}", "train.progress=false"]
        result, seconds = timed_train(config, [*overrides, *schedule_overrides(args)])
        steps = result.step
    return {"config": config, "run_dir": run_dir, "seconds": seconds, "steps": steps}


def check_one_size(rows: list[dict[str, Any]]) -> None:
    """The comparison is at one image size (every model is fed the same validation images)."""
    sizes = {row["name"]: row["size"] for row in rows}
    if len(set(sizes.values())) > 1:
        raise VisionLabError(
            f"bench yolo compares recipes at one image size; these differ: {sizes} "
            "(e.g. configs/faster_rcnn_scenes.yaml is the 128 px Faster R-CNN)"
        )


def _val_set(model: Any) -> Any:
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
        for j, box in enumerate(t["boxes"].tolist()):
            row = rows[size_bucket(box, scale)]
            row[0] += 1
            row[1] += int((i, j) in found)
    return [(n, k) for n, k in rows]


@torch.no_grad()
def _timings(
    models: dict[str, Any], images: list[torch.Tensor], repeats: int, block: int = 10
) -> tuple[dict[str, float], dict[str, float]]:
    """Median ms per image of each model at batch 1, measured two ways in one run.

    Returns ``(blocked, interleaved)``. ``blocked``: each model predicts a block of ``block``
    images in a row (after one warm-up image), then the next model the same block: one
    model's steady state, the models alternating so that the machine's drift hits them
    alike. ``interleaved``: the models take turns image by image.
    """
    blocked: dict[str, list[float]] = {name: [] for name in models}
    interleaved: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for first in range(0, len(images), block):
            chunk = images[first : first + block]
            for name, model in models.items():
                model([chunk[0]])  # warm-up: the previous block was another model's
                blocked[name] += [elapsed_ms(model, [image]) for image in chunk]
        for name, times in take_turns(models, [[image] for image in images]).items():
            interleaved[name] += times
    medians = [{k: statistics.median(t) for k, t in d.items()} for d in (blocked, interleaved)]
    return medians[0], medians[1]


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
            boxes, labels, scores = (pred[k][keep] for k in ("boxes", "labels", "scores"))
            if "grid_size" in pred:
                tile = draw_grid(image, pred["grid_size"], pred["cells"][keep],
                                 boxes=boxes, labels=labels, class_names=dataset.classes,
                                 min_size=256)  # fmt: skip
            else:
                tile = draw_detections(image, boxes, labels, scores, dataset.classes, min_size=256)
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
    if args.quick:  # smoke-test sizes
        args.max_steps, args.repeats, args.timing_images = 20, 1, 5
    configs = comma_list(args.configs, "--configs")
    load_before = load_average()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="visionlab-bench-yolo-") as tmp:
        runs = Path(args.runs_dir) if args.runs_dir else Path(tmp)
        for config in configs:
            rows.append(_train_or_reuse(args, config, runs))
        loaded = {}
        for row in rows:
            model = load(row["run_dir"] / "checkpoints" / "best.pt")
            torch.set_num_threads(args.threads)
            row["name"] = Path(row["config"]).stem
            row["model"] = model.meta["model_name"]
            row["args"] = model.meta.get("model_args") or {}
            row["size"] = model.image_size
            row["grid"] = (getattr(model, "S", None), getattr(model, "B", None))
            row["params"] = sum(p.numel() for p in model.parameters())
            loaded[row["name"]] = model
        check_one_size(rows)
        dataset = _val_set(next(iter(loaded.values())))
        count = 5 if args.quick else len(dataset)
        for row in rows:
            metrics, preds, targets = _evaluate(loaded[row["name"]], dataset, count)
            row["metrics"] = metrics
            counts, found = judge_top_detections(preds, targets, len(dataset.classes))
            row["errors"] = _shares(counts)
            row["by_size"] = found_by_size(targets, found)
        n_time = min(args.timing_images, len(dataset))
        images = [dataset[i][0] for i in range(n_time)]
        for model in loaded.values():  # as deployed (and as `visionlab predict` runs them)
            fuse_conv_bn(model)
        ms, ms_interleaved = _timings(loaded, images, args.repeats)
        if args.samples:
            _samples_picture(loaded, dataset, out_dir / "yolo_samples.png", args.samples)
    load = load_line(load_before, load_average())
    _by_size_picture(rows, out_dir / "yolo_by_size.png")
    write_markdown(
        out_dir, "yolo.md", _markdown(args, rows, (ms, ms_interleaved), count, n_time, load)
    )
    return 0


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
    load: str,
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
        f"{args.repeats} passes. ms/image: each model predicts a block of 10 "
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
            f"{m['AP']:.3f} | {m['AP75']:.3f} | {m['APs']:.3f} | {cell(r['seconds'], 0)} | "
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
    verdicts = ("correct", "localization", "other", "background")
    lines += [row(f"`{r['config']}`", *(f"{r['errors'][k]:.3f}" for k in verdicts)) for r in rows]
    lines += [
        "",
        "Objects found by size (longer side of the box in the stored images): the share of "
        "each size's objects that one of its class's top N detections finds with IoU > 0.5 "
        "(the `correct` column above, per object). About a quarter of the scenes objects are "
        "under 12 px, where a box 1.5 px off on each side is already below IoU 0.5.",
        "",
        *size_head("recipe"),
    ]
    lines += [row(f"`{r['config']}`", *(cell(v, 3) for v in shares(r["by_size"]))) for r in rows]
    lines.append(row("objects", *(n for n, _ in rows[0]["by_size"])))
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
    return [*lines, "", load, ""]

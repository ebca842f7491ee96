"""R-CNN against SPPNet on scenes: mAP with and without box regression, and test time per
image split into proposals / features / classification / NMS.

Scores two trained checkpoints on the same selective-search proposals, with and without
their box regressors, times each step per image, and times the features step on growing
numbers of random windows (the speed-up depends on how many windows there are). Writes
``OUT_DIR/rcnn.md``.
"""

from __future__ import annotations

import argparse
import math
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from visionlab.bench.machine import comma_list, elapsed_ms, header, row, write_markdown
from visionlab.errors import VisionLabError

DEFAULTS = {
    "rcnn": "runs/rcnn_scenes/checkpoints/last.pt",
    "sppnet": "runs/sppnet_scenes/checkpoints/last.pt",
}
TARGET_AP50 = 0.7
TARGET_SPEEDUP = 10.0
PAPER_SPEEDUP = "24-102x"
STEPS = ("proposals", "features", "classification", "nms")
WINDOW_COUNTS = "100,500,2000"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rcnn", default=DEFAULTS["rcnn"], help="R-CNN checkpoint")
    parser.add_argument("--sppnet", default=DEFAULTS["sppnet"], help="SPPNet checkpoint")
    parser.add_argument("--data", default="scenes", help="dataset (default: scenes)")
    parser.add_argument("--split", default="val")
    parser.add_argument(
        "--limit", type=int, default=100, help="validation images scored (0 = all; R-CNN is slow)"
    )
    parser.add_argument(
        "--timing-images", type=int, default=20, help="images for uncached selective search"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--windows",
        default=WINDOW_COUNTS,
        help=f"window counts of the features-time sweep, comma-separated (default {WINDOW_COUNTS};"
        " empty = no sweep)",
    )
    parser.add_argument(
        "--window-images", type=int, default=5, help="images of the window sweep (default 5)"
    )


@torch.no_grad()
def score_model(model: Any, dataset: Any, limit: int, classes: list[str]) -> dict[str, Any]:
    """AP with and without box regression, and seconds per step, over ``limit`` images."""
    from tqdm.auto import tqdm

    from visionlab.eval.detection import DetectionEvaluator
    from visionlab.ops import clip_boxes_to_image

    evaluators = {True: DetectionEvaluator(classes), False: DetectionEvaluator(classes)}
    seconds = dict.fromkeys(STEPS[1:], 0.0)
    n = len(dataset) if limit <= 0 else min(limit, len(dataset))
    num_props = 0
    for i in tqdm(range(n), desc=model.build_args.get("name", type(model).__name__), leave=False):
        image, target = dataset[i]
        boxes = model.propose(image)  # cached on disk: timed apart, uncached
        num_props += len(boxes)
        t0 = time.perf_counter()
        pooled = model.pool_features([image], [boxes])
        fc7 = model.fc_features(pooled)
        t1 = time.perf_counter()
        scores = model.class_scores(fc7)
        refined = model.regress_boxes(pooled, boxes)
        refined = clip_boxes_to_image(refined.reshape(-1, 4), tuple(image.shape[-2:]))
        refined = refined.view(scores.shape[0], -1, 4)
        t2 = time.perf_counter()
        det = model.postprocess(refined, scores)
        t3 = time.perf_counter()
        plain = model.postprocess(boxes[:, None, :].expand_as(refined), scores)
        seconds["features"] += t1 - t0
        seconds["classification"] += t2 - t1
        seconds["nms"] += t3 - t2
        evaluators[True].update([det], [target])
        evaluators[False].update([plain], [target])
    return {
        "images": n,
        "mean_proposals": num_props / max(1, n),
        "with_reg": evaluators[True].compute(),
        "without_reg": evaluators[False].compute(),
        "ms": {k: 1000 * v / max(1, n) for k, v in seconds.items()},
    }


def time_proposals(model: Any, dataset: Any, n: int) -> float:
    """Milliseconds per image of selective search without the disk cache."""
    from visionlab.ops import selective_search

    s = model.proposal_settings
    search = partial(selective_search, cache=False, search_size=s.search_size)
    n = min(n, len(dataset))
    total = sum(elapsed_ms(search, dataset[i][0], s.mode, s.max_proposals) for i in range(n))
    return total / max(1, n)


def random_windows(size: tuple[int, int], count: int, generator: torch.Generator) -> Tensor:
    """``count`` xyxy windows inside an image of ``size`` (H, W): side log-uniform from 8 px
    to half the shorter side, aspect ratio (w / h) log-uniform in [1/2, 2], uniform position."""
    h, w = size
    low, high = math.log(8.0), math.log(max(8.0, min(h, w) / 2))
    side = torch.exp(low + (high - low) * torch.rand(count, generator=generator))
    ratio = torch.exp(math.log(2.0) * (2 * torch.rand(count, generator=generator) - 1))
    bw = (side * ratio.sqrt()).clamp(max=w)
    bh = (side / ratio.sqrt()).clamp(max=h)
    x1 = (w - bw) * torch.rand(count, generator=generator)
    y1 = (h - bh) * torch.rand(count, generator=generator)
    return torch.stack([x1, y1, x1 + bw, y1 + bh], dim=1)


@torch.no_grad()
def time_windows(
    models: dict[str, Any], dataset: Any, counts: list[int], images: int
) -> dict[str, dict[int, float]]:
    """Milliseconds per image of the features step (pooling or warping + fc6 + fc7) of each
    model on ``count`` random windows, for each count; models interleaved per image."""
    n = min(images, len(dataset))
    out: dict[str, dict[int, float]] = {name: dict.fromkeys(counts, 0.0) for name in models}
    generator = torch.Generator().manual_seed(0)
    for i in range(n):
        image, _ = dataset[i]
        for count in counts:
            boxes = random_windows(tuple(image.shape[-2:]), count, generator)
            for name, model in models.items():
                t0 = time.perf_counter()
                model.fc_features(model.pool_features([image], [boxes]))
                out[name][count] += (time.perf_counter() - t0) * 1000 / max(1, n)
    return out


def run(args: argparse.Namespace) -> int:
    from visionlab.data.datasets import load_dataset
    from visionlab.engine.api import load, make_transform

    torch.set_num_threads(args.threads)
    counts = comma_list(args.windows, "--windows", int)
    for name in DEFAULTS:
        if not Path(getattr(args, name)).is_file():
            raise VisionLabError(
                f"--{name} {getattr(args, name)}: no such checkpoint; train it first with "
                f"`visionlab train configs/{name}_scenes.yaml`"
            )
    models = {name: load(getattr(args, name), "cpu") for name in DEFAULTS}
    first = models["rcnn"]
    if models["rcnn"].proposal_settings != models["sppnet"].proposal_settings:
        print("warning: the two checkpoints use different proposal settings")
    transform = make_transform("detection", False, first.image_size, {})
    dataset = load_dataset(args.data, args.split, task="detection", transforms=transform)
    results = {}
    for name, model in models.items():
        results[name] = score_model(model, dataset, args.limit, list(dataset.classes))
    prop_ms = time_proposals(first, dataset, args.timing_images)
    sweep = time_windows(models, dataset, counts, args.window_images) if counts else {}
    text = report(results, prop_ms, args, models, sweep)
    print(text)
    write_markdown(args.out_dir, "rcnn.md", text)
    return 0


def report(
    results: dict[str, Any],
    prop_ms: float,
    args: Any,
    models: dict[str, Any],
    sweep: dict[str, dict[int, float]] | None = None,
) -> str:
    import os

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [header("R-CNN vs SPPNet on scenes"), f"- Load average when written: {load}", ""]
    n = results["rcnn"]["images"]
    lines += [
        f"Validation images scored: {n} (`--limit`; 0 = all 500). Torch threads: "
        f"{args.threads}. Mean selective-search proposals per image: "
        f"{results['rcnn']['mean_proposals']:.0f} (fast mode at "
        f"{models['rcnn'].proposal_settings.search_size} px).",
        "",
        "## Accuracy (shared DetectionEvaluator)",
        "",
        "| model | box regression | AP50 (COCO) | AP | VOC07 mAP | VOC mAP |",
        "|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        for key, label in (("without_reg", "no"), ("with_reg", "yes")):
            aps = (f"{res[key][k]:.3f}" for k in ("AP50", "AP", "voc07_mAP", "voc_mAP"))
            lines.append(row(name, label, *aps))
    lines += [
        "",
        f"Target: AP50 >= {TARGET_AP50} for both (with box regression): "
        + ", ".join(
            f"{k} {'met' if r['with_reg']['AP50'] >= TARGET_AP50 else 'NOT met'}"
            for k, r in results.items()
        )
        + ".",
        "",
        "## Test time per image (ms, CPU)",
        "",
        "| model | proposals | features | classification | NMS | total |",
        "|---|---|---|---|---|---|",
    ]
    totals = {}
    for name, res in results.items():
        ms = res["ms"]
        totals[name] = (sum(ms.values()), prop_ms + sum(ms.values()))
        lines.append(
            f"| {name} | {prop_ms:.1f} | {ms['features']:.1f} | {ms['classification']:.2f} | "
            f"{ms['nms']:.2f} | {totals[name][1]:.1f} |"
        )
    ratio = totals["rcnn"][0] / max(1e-9, totals["sppnet"][0])
    ratio_all = totals["rcnn"][1] / max(1e-9, totals["sppnet"][1])
    feat_ratio = results["rcnn"]["ms"]["features"] / max(1e-9, results["sppnet"]["ms"]["features"])
    lines += [
        "",
        f"- R-CNN / SPPNet test time without proposals: **{ratio:.1f}x** (features alone "
        f"{feat_ratio:.1f}x); the SPPNet paper reports {PAPER_SPEEDUP} for the conv features "
        f"(ZF-5 / AlexNet-size nets, GPU, ~2000 windows on ~500 px images). Target >= "
        f"{TARGET_SPEEDUP:.0f}x: {'met' if ratio >= TARGET_SPEEDUP else 'NOT met'}.",
        f"- With selective search included (the same for both): {ratio_all:.1f}x.",
        "- Proposals: selective search without the disk cache, measured on "
        f"{args.timing_images} images; features: pool5 + fc6 + fc7 of every proposal; "
        "classification: SVM scores + box regression; NMS: threshold + class-wise NMS.",
    ]
    if sweep:
        counts = list(next(iter(sweep.values())))
        lines += [
            "",
            "## Features time against the number of windows",
            "",
            f"Random windows (8 px to half the image, seeded, the same for both models), "
            f"{args.window_images} images; ms per image for pooling or warping + fc6 + fc7.",
            "",
            "| windows | " + " | ".join(f"{name} ms" for name in sweep) + " | R-CNN / SPPNet |",
            "|--:|" + "--:|" * (len(sweep) + 1),
        ]
        for count in counts:
            ms = (f"{sweep[name][count]:.1f}" for name in sweep)
            ratio = sweep["rcnn"][count] / max(1e-9, sweep["sppnet"][count])
            lines.append(row(count, *ms, f"{ratio:.1f}x"))
        lines += [
            "",
            "R-CNN's time grows with the windows (one CNN pass each); SPPNet's stays near its "
            "one conv pass per image, so the ratio is set by how many windows the proposals give.",
        ]
    return "\n".join(lines) + "\n"

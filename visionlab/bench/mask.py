"""Our Mask R-CNN against torchvision's ``MaskRCNN`` on scenes, the paper's mask-head
ablations, and masks beside boxes.

Trains ours and torchvision's peer (:func:`~visionlab.bench.peers.torchvision_peer`) alike,
then ours again with RoI pooling for the mask head (He et al. 2017, Table 2c) and with
class-agnostic masks (Table 2b), and reports mask and box AP, by size too, step and inference
time. Writes ``OUT_DIR/mask_rcnn.md``.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from visionlab.bench.machine import header, row, write_markdown
from visionlab.bench.peers import (
    add_peer_arguments,
    fit,
    infer_ms,
    prepare,
    score,
    torchvision_peer,
)
from visionlab.models.mask_rcnn import MaskHeadSettings

CONFIG = "configs/mask_rcnn_scenes.yaml"

# name -> (mask head settings over the recipe's, torchvision's peer instead of ours)
TRAININGS: dict[str, tuple[dict[str, Any], bool]] = {
    "ours": ({}, False),
    "torchvision": ({}, True),
    "ours, RoI pool": ({"pooler": "roi_pool"}, False),
    "ours, class-agnostic": ({"class_agnostic": True}, False),
}
KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_peer_arguments(parser, CONFIG, "Mask R-CNN")


def build(cfg: Any, num_classes: int, mask_head: dict[str, Any], peer: bool) -> torch.nn.Module:
    """Our Mask R-CNN from the recipe with ``mask_head`` over its mask head settings, or
    (``peer``) torchvision's MaskRCNN built on it."""
    from visionlab.models.registry import build_model

    args = dict(cfg.model_args)
    args["mask_head"] = {**(args.get("mask_head") or {}), **mask_head}
    ours = build_model(cfg.model, **args, num_classes=num_classes)
    return torchvision_peer(ours, cfg.image_size, masks=True) if peer else ours


def run(args: argparse.Namespace) -> int:
    from visionlab.engine.common import seed_everything

    task = "instance"
    cfg, train_ds, val_ds, classes, steps, n_val, timing_images = prepare(args, task)

    results: dict[str, dict[str, Any]] = {}
    for name, (mask_head, peer) in TRAININGS.items():
        seed_everything(cfg.seed)
        model = build(cfg, len(classes) + 1, mask_head, peer)
        print(f"training {name}: {steps} steps", flush=True)
        step_s, snapshots = fit(model, cfg, train_ds, batch_size=cfg.train.batch_size,
                                points=[steps], task=task)  # fmt: skip
        metrics = score(model, val_ds, classes, n_val, task=task)
        results[name] = {**metrics, "step_s": step_s, "model": snapshots[steps]}
        print(name, {k: round(metrics[k], 4) for k in ("AP", "mask_AP")}, flush=True)
    models = {name: results[name]["model"] for name in ("ours", "torchvision")}
    infer = infer_ms(models, timing_images)
    print("ms/image:", infer, flush=True)

    text = _markdown(args, cfg, steps, n_val, len(timing_images), results, infer)
    write_markdown(args.out_dir, "mask_rcnn.md", text)
    return 0


def _ap(value: float) -> str:
    """An AP as four decimals; COCO's -1 (no object of that size) as n/a."""
    return "n/a" if value < 0 else f"{value:.4f}"


def _markdown(args, cfg, steps, n_val, n_timed, results, infer) -> str:
    ours, tv = results["ours"], results["torchvision"]
    pool, agnostic = results["ours, RoI pool"], results["ours, class-agnostic"]
    start = cfg.model_args.get("pretrained_backbone")
    start = f"`{start}`" if start else "from scratch (`model_args.pretrained_backbone=null`)"
    head = MaskHeadSettings(**(cfg.model_args.get("mask_head") or {}))
    lines = [
        header("Mask R-CNN: ours vs torchvision, the mask head's ablations, masks vs boxes"),
        f"- Threads: {args.threads}; recipe `{args.config}` (model_args "
        f"`{dict(cfg.model_args)}`), task {cfg.task}, data {cfg.data}, image size "
        f"{cfg.image_size}, batch {cfg.train.batch_size}, {steps} steps of AdamW lr "
        f"{cfg.optim.lr} (warm-up {cfg.schedule.warmup_steps}, cosine), augment "
        f"`{dict(cfg.augment)}`, seed {cfg.seed}; every model trained by the engine's Trainer "
        f"for the same {steps} steps ("
        + (
            "`--quick`: a smoke run"
            if args.quick
            else "chosen so that the four trainings fit one run on this machine"
        )
        + f"); backbone {start}; box and mask AP on {n_val} {cfg.data} val images (one pass of "
        "the instance evaluator).",
        "",
        "## Ours vs torchvision.models.detection.MaskRCNN (same backbone init, settings, data)",
        "",
        "torchvision's peer: our backbone (a copy of the same initialisation), RPN and box "
        "settings mapped as `visionlab bench peers` maps them, `MaskRCNNHeads` "
        f"(width {head.width}, {head.num_convs} layers), `MaskRCNNPredictor`, "
        f"`MultiScaleRoIAlign` {head.pool_size}x{head.pool_size}. Inference: ms/image over "
        "the first "
        f"{n_timed} val images, batch of one, no grad, each image's fastest of 3 runs, "
        "the two models taking turns.",
        "",
        "| | mask AP | box AP | train step (s) | inference (ms/image) |",
        "|---|---:|---:|---:|---:|",
        f"| ours | {ours['mask_AP']:.4f} | {ours['AP']:.4f} | {ours['step_s']:.3f} | "
        f"{infer['ours']:.1f} |",
        f"| torchvision | {tv['mask_AP']:.4f} | {tv['AP']:.4f} | {tv['step_s']:.3f} | "
        f"{infer['torchvision']:.1f} |",
        f"| ours - torchvision (AP), ours / torchvision (time) | "
        f"{ours['mask_AP'] - tv['mask_AP']:+.4f} | {ours['AP'] - tv['AP']:+.4f} | "
        f"{ours['step_s'] / tv['step_s']:.2f} | {infer['ours'] / infer['torchvision']:.2f} |",
        "| target | >= -0.02 | >= -0.02 | <= 1.0 | <= 1.0 |",
        "",
        "## Ablations of ours (He et al. 2017, Table 2c and 2b), same seed and steps",
        "",
        "| mask head | mask AP | mask AP75 |",
        "|---|---:|---:|",
        f"| RoI align (ours) | {ours['mask_AP']:.4f} | {ours['mask_AP75']:.4f} |",
        f"| RoI pool | {pool['mask_AP']:.4f} | {pool['mask_AP75']:.4f} |",
        f"| align - pool | {ours['mask_AP'] - pool['mask_AP']:+.4f} | "
        f"{ours['mask_AP75'] - pool['mask_AP75']:+.4f} |",
        "",
        "| masks | mask AP |",
        "|---|---:|",
        f"| class-specific (ours) | {ours['mask_AP']:.4f} |",
        f"| class-agnostic | {agnostic['mask_AP']:.4f} |",
        f"| specific - agnostic | {ours['mask_AP'] - agnostic['mask_AP']:+.4f} |",
        "",
        "## Masks beside boxes (each model's own boxes), target mask AP50 >= 0.95 x box AP50",
        "",
        "| model | box AP50 | mask AP50 | mask / box | box APs | mask APs | box APm | "
        "mask APm | box APl | mask APl |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        ratio = r["mask_AP50"] / r["AP50"] if r["AP50"] > 0 else float("nan")
        sizes = " | ".join(f"{_ap(r[k])} | {_ap(r['mask_' + k])}" for k in ("APs", "APm", "APl"))
        lines.append(f"| {name} | {r['AP50']:.4f} | {r['mask_AP50']:.4f} | {ratio:.2f} | {sizes} |")
    lines += [
        "",
        "All box and mask stats (COCO, IoU 0.50:0.95 unless named):",
        "",
        row("model", *KEYS, *("mask " + k for k in KEYS)),
        "|---|" + "---:|" * (2 * len(KEYS)),
        *(
            row(name, *(_ap(r[k]) for k in (*KEYS, *("mask_" + k for k in KEYS))))
            for name, r in results.items()
        ),
        "",
    ]
    return "\n".join(lines)

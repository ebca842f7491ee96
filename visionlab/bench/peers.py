"""Our Faster R-CNN against torchvision's ``FasterRCNN`` on scenes, and where test time goes.

Part 1 trains both detectors with the same backbone (one ``tiny_cnn``-family initialisation
copied into both), the same settings (anchors, sampling, top-N, thresholds, RoI align 7x7,
FC width), image size, data order, augmentation and schedule (AdamW, warm-up + cosine), in
one process with a simple shared loop, then reports validation AP50 / AP (the shared
:class:`visionlab.eval.detection.DetectionEvaluator`), the mean training step time and the
inference time per image (batch of one, no grad), as ours / torchvision ratios measured in
the same run. torchvision's own transform is kept (resize to the same size, which is then
the identity, with mean 0 / std 1 because the backbone normalises). The settings come from
``configs/faster_rcnn_scenes.yaml``; the one difference is the box head's smooth-L1 beta
(ours 1, Fast R-CNN's; torchvision 1/9).

Part 2 splits the test time per image of Fast R-CNN (selective search, uncached) and
Faster R-CNN (the RPN) into proposals / backbone / heads / NMS. Writes ``OUT_DIR/peers.md``.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from visionlab.bench.machine import header

CONFIG = "configs/faster_rcnn_scenes.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=CONFIG, help="the Faster R-CNN recipe to mirror")
    parser.add_argument("--steps", type=int, default=None, help="training steps (recipe's)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--timing-images", type=int, default=50, help="val images timed")
    parser.add_argument("--val-images", type=int, default=None, help="val images scored")
    parser.add_argument("--fast-steps", type=int, default=None, help="Fast R-CNN steps")
    parser.add_argument("--quick", action="store_true", help="smoke test: 10 steps, 8 images")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="recipe overrides, e.g. model_args.pretrained_backbone=RUN/checkpoints/best.pt",
    )


class _Body(nn.Module):
    """Our backbone (and FPN) as torchvision's detector wants it: ``{"0": map, ...}``
    (finest first) and ``out_channels``. With FPN, torchvision's own
    ``FeaturePyramidNetwork`` (same layers and initialisation as ours) is used."""

    def __init__(self, backbone: nn.Module, strides: tuple[int, ...], fpn_channels: int | None):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork

        self.body, self.strides = backbone, strides
        channels = [backbone.feature_channels[f"stride{s}"] for s in strides]
        self.fpn = FeaturePyramidNetwork(channels, fpn_channels) if fpn_channels else None
        self.out_channels = fpn_channels or channels[0]

    def forward(self, x: Tensor) -> OrderedDict:
        maps = self.body.feature_maps(x, strides=self.strides)
        levels = OrderedDict((str(i), maps[f"stride{s}"]) for i, s in enumerate(self.strides))
        return self.fpn(levels) if self.fpn is not None else levels


def torchvision_peer(ours: nn.Module, size: int) -> nn.Module:
    """torchvision's FasterRCNN with our model's backbone (a copy) and settings."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.rpn import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    rpn, heads = ours.rpn.settings, ours.roi_heads
    box = heads.settings
    strides = ours.feature_strides
    fpn_channels = ours.fpn.output[0].out_channels if ours.fpn is not None else None
    body = _Body(copy.deepcopy(ours.backbone), strides, fpn_channels)
    names = [str(i) for i in range(len(strides))]
    pool_kwargs = {}
    if len(strides) > 1:  # the same level mapping as ours (FPN eq. 1)
        pool_kwargs = {
            "canonical_scale": int(heads.canonical_size),
            "canonical_level": int(math.log2(strides[heads.canonical_level])),
        }
    post = ours.roi_heads.detection_settings
    return FasterRCNN(
        body,
        num_classes=None,
        min_size=size,
        max_size=size,
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
        rpn_anchor_generator=AnchorGenerator(
            ours.rpn.anchor_generator.sizes, ours.rpn.anchor_generator.aspect_ratios
        ),
        rpn_pre_nms_top_n_train=rpn.pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn.pre_nms_top_n_test,
        rpn_post_nms_top_n_train=rpn.post_nms_top_n_train,
        rpn_post_nms_top_n_test=rpn.post_nms_top_n_test,
        rpn_nms_thresh=rpn.nms_thresh,
        rpn_fg_iou_thresh=rpn.fg_iou,
        rpn_bg_iou_thresh=rpn.bg_iou,
        rpn_batch_size_per_image=rpn.batch_size_per_image,
        rpn_positive_fraction=rpn.positive_fraction,
        box_roi_pool=MultiScaleRoIAlign(names, box.pool_size, 2, **pool_kwargs),
        box_head=TwoMLPHead(body.out_channels * box.pool_size**2, box.fc_width),
        box_predictor=FastRCNNPredictor(box.fc_width, heads.num_classes),
        box_score_thresh=post.score_thresh,
        box_nms_thresh=post.nms_thresh,
        box_detections_per_img=post.detections_per_img,
        box_fg_iou_thresh=box.fg_iou,
        box_bg_iou_thresh=box.fg_iou,
        box_batch_size_per_image=box.batch_size_per_image,
        box_positive_fraction=box.positive_fraction,
    )


def _train(model: nn.Module, cfg: Any, loader: Any, steps: int) -> list[float]:
    """The shared loop: AdamW, linear warm-up then cosine; returns per-step seconds."""
    from visionlab.engine.trainer import build_optimizer

    optimizer = build_optimizer(model, cfg.optim)
    warm = max(1, cfg.schedule.warmup_steps)

    def factor(step: int) -> float:
        if step < warm:
            return 0.001 + (1 - 0.001) * step / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    model.train()
    times, step = [], 0
    from tqdm.auto import tqdm

    bar = tqdm(total=steps, desc=type(model).__module__.split(".")[0], leave=False)
    while step < steps:
        loader.sampler.set_epoch(step // len(loader))
        for images, targets in loader:
            start = time.perf_counter()
            losses = model(list(images), list(targets))
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            times.append(time.perf_counter() - start)
            step += 1
            bar.update()
            if step >= steps:
                break
    bar.close()
    return times


@torch.no_grad()
def _score(model: nn.Module, dataset: Any, classes: list[str], n: int) -> dict[str, float]:
    from visionlab.eval.detection import DetectionEvaluator

    model.eval()
    evaluator = DetectionEvaluator(classes)
    for i in range(0, n, 16):
        batch = [dataset[j] for j in range(i, min(n, i + 16))]
        evaluator.update(model([b[0] for b in batch]), [b[1] for b in batch])
    return evaluator.compute()


@torch.no_grad()
def _infer_ms(model: nn.Module, images: list[Tensor]) -> float:
    model.eval()
    model([images[0]])
    times = []
    for im in images:
        start = time.perf_counter()
        model([im])
        times.append(time.perf_counter() - start)
    return 1000 * statistics.mean(times)


@torch.no_grad()
def split_times(model: nn.Module, images: list[Tensor]) -> dict[str, float]:
    """Mean ms per image (batch of one) of proposals / backbone / heads / NMS."""
    from visionlab.models.batching import batch_images
    from visionlab.ops import selective_search

    model.eval()
    parts = {"proposals": [], "backbone": [], "heads": [], "NMS": []}
    heads = model.roi_heads
    for i, im in enumerate([images[0], *images]):  # the first pass warms up
        t0 = time.perf_counter()
        batch, sizes = batch_images([im], 32)
        if hasattr(model, "rpn"):  # Faster R-CNN: backbone first, then the RPN on its map
            feats = model.features(batch)
            t1 = time.perf_counter()
            proposals, _ = model.rpn(feats, model.feature_strides, tuple(batch.shape[-2:]), sizes)
            t2 = time.perf_counter()
            roi_feats = feats if model.fpn is not None else feats[0]
            backbone, propose = t1 - t0, t2 - t1
        else:  # Fast R-CNN: selective search (uncached: its real cost), then the backbone
            proposals = [
                selective_search(im, model.proposal_mode, model.max_proposals, cache=False)
            ]
            t1 = time.perf_counter()
            roi_feats = model.features(batch)
            t2 = time.perf_counter()
            backbone, propose = t2 - t1, t1 - t0
        logits, deltas = heads.head(heads.pool(roi_feats, proposals))
        t3 = time.perf_counter()
        heads.detect(logits, deltas, proposals, sizes)
        t4 = time.perf_counter()
        if i > 0:
            for key, value in zip(parts, (propose, backbone, t3 - t2, t4 - t3)):
                parts[key].append(value)
    return {key: 1000 * statistics.mean(values) for key, values in parts.items()}


def run(args: argparse.Namespace) -> int:
    from visionlab.config import load_config
    from visionlab.data.datasets import load_dataset
    from visionlab.data.loader import build_loader
    from visionlab.engine.checkpoint import atomic_write
    from visionlab.engine.common import make_transform, seed_everything
    from visionlab.models.registry import build_model

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, list(args.overrides))
    steps = 10 if args.quick else (args.steps or cfg.train.max_steps)
    train_ds = load_dataset(cfg.data, cfg.train_split, task="detection")
    train_ds.transforms = make_transform("detection", True, cfg.image_size, cfg.augment)
    val_ds = load_dataset(
        cfg.data,
        cfg.val_split,
        task="detection",
        transforms=make_transform("detection", False, cfg.image_size, {}),
    )
    classes = list(train_ds.classes)
    if steps is None:
        per_epoch = len(train_ds) // cfg.train.batch_size
        steps = cfg.train.epochs * per_epoch
    n_val = 8 if args.quick else (args.val_images or len(val_ds))
    n_time = 4 if args.quick else args.timing_images
    timing_images = [val_ds[i][0] for i in range(n_time)]
    kwargs = {**cfg.model_args, "num_classes": len(classes) + 1}

    results: dict[str, dict[str, float]] = {}
    models: dict[str, nn.Module] = {}
    for name in ("ours", "torchvision"):
        seed_everything(cfg.seed)
        ours = build_model(cfg.model, **kwargs)
        model = ours if name == "ours" else torchvision_peer(ours, cfg.image_size)
        loader = build_loader(
            train_ds, batch_size=cfg.train.batch_size, shuffle=True, seed=cfg.seed, drop_last=True
        )
        print(f"training {name}: {steps} steps", flush=True)
        times = _train(model, cfg, loader, steps)
        metrics = _score(model, val_ds, classes, n_val)
        results[name] = {
            "AP50": metrics["AP50"],
            "AP": metrics["AP"],
            "step_s": statistics.mean(times[min(5, len(times) - 1) :]),
            "infer_ms": _infer_ms(model, timing_images),
        }
        models[name] = model
        print(name, results[name], flush=True)

    fast_steps = 10 if args.quick else (args.fast_steps or steps)
    seed_everything(cfg.seed)
    fast = build_model("fast_rcnn", num_classes=len(classes) + 1, **_fast_args(cfg))
    if not args.quick:  # the region cache for the whole dataset (a progress bar; once)
        fast.prepare_data([train_ds, val_ds], image_size=cfg.image_size)
    loader = build_loader(train_ds, batch_size=2, shuffle=True, seed=cfg.seed, drop_last=True)
    print(f"training fast_rcnn: {fast_steps} steps", flush=True)
    _train(fast, cfg, loader, fast_steps)
    fast_ap = _score(fast, val_ds, classes, n_val)["AP50"]
    splits = {
        "Fast R-CNN": split_times(fast, timing_images),
        "Faster R-CNN": split_times(models["ours"], timing_images),
    }
    text = _markdown(args, cfg, steps, fast_steps, n_val, results, splits, fast_ap)
    out = Path(args.out_dir) / "peers.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda f: f.write(text.encode("utf-8")))
    print(f"wrote {out}")
    return 0


def _fast_args(cfg: Any) -> dict[str, Any]:
    """Fast R-CNN's arguments: the recipe's backbone, the paper's RoI pooling."""
    keep = ("backbone", "backbone_width", "feature_stride", "pretrained_backbone")
    args = {k: v for k, v in cfg.model_args.items() if k in keep}
    box = dict(cfg.model_args.get("box_head") or {})
    box.pop("bg_iou_low", None)
    args["box_head"] = box
    return args


def _markdown(args, cfg, steps, fast_steps, n_val, results, splits, fast_ap) -> str:
    ours, tv = results["ours"], results["torchvision"]
    lines = [
        header("Faster R-CNN: ours vs torchvision, and the test-time split"),
        f"- Threads: {args.threads}; recipe `{args.config}` (model_args "
        f"`{dict(cfg.model_args)}`), image size {cfg.image_size}, batch "
        f"{cfg.train.batch_size}, {steps} steps of AdamW lr {cfg.optim.lr} (warm-up "
        f"{cfg.schedule.warmup_steps}, cosine), augment `{dict(cfg.augment)}`; AP on "
        f"{n_val} scenes val images.",
        "",
        "## Ours vs torchvision.models.detection.FasterRCNN (same backbone init, settings, data)",
        "",
        "| | AP50 | AP | train step (s) | inference (ms/image) |",
        "|---|---:|---:|---:|---:|",
        f"| ours | {ours['AP50']:.4f} | {ours['AP']:.4f} | {ours['step_s']:.3f} | "
        f"{ours['infer_ms']:.1f} |",
        f"| torchvision | {tv['AP50']:.4f} | {tv['AP']:.4f} | {tv['step_s']:.3f} | "
        f"{tv['infer_ms']:.1f} |",
        f"| ours / torchvision | {ours['AP50'] - tv['AP50']:+.4f} (difference) | "
        f"{ours['AP'] - tv['AP']:+.4f} (difference) | {ours['step_s'] / tv['step_s']:.2f} | "
        f"{ours['infer_ms'] / tv['infer_ms']:.2f} |",
        "",
        "Targets: AP50 within 0.02 of torchvision or better; time ratios <= 1.0.",
        "",
        "## Test time per image (batch of one), ms",
        "",
        "| model | proposals | backbone | heads | NMS | total |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, parts in splits.items():
        total = sum(parts.values())
        lines.append(
            f"| {name} | {parts['proposals']:.1f} | {parts['backbone']:.1f} | "
            f"{parts['heads']:.1f} | {parts['NMS']:.1f} | {total:.1f} |"
        )
    lines += [
        "",
        f"Fast R-CNN here: selective search (fast mode, uncached) proposals, RoI pooling, "
        f"trained {fast_steps} steps of 2 images (AP50 {fast_ap:.4f}); its proposals column "
        "is selective search's time, which the RPN replaces. Faster R-CNN's proposals column "
        "is the RPN head, decoding and its NMS; NMS is the final class-wise NMS with decoding.",
        "",
    ]
    return "\n".join(lines)

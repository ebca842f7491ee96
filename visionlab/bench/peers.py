"""Our Faster R-CNN against torchvision's ``FasterRCNN`` on scenes, and where test time goes.

Trains both detectors through the engine's Trainer from the same backbone initialisation,
settings, data and schedule, and reports AP, step time and inference time as ratios measured
in the same run; then splits the test time per image of Fast and Faster R-CNN into
proposals / backbone / heads / NMS. The one setting that differs is the box head's smooth-L1
beta (ours 1, Fast R-CNN's; torchvision 1/9). Writes ``OUT_DIR/peers.md``.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
import timeit
from collections import OrderedDict
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from visionlab.bench.machine import header, row, take_turns, write_markdown
from visionlab.bench.runs import add_overrides
from visionlab.engine.hooks import LoggingHook
from visionlab.engine.trainer import Trainer, evaluate
from visionlab.tasks import get_task

CONFIG = "configs/faster_rcnn_scenes.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_peer_arguments(parser, CONFIG, "Faster R-CNN")
    parser.add_argument(
        "--checkpoints",
        type=lambda text: [int(t) for t in text.split(",") if t.strip()],
        default="100,400,1000",
        help="steps after which inference is timed (those below --steps; --steps is the last)",
    )
    parser.add_argument("--fast-steps", type=int, default=None, help="Fast R-CNN steps")


def add_peer_arguments(parser: argparse.ArgumentParser, config: str, model: str) -> None:
    """The options of a suite that trains ``model`` from the recipe ``config`` against its
    torchvision peer: recipe, steps, threads, images scored and timed, ``--quick``, and
    ``KEY=VALUE`` recipe overrides."""
    parser.add_argument("--config", default=config, help=f"the {model} recipe to mirror")
    parser.add_argument("--steps", type=int, default=None, help="training steps (recipe's)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--timing-images", type=int, default=50, help="val images timed")
    parser.add_argument("--val-images", type=int, default=None, help="val images scored")
    parser.add_argument("--quick", action="store_true", help="smoke test: 10 steps, 8 images")
    add_overrides(parser, "recipe overrides")


class PeerSetup(NamedTuple):
    """What :func:`prepare` reads for a peer suite."""

    cfg: Any
    train: Any
    val: Any
    classes: list[str]
    steps: int
    n_val: int
    timing_images: list[Tensor]


def prepare(args: argparse.Namespace, task: str) -> PeerSetup:
    """Set the thread count; read the recipe (with its overrides), its data for ``task`` (the
    training split augmented), the steps and the val images scored and timed (``--quick``:
    10 steps, 8 images scored, at most 4 timed)."""
    from visionlab.config import load_config
    from visionlab.data.datasets import load_dataset
    from visionlab.engine.common import make_transform

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, list(args.overrides))
    train_ds = load_dataset(cfg.data, cfg.train_split, task=task)
    train_ds.transforms = make_transform(task, True, cfg.image_size, cfg.augment)
    val_tf = make_transform(task, False, cfg.image_size, {})
    val_ds = load_dataset(cfg.data, cfg.val_split, task=task, transforms=val_tf)
    steps = 10 if args.quick else (args.steps or cfg.train.max_steps)
    steps = steps or cfg.train.epochs * (len(train_ds) // cfg.train.batch_size)
    n_val = 8 if args.quick else (args.val_images or len(val_ds))
    n_timed = min(4, args.timing_images) if args.quick else args.timing_images
    timing_images = [val_ds[i][0] for i in range(n_timed)]
    return PeerSetup(cfg, train_ds, val_ds, list(train_ds.classes), steps, n_val, timing_images)


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


def torchvision_peer(ours: nn.Module, size: int, *, masks: bool = False) -> nn.Module:
    """torchvision's FasterRCNN with our model's backbone (a copy) and settings; with
    ``masks``, its MaskRCNN with our mask head's pool size, width and convolution count
    (``MaskRCNNHeads``, ``MaskRCNNPredictor``, ``MultiScaleRoIAlign``)."""
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.rpn import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    rpn, box_head, pooler = ours.proposer.settings, ours.roi_heads["box"], ours.pooler
    box, post = box_head.settings, box_head.detection_settings
    strides = ours.feature_strides
    fpn_channels = ours.fpn.output[0].out_channels if ours.fpn is not None else None
    body = _Body(copy.deepcopy(ours.backbone), strides, fpn_channels)
    names = [str(i) for i in range(len(strides))]
    pool_kwargs = {}
    if len(strides) > 1:  # the same level mapping as ours (FPN eq. 1)
        pool_kwargs = {
            "canonical_scale": int(pooler.canonical_size),
            "canonical_level": int(math.log2(strides[pooler.canonical_level])),
        }
    anchors = ours.proposer.anchor_generator
    mask_kwargs = {}
    if masks:
        from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

        mask = ours.roi_heads["mask"].settings
        mask_kwargs = {
            "mask_roi_pool": MultiScaleRoIAlign(names, mask.pool_size, 2, **pool_kwargs),
            "mask_head": MaskRCNNHeads(body.out_channels, [mask.width] * mask.num_convs, 1),
            "mask_predictor": MaskRCNNPredictor(mask.width, mask.width, box_head.num_classes),
        }
    return (MaskRCNN if masks else FasterRCNN)(
        body,
        num_classes=None,
        min_size=size,
        max_size=size,
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
        rpn_anchor_generator=AnchorGenerator(anchors.sizes, anchors.aspect_ratios),
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
        box_predictor=FastRCNNPredictor(box.fc_width, box_head.num_classes),
        box_score_thresh=post.score_thresh,
        box_nms_thresh=post.nms_thresh,
        box_detections_per_img=post.detections_per_img,
        box_fg_iou_thresh=box.fg_iou,
        box_bg_iou_thresh=box.fg_iou,
        box_batch_size_per_image=box.batch_size_per_image,
        box_positive_fraction=box.positive_fraction,
        **mask_kwargs,
    )


def fit(
    model: nn.Module,
    cfg: Any,
    dataset: Any,
    *,
    batch_size: int,
    points: list[int],
    task: str = "detection",
) -> tuple[float, dict[int, nn.Module]]:
    """Train ``model`` with the engine's Trainer for ``points[-1]`` steps (the recipe's
    optimizer, its schedule over those steps); returns the mean seconds of a step (its batch
    loaded included) and an eval-mode copy of the model after each of ``points`` steps."""
    cfg = copy.deepcopy(cfg)  # the recipe's optimizer and schedule over these steps
    cfg.train.batch_size, cfg.train.max_steps, cfg.train.stop_at_step = batch_size, points[-1], None
    total = points[-1]
    trainer = Trainer.from_recipe(
        cfg, model, get_task(task), dataset, device=torch.device("cpu"),
        hooks=[LoggingHook(None, log_every=total, progress=True)],
    )  # fmt: skip
    seconds, snapshots = 0.0, {}
    for point in points:  # train() returns at stop_at_step; the next call goes on from there
        trainer.stop_at_step = point
        start = time.perf_counter()
        trainer.train()
        seconds += time.perf_counter() - start
        snapshots[point] = copy.deepcopy(model).eval()
    return seconds / total, snapshots


def score(
    model: nn.Module, dataset: Any, classes: list[str], n: int, task: str = "detection"
) -> dict[str, float]:
    """The engine's evaluation of ``model`` (for ``task``: box stats, and with "instance"
    the ``mask_`` stats too) on the first ``n`` images of ``dataset``."""
    adapter = get_task(task)
    loader = DataLoader(Subset(dataset, range(n)), batch_size=16, collate_fn=adapter.collate)
    return evaluate(model, adapter, loader, adapter.evaluator(classes))


@torch.no_grad()
def infer_ms(models: dict[str, nn.Module], images: list[Tensor], repeats: int = 3) -> dict:
    """Mean ms per image (batch of one, eval mode) of each model: each image's fastest of
    ``repeats`` runs, the models taking turns image by image (a load on the machine then
    falls on both)."""
    for model in models.values():
        model.eval()([images[0]])  # warm-up
    times = take_turns(models, [[im] for im in images], repeats)
    return {name: statistics.mean(values) for name, values in times.items()}


@torch.no_grad()
def split_times(model: nn.Module, images: list[Tensor], peer: Any = None) -> dict[str, float]:
    """Mean ms per image (batch of one) of proposals / backbone / heads / NMS (decoding and
    post-processing, each image's fastest of 3 runs); with torchvision's ``peer``, also its
    ``postprocess_detections`` on the same head outputs ("torchvision NMS")."""
    from visionlab.models.batching import batch_images
    from visionlab.models.heads import RoIBatch, decode_detections
    from visionlab.ops import selective_search

    model.eval()
    parts = {"proposals": [], "backbone": [], "heads": [], "NMS": [], "torchvision NMS": []}
    proposer, box = model.proposer, model.roi_heads["box"]
    pool_args = (box.settings.pool_size, box.settings.pooler)
    for im in [images[0], *images]:  # the first pass warms up (dropped)
        t0 = time.perf_counter()
        batch, sizes = batch_images([im], model.size_divisible)
        if hasattr(proposer, "anchor_generator"):  # the RPN: backbone first, then the RPN
            feats = model.features(batch)
            t1 = time.perf_counter()
            proposals, _ = proposer([im], feats, tuple(batch.shape[-2:]), sizes)
            t2 = time.perf_counter()
            backbone, propose = t1 - t0, t2 - t1
        else:  # selective search (uncached: its real cost), then the backbone
            proposals = [
                selective_search(im, proposer.mode, proposer.max_proposals, cache=False,
                                 search_size=proposer.search_size)
            ]  # fmt: skip
            t1 = time.perf_counter()
            feats = model.features(batch)
            t2 = time.perf_counter()
            backbone, propose = t2 - t1, t1 - t0
        pooled = RoIBatch(feats, proposals, sizes, model.pooler).pool(proposals, *pool_args)
        logits, deltas = box.head(pooled)
        heads = time.perf_counter() - t2
        posts = [partial(decode_detections, logits, deltas, proposals, sizes,
                         box_coder=box.box_coder, settings=box.detection_settings)]  # fmt: skip
        if peer is not None:
            posts.append(partial(peer.roi_heads.postprocess_detections, logits, deltas,
                                 proposals, sizes))  # fmt: skip
        posts = [min(timeit.repeat(post, number=1, repeat=3)) for post in posts]
        for key, value in zip(parts, (propose, backbone, heads, *posts)):
            parts[key].append(value)
    return {key: 1000 * statistics.mean(values[1:]) for key, values in parts.items() if values}


def run(args: argparse.Namespace) -> int:
    from visionlab.engine.common import seed_everything
    from visionlab.models.registry import build_model

    cfg, train_ds, val_ds, classes, steps, n_val, timing_images = prepare(args, "detection")
    asked = [5] if args.quick else args.checkpoints  # then --steps, the last point
    points = [*sorted({p for p in asked if 0 < p < steps}), steps]
    kwargs = {**cfg.model_args, "num_classes": len(classes) + 1}

    results: dict[str, dict[str, Any]] = {}
    for name in ("ours", "torchvision"):
        seed_everything(cfg.seed)
        ours = build_model(cfg.model, **kwargs)
        model = ours if name == "ours" else torchvision_peer(ours, cfg.image_size)
        print(f"training {name}: {steps} steps, timed at {points}", flush=True)
        step_s, snapshots = fit(model, cfg, train_ds, batch_size=cfg.train.batch_size,
                                points=points)  # fmt: skip
        metrics = score(model, val_ds, classes, n_val)
        results[name] = {"AP50": metrics["AP50"], "AP": metrics["AP"], "step_s": step_s,
                         "snapshots": snapshots}  # fmt: skip
    infer = {}
    for p in points:
        ours, tv = results["ours"]["snapshots"][p], results["torchvision"]["snapshots"][p]
        infer[p] = {**infer_ms({"ours": ours, "torchvision": tv}, timing_images),
                    **split_times(ours, timing_images, peer=tv)}  # fmt: skip
        print(f"after {p} steps, ms/image:", infer[p], flush=True)

    fast_steps = 10 if args.quick else (args.fast_steps or steps)
    seed_everything(cfg.seed)
    fast = build_model("fast_rcnn", num_classes=len(classes) + 1, **_fast_args(cfg))
    print(f"training fast_rcnn: {fast_steps} steps", flush=True)
    fit(fast, cfg, train_ds, batch_size=2, points=[fast_steps])  # regions searched as needed
    fast_ap = score(fast, val_ds, classes, n_val)["AP50"]
    splits = {
        "Fast R-CNN": split_times(fast, timing_images),
        "Faster R-CNN": infer[steps],
    }
    text = _markdown(args, cfg, steps, fast_steps, n_val, results, infer, splits, fast_ap)
    write_markdown(args.out_dir, "peers.md", text)
    return 0


def _fast_args(cfg: Any) -> dict[str, Any]:
    """Fast R-CNN's arguments: the recipe's backbone, the paper's RoI pooling."""
    keep = ("backbone", "backbone_width", "feature_stride", "pretrained_backbone")
    args = {k: v for k, v in cfg.model_args.items() if k in keep}
    box = dict(cfg.model_args.get("box_head") or {})
    box.pop("bg_iou_low", None)
    args["box_head"] = box
    return args


def _markdown(args, cfg, steps, fast_steps, n_val, results, infer, splits, fast_ap) -> str:
    ours, tv = results["ours"], results["torchvision"]
    lines = [
        header("Faster R-CNN: ours vs torchvision, and the test-time split"),
        f"- Threads: {args.threads}; recipe `{args.config}` (model_args "
        f"`{dict(cfg.model_args)}`), image size {cfg.image_size}, batch "
        f"{cfg.train.batch_size}, {steps} steps of AdamW lr {cfg.optim.lr} (warm-up "
        f"{cfg.schedule.warmup_steps}, cosine), augment `{dict(cfg.augment)}`, both trained "
        f"by the engine's Trainer; AP on {n_val} scenes val images.",
        "",
        "## Ours vs torchvision.models.detection.FasterRCNN (same backbone init, settings, data)",
        "",
        "| | AP50 | AP | train step (s) |",
        "|---|---:|---:|---:|",
        f"| ours | {ours['AP50']:.4f} | {ours['AP']:.4f} | {ours['step_s']:.3f} |",
        f"| torchvision | {tv['AP50']:.4f} | {tv['AP']:.4f} | {tv['step_s']:.3f} |",
        f"| ours / torchvision | {ours['AP50'] - tv['AP50']:+.4f} (difference) | "
        f"{ours['AP'] - tv['AP']:+.4f} (difference) | {ours['step_s'] / tv['step_s']:.2f} |",
        "",
        "Inference at points of the same trainings (ms/image over the first "
        f"{4 if args.quick else args.timing_images} val images, batch of one, no grad, each "
        "image's fastest of 3 runs, the two models taking turns). Post-processing: decoding, "
        "threshold, NMS and top-k of our box head's outputs, by ours (`decode_detections`) "
        "and by torchvision's `RoIHeads.postprocess_detections` on the same outputs.",
        "",
        "| steps | ours | torchvision | ours / torchvision | post-processing ours | "
        "torchvision | ours / torchvision |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {point} | {ms['ours']:.1f} | {ms['torchvision']:.1f} | "
            f"{ms['ours'] / ms['torchvision']:.2f} | {ms['NMS']:.2f} | "
            f"{ms['torchvision NMS']:.2f} | {ms['NMS'] / ms['torchvision NMS']:.2f} |"
            for point, ms in infer.items()
        ),
        "",
        "Targets: AP50 within 0.02 of torchvision or better; time ratios <= 1.0.",
        "",
        "## Test time per image (batch of one), ms",
        "",
        "| model | proposals | backbone | heads | NMS | total |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, parts in splits.items():
        ms = [parts[k] for k in ("proposals", "backbone", "heads", "NMS")]
        lines.append(row(name, *(f"{v:.1f}" for v in (*ms, sum(ms)))))
    lines += [
        "",
        "Fast R-CNN here: selective search (fast mode, uncached) proposals, RoI pooling, "
        f"trained {fast_steps} steps of 2 images (AP50 {fast_ap:.4f}); its proposals column "
        "is selective search's time, which the RPN replaces. Faster R-CNN's proposals column "
        "is the RPN head, decoding and its NMS; NMS is the final class-wise NMS with decoding.",
        "",
    ]
    return "\n".join(lines)

"""FCN-32s vs 16s vs 8s and deconv vs bilinear on scenes; our FCN-ResNet50 vs torchvision's.

Trains each variant and upsampling from one recipe (only ``model`` and
``model_args.upsample`` change), scores it, sets it against the resolution ceilings of its
stride and times our ResNet50 FCN against torchvision's ``fcn_resnet50``. Writes
``OUT_DIR/fcn.md`` and its pictures.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionlab.bench.machine import (
    comma_list,
    header,
    load_average,
    load_line,
    row,
    take_turns,
    write_markdown,
)
from visionlab.bench.runs import (
    add_training_arguments,
    recorded_metrics,
    recorded_training,
    schedule_overrides,
    timed_train,
)
from visionlab.bench.sizes import SIZE_BUCKETS, bucket_names, cell, shares, size_bucket, size_head
from visionlab.constants import IGNORE_INDEX
from visionlab.errors import VisionLabError

DEFAULT_CONFIG = "configs/fcn8s_scenes.yaml"
TARGET_MIOU = 0.85  # FCN-8s, tiny backbone, scenes val, within 5 minutes on 2 cores
TARGET_SECONDS = 300
FIT_STEPS = 100  # Adam steps of fitted_ceiling (400: README "Models and measured results")


NOTES = [
    "Notes on reading these numbers:",
    "",
    "- The skip layers start at zero (Sec. 4.3), so FCN-16s/8s begin as FCN-32s and only "
    "pull ahead once the skips have learned; on a short schedule the gap is small and can "
    "invert. The paper trains each net to convergence, FCN-16s/8s starting from the "
    "coarser net (`transfer.pretrained=` a coarser run does that here).",
    "- With `deconv`, FCN-32s's final 64x64 learned kernel (C x C x 64 x 64 weights) can "
    "paint per-class shapes into each 32 x 32 cell, more than an interpolation; the "
    "reference nets fix that final layer to bilinear, which is what the `bilinear` rows "
    "show.",
    "- The scenes objects are small (median area about 180 px, so about 13 x 13 px in a "
    "128 x 128 image: one or two cells at stride 8). The boundary columns above say how "
    "much of the gap to 1.0 sits on boundaries, the ceilings below how much of it a score "
    "map at each stride must leave. Train mIoU close to val mIoU means the network "
    "underfits: more steps or more capacity are what raise both.",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="the shared training recipe")
    parser.add_argument("--data", default=None, help="dataset (default: the recipe's, scenes)")
    parser.add_argument("--variants", default="fcn32s,fcn16s,fcn8s", help="models to train")
    parser.add_argument("--upsample", default="deconv,bilinear", help="upsampling modes")
    add_training_arguments(parser)
    parser.add_argument("--timing-size", type=int, default=224, help="ResNet50 input side (px)")
    parser.add_argument("--repeats", type=int, default=10, help="timed forward passes per model")
    parser.add_argument("--samples", type=int, default=4, help="images in fcn_samples.png")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="use RUNS/<variant>-<upsample>/checkpoints/last.pt and its eval.json when present",
    )
    parser.add_argument("--skip-train", action="store_true", help="only the ResNet50 timing")
    parser.add_argument("--quick", action="store_true", help="smoke test: 20 steps, 2 repeats")


@torch.no_grad()
def _ms_per_image(model: nn.Module, size: int, repeats: int) -> float:
    """Median ms of ``model`` (eval mode) on one random ``size`` x ``size`` image."""
    x = torch.rand(1, 3, size, size)
    model.eval()(x)  # warm-up
    return statistics.median(take_turns({"model": model}, [x] * repeats)["model"])


def _evaluators(dataset: Any, keys: Any) -> dict[Any, Any]:
    """One segmentation evaluator per key, over background and ``dataset``'s classes."""
    from visionlab.eval.segmentation import SegmentationEvaluator

    names = ["background", *dataset.classes]
    return {k: SegmentationEvaluator(len(names), names) for k in keys}


def _mious(evaluators: dict[Any, Any]) -> dict[Any, float]:
    return {k: float(ev.compute()["mIoU"]) for k, ev in evaluators.items()}


@torch.no_grad()
def _diagnostic_mious(model: nn.Module, dataset: Any, count: int) -> dict[str, float]:
    """mIoU over the first ``count`` images, plain (``all``) and with the ground-truth pixels
    within 1 and 2 px of a label change ignored (``band1``, ``band2``): how much of the
    error sits on object boundaries."""
    evaluators = _evaluators(dataset, ("all", "band1", "band2"))
    model.eval()
    for index in range(min(count, len(dataset))):
        image, target = dataset[index]
        semantic = target["semantic"]
        pred = model(image[None])[0].argmax(0)
        evaluators["all"].update(pred, semantic)
        labels = semantic[None, None].float()
        for width in (1, 2):
            k = 2 * width + 1
            band = F.max_pool2d(labels, k, 1, width) != -F.max_pool2d(-labels, k, 1, width)
            evaluators[f"band{width}"].update(pred, semantic.masked_fill(band[0, 0], IGNORE_INDEX))
    return _mious(evaluators)


def _one_hot(labels: Tensor, classes: int) -> Tensor:
    """``[N, H, W]`` labels -> ``[N, C, H, W]`` float one-hot; ignored pixels (255) all zero."""
    valid = labels != IGNORE_INDEX
    onehot = F.one_hot(labels.masked_fill(~valid, 0), classes).permute(0, 3, 1, 2)
    return onehot.float() * valid[:, None]


def resolution_ceiling(
    dataset: Any, strides: tuple[int, ...] = (4, 8, 16, 32), count: int = 500
) -> dict[int, float]:
    """mIoU of a predictor that knows the ground truth but only at stride ``s``.

    Each image's one-hot label map (ignored pixels count for no class) is average-pooled over
    ``s x s`` cells, upsampled back bilinearly, and its argmax scored: a yardstick, not a
    bound (larger logits move an edge inside a cell: :func:`fitted_ceiling`).
    """
    evaluators = _evaluators(dataset, strides)
    for index in range(min(count, len(dataset))):
        semantic = dataset[index][1]["semantic"]
        h, w = semantic.shape
        onehot = _one_hot(semantic[None], len(dataset.classes) + 1)  # [1, C, H, W]
        for stride, evaluator in evaluators.items():
            padded = F.pad(onehot, (0, -w % stride, 0, -h % stride))
            cells = F.avg_pool2d(padded, stride)
            up = F.interpolate(cells, scale_factor=stride, mode="bilinear", align_corners=False)
            evaluator.update(up[0, :, :h, :w].argmax(0), semantic)
    return _mious(evaluators)


def fitted_ceiling(
    dataset: Any,
    strides: tuple[int, ...] = (4, 8, 16, 32),
    count: int = 100,
    steps: int = FIT_STEPS,
    lr: float = 0.3,
) -> dict[int, float]:
    """mIoU of the best score map at stride ``s`` that a bilinear upsampling can turn into
    each image's ground truth: a ceiling for a network scoring at that stride.

    For each of the first ``count`` images, a ``C x ceil(H/s) x ceil(W/s)`` logit map starts
    from the log of :func:`resolution_ceiling`'s pooled labels and is fitted by Adam through
    the bilinear upsampling and a pixel-wise cross-entropy (255 ignored), as an FCN's scores
    are trained; the argmax of the upsampled fit is scored. Being a finite fit, it is a lower
    estimate of the true ceiling.

    Returns:
        ``{stride: mIoU}`` over the images together.
    """
    classes = len(dataset.classes) + 1
    groups: dict[tuple[int, int], list[Tensor]] = {}
    for index in range(min(count, len(dataset))):
        semantic = dataset[index][1]["semantic"]
        groups.setdefault(tuple(semantic.shape), []).append(semantic)
    evaluators = _evaluators(dataset, strides)
    with torch.enable_grad():
        for (h, w), maps in groups.items():
            for start in range(0, len(maps), 50):
                labels = torch.stack(maps[start : start + 50])  # [N, H, W]
                for stride in strides:
                    pad = (0, -w % stride, 0, -h % stride)
                    padded = F.pad(labels, pad, value=IGNORE_INDEX)
                    pooled = F.avg_pool2d(_one_hot(padded, classes), stride)
                    logits = torch.log(pooled + 0.01).requires_grad_()
                    optimizer = torch.optim.Adam([logits], lr=lr)
                    for step in range(steps + 1):  # the last pass only scores the fit
                        up = F.interpolate(
                            logits, scale_factor=stride, mode="bilinear", align_corners=False
                        )
                        if step == steps:
                            evaluators[stride].update(up[..., :h, :w].argmax(1), labels)
                            break
                        loss = F.cross_entropy(up, padded, ignore_index=IGNORE_INDEX)
                        optimizer.zero_grad()
                        loss.backward()
                        optimizer.step()
    return _mious(evaluators)


def _ceiling_section(
    data: str, size: int | None, count: int, fit_count: int, rows: list[dict[str, Any]]
) -> list[str]:
    from visionlab.data.datasets import load_dataset
    from visionlab.data.transforms import build_transforms

    val = load_dataset(data, "val", task="segmentation")
    resize = bool(size) and tuple(val[0][0].shape[1:]) != (size, size)
    if resize:
        val.transforms = build_transforms("segmentation", False, size)
    pooled = resolution_ceiling(val, count=count)
    fitted = fitted_ceiling(val, count=fit_count)
    where = f"resized to {size} px (the recipe's `image_size`)" if resize else "at their own size"
    lines = [
        "## How fine is stride s? Ceilings of a score map",
        "",
        f"Validation images {where}. *Pooled*: the ground truth itself average-pooled to "
        f"stride s and upsampled bilinearly (first {min(count, len(val))} images): the "
        "scores a network would have if it knew each cell's class shares. *Fitted*: the "
        f"best score map at stride s, fitted per image (first {min(fit_count, len(val))} "
        f"images; Adam, {FIT_STEPS} steps, pixel-wise cross-entropy through the bilinear "
        "upsampling, `visionlab.bench.fcn.fitted_ceiling`): large scores place a boundary anywhere "
        "inside a cell, so this, not the pooled row, is what a network scoring at stride s "
        "could reach. FCN-8s scores at stride 8, FCN-16s at 16, FCN-32s at 32.",
        "",
        "| score map | stride 4 | stride 8 | stride 16 | stride 32 |",
        "|:------|-----:|-----:|-----:|-----:|",
        row("pooled", *(f"{pooled[s]:.3f}" for s in sorted(pooled))),
        row("fitted", *(f"{fitted[s]:.3f}" for s in sorted(fitted))),
        "",
    ]
    from visionlab.models.fcn import VARIANT_STRIDES as stride_of

    reached = [
        f"{r['variant']} {r['upsample']} {r['mIoU']:.3f} of {fitted[stride_of[r['variant']]]:.3f}"
        for r in rows
        if r["variant"] in stride_of and stride_of[r["variant"]] in fitted
    ]
    if reached:
        lines += [
            "Reached by the runs above, against the fitted ceiling of their stride: "
            + "; ".join(reached)
            + ". The gap is what the networks did not learn in the schedule, not what their "
            "output stride allows.",
            "",
        ]
    return lines


@torch.no_grad()
def naming_by_size(
    segmenter: nn.Module | None,
    classifier: nn.Module | None,
    dataset: Any,
    count: int,
    crop_size: int = 64,
) -> dict[str, list[list[int]]]:
    """How often each object is named right, by its size, by a segmenter and a classifier.

    ``dataset`` is an instance-level view (``masks``, ``boxes`` xyxy, ``labels`` 1..C). An
    object counts as named by the segmenter when the most frequent foreground label its
    pixels get is its class (``[objects, named, pixels, pixels labelled right]``); by the
    classifier when the square crop around its box (as the scenes classification view crops,
    resized to ``crop_size`` px) is classified as its class (``[objects, named]``). Objects
    are bucketed by their box's longer side (:data:`SIZE_BUCKETS`) in the stored image's
    pixels (a target's ``orig_size`` undoes a resize).
    """
    import numpy as np

    from visionlab.data.scenes_io import crop_square

    out: dict[str, list[list[int]]] = {}
    if segmenter is not None:
        segmenter.eval()
        out["segmenter"] = [[0, 0, 0, 0] for _ in SIZE_BUCKETS]
    if classifier is not None:
        classifier.eval()
        out["classifier"] = [[0, 0] for _ in SIZE_BUCKETS]
        index_of = {name: i for i, name in enumerate(classifier.classes)}
    for index in range(min(count, len(dataset))):
        image, target = dataset[index]
        boxes, labels = target["boxes"].tolist(), target["labels"].tolist()
        if not boxes:
            continue
        scale = 1.0  # bucket by size in the stored image's pixels, whatever the resize
        if "orig_size" in target:
            scale = float(target["orig_size"][1]) / float(image.shape[-1])
        if segmenter is not None:
            pred = segmenter(image[None])[0].argmax(0)
            for mask, box, label in zip(target["masks"].bool(), boxes, labels):
                row = out["segmenter"][size_bucket(box, scale)]
                inside = pred[mask]
                found = inside[inside > 0]
                row[0] += 1
                row[1] += int(found.numel() > 0 and int(found.bincount().argmax()) == label)
                row[2] += int(inside.numel())
                row[3] += int((inside == label).sum())
        if classifier is not None:
            pixels = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
            crops, wanted = [], []
            for (x1, y1, x2, y2), label in zip(boxes, labels):
                crop = crop_square(pixels, [x1, y1, x2 - x1, y2 - y1], crop_size)
                crops.append(torch.from_numpy(np.array(crop)).permute(2, 0, 1))
                wanted.append(index_of.get(dataset.classes[label - 1], -1))
            guess = classifier(torch.stack(crops).float() / 255).argmax(1).tolist()
            for box, want, got in zip(boxes, wanted, guess):
                row = out["classifier"][size_bucket(box, scale)]
                row[0] += 1
                row[1] += int(want == got)
    return out


def _naming_section(
    rows: list[dict[str, Any]], classifier_path: str | None, out_png: Path
) -> list[str]:
    """Objects named right by size: the FCN-8s runs and the classifier their backbone
    started from, on the same validation objects (a table, and bars in ``out_png``)."""
    from visionlab.data.datasets import load_dataset
    from visionlab.engine.api import load
    from visionlab.viz import plot_grouped_bars

    fcn8s = [r for r in rows if r["variant"] == "fcn8s"]
    if not fcn8s:
        return []
    try:
        dataset = load_dataset(fcn8s[0]["data"], "val", task="instance")
    except VisionLabError:
        return []  # no instance masks (e.g. VOC SegmentationClass): nothing to bucket
    count = fcn8s[0]["diag_images"]
    classifier = None
    if classifier_path and Path(classifier_path).is_file():
        classifier = load(classifier_path)
        if classifier.task != "classification":
            classifier = None
    lines = [
        "## Which objects are named wrong? By size",
        "",
        f"Every object of the first {count} validation images, bucketed by its box's longer "
        "side. FCN: the share of objects whose most frequent foreground label is their "
        "class (and, after the slash, the share of their pixels labelled with it).",
    ]
    if classifier is not None:
        lines[-1] += (
            f" Classifier (`{classifier_path}`, the checkpoint the recipe's backbone starts "
            "from): the same objects cropped as the scenes classification view crops them "
            "(1.25 x the box, enlarged to 64 px)."
        )
    lines += ["", *size_head("model")]
    counts = None
    bars: dict[str, list[float]] = {}
    for i, r in enumerate(fcn8s):
        stats = naming_by_size(r["model"], classifier if i == 0 else None, dataset, count)
        seg = stats["segmenter"]
        counts = counts or [b[0] for b in seg]
        named = shares(seg)
        pixels = shares([(b[2], b[3]) for b in seg])
        cells = [f"{cell(n)} / {cell(p)}" if b[0] else "-" for n, p, b in zip(named, pixels, seg)]
        lines.append(row(f"fcn8s {r['upsample']}", *cells))
        bars[f"fcn8s {r['upsample']}"] = named
        if "classifier" in stats:
            by_classifier = shares(stats["classifier"])
            lines.append(row("classifier, enlarged crops", *map(cell, by_classifier)))
            bars["classifier, enlarged crops"] = by_classifier
    if counts is not None:
        lines.append(row("objects", *counts))
    plot_grouped_bars(bucket_names(), bars, out_png, ylabel="objects named right (%)",
                      title="FCN-8s vs the classifier, by object size")  # fmt: skip
    lines += [
        "",
        "Where the classifier names an object from its enlarged crop and the FCN does not, the "
        "pixels held the answer and the FCN's maps were too coarse for it: a 12 px object "
        "covers about 1.5 x 1.5 cells of the stride-8 map. Enlarging the input is the lever "
        "that acts on this (it costs about 3x a step at 2x the side). "
        f"`{out_png.name}`: the same shares as bars.",
    ]
    return [*lines, ""]


def _train_variants(args: argparse.Namespace, runs: Path) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    from visionlab.data.datasets import load_dataset
    from visionlab.data.transforms import build_transforms
    from visionlab.engine.api import load

    variants = comma_list(args.variants, "--variants", choices=("fcn32s", "fcn16s", "fcn8s"))
    modes = comma_list(args.upsample, "--upsample", choices=("deconv", "bilinear"))
    if not variants or not modes:
        raise VisionLabError("--variants and --upsample need at least one item each")
    rows = []
    jobs = [(v, m) for m in modes for v in variants]
    for variant, mode in tqdm(jobs, desc="bench fcn", unit="run"):
        run_dir = runs / f"{variant}-{mode}"
        overrides = [f"model={variant}", f"model_args.upsample={mode}", f"out={run_dir}"]
        overrides += ["train.progress=false", *schedule_overrides(args)]
        if args.data:
            overrides.append(f"data={args.data}")
        last = run_dir / "checkpoints" / "last.pt"
        metrics = recorded_metrics(run_dir) if args.reuse and last.is_file() else None
        if metrics is not None:  # a finished run: its recorded metrics and training time
            seconds, steps = recorded_training(run_dir)
        else:
            result, seconds = timed_train(args.config, overrides)
            metrics, steps = result.metrics or {}, result.step
        model = load(last)
        size = model.image_size or 128
        data = args.data or (model.meta.get("config") or {}).get("data", "scenes")
        transform = build_transforms("segmentation", False, model.image_size)
        n = 20 if args.quick else 500  # images of the diagnostics
        val, train_split = (
            _diagnostic_mious(
                model, load_dataset(data, split, task=model.task, transforms=transform), n
            )
            for split in ("val", "train")
        )
        rows.append(
            {
                "variant": variant,
                "upsample": mode,
                "model": model,
                "data": data,
                "mIoU": float(metrics.get("mIoU", float("nan"))),
                "pixel_acc": float(metrics.get("pixel_acc", float("nan"))),
                "per_class": metrics.get("per_class", {}),
                "band1": val["band1"],
                "band2": val["band2"],
                "train_mIoU": train_split["all"],
                "diag_images": n,
                "seconds": seconds,
                "steps": steps,
                "ms": _ms_per_image(model, size, args.repeats),
                "size": size,
                "params": sum(p.numel() for p in model.parameters()),
            }
        )
    return rows


def _resnet50_timing(args: argparse.Namespace) -> list[tuple[str, float, float, int]]:
    """(name, ms/image, ratio to torchvision, parameters), repetitions interleaved."""
    from torchvision.models.segmentation import fcn_resnet50

    from visionlab.models.registry import build_model

    torch.manual_seed(0)
    theirs = fcn_resnet50(weights=None, weights_backbone=None, num_classes=21).eval()
    models = {
        "torchvision fcn_resnet50 (dilated, stride 8)": lambda x: theirs(x)["out"],
        **{
            f"ours {v}, resnet50 (stride 32 + skips)": build_model(
                v, num_classes=21, backbone="resnet50"
            ).eval()
            for v in ("fcn32s", "fcn8s")
        },
    }
    size = args.timing_size
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        for fn in models.values():
            assert fn(x).shape[-2:] == (size, size)  # warm-up, and same output size
        times = take_turns(models, [x] * args.repeats)
    base = statistics.median(next(iter(times.values())))
    rows = []
    for name, fn in models.items():
        module = theirs if not isinstance(fn, nn.Module) else fn
        ms = statistics.median(times[name])
        rows.append((name, ms, ms / base, sum(p.numel() for p in module.parameters())))
    return rows


def _samples_picture(rows: list[dict[str, Any]], path: Path, count: int) -> None:
    """Rows: a validation image, its ground truth, then each variant's prediction."""
    from visionlab.data.datasets import load_dataset
    from visionlab.engine.api import predict
    from visionlab.viz import draw_semantic, image_grid, to_pil, upscale

    dataset = load_dataset(rows[0]["data"], "val", task="segmentation")
    tiles, titles = [], []
    loaded = [(f"{r['variant']} {r['upsample']}", r["model"]) for r in rows]
    for index in range(min(count, len(dataset))):
        image, target = dataset[index]
        tiles += [upscale(to_pil(image), 192)[0]]
        tiles += [draw_semantic(image, target["semantic"], dataset.classes, min_size=192)]
        titles += ["image", "ground truth"]
        for name, model in loaded:
            pred = predict(model, [image], device="cpu")[0]["semantic"]
            tiles.append(draw_semantic(image, pred, dataset.classes, min_size=192))
            titles.append(name)
    image_grid(tiles, cols=2 + len(loaded), titles=titles).save(path)


def _ordering_text(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for mode in dict.fromkeys(r["upsample"] for r in rows):
        by = {r["variant"]: r["mIoU"] for r in rows if r["upsample"] == mode}
        if not all(v in by for v in ("fcn32s", "fcn16s", "fcn8s")):
            continue
        holds = by["fcn8s"] >= by["fcn16s"] >= by["fcn32s"]
        lines.append(
            f"- {mode}: 8s {by['fcn8s']:.3f}, 16s {by['fcn16s']:.3f}, 32s {by['fcn32s']:.3f}: "
            + ("the paper's ordering 8s >= 16s >= 32s holds." if holds else "**not** in the "
               "paper's order 8s >= 16s >= 32s (see the notes below).")
        )  # fmt: skip
    return lines


def run(args: argparse.Namespace) -> int:
    from visionlab.config import load_config

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.threads < 1 or args.repeats < 1 or args.samples < 0:
        raise VisionLabError("--threads and --repeats must be >= 1, --samples >= 0")
    if args.quick:  # smoke-test sizes
        args.max_steps, args.repeats, args.timing_size = 20, 2, 64
    torch.set_num_threads(args.threads)
    load_before = load_average()
    lines = [header("FCN-32s / 16s / 8s (Long, Shelhamer and Darrell, CVPR 2015)"), ""]
    if not args.skip_train:
        recipe = load_config(args.config)
        with tempfile.TemporaryDirectory(prefix="visionlab-bench-fcn-") as tmp:
            runs = Path(args.runs_dir) if args.runs_dir else Path(tmp)
            rows = _train_variants(args, runs)
            lines += _variant_section(args, rows)
            backbone = (recipe.model_args or {}).get("pretrained_backbone")
            lines += _naming_section(rows, backbone, out_dir / "fcn_by_size.png")
            if args.samples and rows:
                _samples_picture(rows, out_dir / "fcn_samples.png", args.samples)
                lines += [
                    "`fcn_samples.png`: validation images, ground truth, then each run's "
                    "prediction.",
                    "",
                ]
        counts = (20, 5) if args.quick else (500, 100)
        lines += _ceiling_section(args.data or recipe.data, recipe.image_size, *counts, rows)
    timing = _resnet50_timing(args)
    size = args.timing_size
    lines += [
        "## ResNet50 backbone: our FCN vs torchvision `fcn_resnet50`",
        "",
        f"One {size} x {size} image, batch 1, eval mode, `torch.no_grad()`, 21 classes, "
        f"random weights (`weights=None, weights_backbone=None`), median of "
        f"{args.repeats} interleaved runs, {args.threads} threads.",
        "",
        "| model | ms/image | ratio to torchvision | parameters |",
        "|:------|---------:|---------------------:|-----------:|",
    ]
    lines += [f"| {n} | {ms:.1f} | {r:.2f} | {p / 1e6:.1f}M |" for n, ms, r, p in timing]
    lines += [
        "",
        "torchvision's model is not the paper's FCN: it replaces ResNet50's last two strides "
        "by dilation (output stride 8, so layer3 and layer4 run at 4x and 16x the positions) "
        "and scores with a 3x3 conv head, upsampling once bilinearly. Ours keeps the "
        "classifier's stride 32 and recovers resolution with the paper's skips, which is "
        "where the speed difference comes from; it is the architecture, not an "
        "implementation trick.",
        "",
        load_line(load_before, load_average()),
        "",
    ]
    write_markdown(out_dir, "fcn.md", lines)
    return 0


def _variant_section(args: argparse.Namespace, rows: list[dict[str, Any]]) -> list[str]:
    first = rows[0]
    lines = [
        "## FCN-32s / 16s / 8s, deconv / bilinear upsampling, tiny backbone",
        "",
        f"Recipe `{args.config}` for every run (only `model` and `model_args.upsample` "
        f"change; {first['steps']} optimizer steps each), evaluated on the validation split. "
        f"ms/image: one {first['size']} x {first['size']} image, eval mode, no grad, median "
        f"of {args.repeats}, {args.threads} threads."
        + (
            " train s: the whole `visionlab train` call; for runs reused (`--reuse`), "
            "the training time their `eval.json` recorded."
            if args.reuse
            else " train s: the whole `visionlab train` call."
        ),
        "",
        "Diagnostics: mIoU with ground-truth pixels within 1 or 2 px of a label change "
        f"ignored (the share of the error on boundaries; first {first['diag_images']} val "
        f"images), and mIoU on the first {first['diag_images']} training images (close to "
        "val: underfitting; far above: overfitting).",
        "",
        "| model | upsample | val mIoU | pixel acc | ignoring 1 px / 2 px of boundary "
        "| train mIoU | train s | ms/image | parameters |",
        "|:------|:---------|-----:|-----:|-----:|-----:|-----:|-----:|-----:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['upsample']} | {r['mIoU']:.3f} | {r['pixel_acc']:.3f} | "
            f"{r['band1']:.3f} / {r['band2']:.3f} | {r['train_mIoU']:.3f} | "
            f"{cell(r['seconds'], 0)} | {r['ms']:.1f} | {r['params'] / 1e6:.2f}M |"
        )
    classes = list(first["per_class"])
    if classes:
        lines += ["", "Per-class IoU:", ""]
        lines += [row("model", "upsample", *classes), "|:--|:--|" + "--:|" * len(classes)]
        for r in rows:
            values = (f"{r['per_class'].get(c, float('nan')):.3f}" for c in classes)
            lines.append(row(r["variant"], r["upsample"], *values))
    lines += ["", *_ordering_text(rows), "", *NOTES, ""]
    best8 = [r for r in rows if r["variant"] == "fcn8s"]
    for r in best8:
        met = r["mIoU"] >= TARGET_MIOU and r["seconds"] <= TARGET_SECONDS
        lines.append(
            f"Target (FCN-8s, tiny backbone, mIoU >= {TARGET_MIOU} within "
            f"{TARGET_SECONDS // 60} minutes on 2 cores), {r['upsample']}: "
            + ("met" if met else "**not met**")
            + f" (mIoU {r['mIoU']:.3f} in {cell(r['seconds'], 0)} s)."
        )
    return [*lines, ""]

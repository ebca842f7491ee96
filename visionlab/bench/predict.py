"""Prediction speed on the CPU: every model family as eager PyTorch, as its ONNX export on
onnxruntime and as its ``torch.export`` program (``.pt2``), measured in one run, with the
achieved GFLOP/s against this machine's matrix-multiply rate. Writes ``OUT_DIR/predict.md``
and ``OUT_DIR/predict.png``.

The file is a list of sections (:data:`SECTIONS`); each measures on its own and returns its
Markdown lines, so adding one (the web app's load test) is a function and one entry there.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from visionlab.bench import app_load
from visionlab.bench.machine import (
    comma_list,
    header,
    load_average,
    load_line,
    row,
    take_turns,
    write_markdown,
)
from visionlab.errors import VisionLabError

# family -> (recipe, batch sizes, images a round); the two-stage exports take one image a
# call, and their rounds are shorter (Mask R-CNN pastes masks for every detection)
FAMILIES: dict[str, tuple[str, tuple[int, ...], int]] = {
    "classifier": ("configs/classify_scenes.yaml", (1, 32), 32),
    "FCN-8s": ("configs/fcn8s_scenes.yaml", (1, 8), 32),
    "YOLO v1": ("configs/yolo_scenes.yaml", (1, 8), 32),
    "Faster R-CNN": ("configs/faster_rcnn_scenes.yaml", (1,), 16),
    "Mask R-CNN": ("configs/mask_rcnn_scenes.yaml", (1,), 8),
}
PATHS = ("eager", "onnxruntime", "torch.export")
EXPORT_FORMATS = {"onnxruntime": "onnx", "torch.export": "torch-export"}
TARGET_ORT_SPEEDUP = 1.3
TARGET_ORT_FAMILIES = ("classifier", "FCN-8s", "YOLO v1")
TARGET_MATMUL_SHARE = 0.4  # the best path, classifier at its largest batch (32)
SEED = 0
CHECKPOINTS_HELP = "trained weights: DIR/<recipe name>/checkpoints/best.pt where present"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="128,320", help="image sizes in px (comma-separated)")
    parser.add_argument(
        "--families", default=",".join(FAMILIES), help="comma-separated families to measure"
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds (paths take turns)")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads")
    parser.add_argument("--checkpoints", default=None, help=CHECKPOINTS_HELP)
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny sizes, 1 round")


# ------------------------------------------------------------------- models and paths


def build_family(family: str, size: int, root: Path, checkpoints: Path | None) -> tuple[Path, str]:
    """A checkpoint of ``family`` at the recipe's settings for ``size`` px images: built from
    the registry with a fixed seed, or with a trained run's weights. Returns its path and
    where its weights came from."""
    from visionlab.config import load_config
    from visionlab.data.scenes_draw import SCENE_CLASSES
    from visionlab.engine.checkpoint import load_checkpoint, save_checkpoint
    from visionlab.models.registry import build_model
    from visionlab.tasks import get_task

    recipe = FAMILIES[family][0]
    cfg = load_config(recipe, [])
    args = dict(cfg.model_args)
    if "pretrained_backbone" in args:  # random weights unless a trained run is given
        args["pretrained_backbone"] = None
    args["num_classes"] = get_task(cfg.task).num_model_classes(SCENE_CLASSES)
    if "input_size" in args:  # YOLO resizes to its own input size
        args["input_size"] = size
    torch.manual_seed(SEED)
    model = build_model(cfg.model, **args)
    source = f"registry, seed {SEED}"
    trained = checkpoints / Path(recipe).stem / "checkpoints" / "best.pt" if checkpoints else None
    if trained is not None and trained.is_file():
        model.load_state_dict(load_checkpoint(trained)["model"])
        source = f"`{trained}`"
    path = root / f"{family}-{size}".replace(" ", "_") / "best.pt"
    build_args = {k: v for k, v in model.build_args.items() if k != "name"}
    state = {"model": model.state_dict(), "model_name": cfg.model, "model_args": build_args}
    state |= {"task": cfg.task, "classes": list(SCENE_CLASSES), "predicates": []}
    save_checkpoint(path, {**state, "image_size": size})
    return path, source


def load_paths(checkpoint: Path) -> dict[str, torch.nn.Module]:
    """The three paths of one checkpoint: eager (batch norms folded, as ``visionlab predict``
    loads it) and its exports, written as ``visionlab export`` writes them (beside the
    checkpoint: ``onnx/model.onnx``, ``torch-export/model.pt2``)."""
    from visionlab.engine.api import load
    from visionlab.export.runtime import load_exported
    from visionlab.export.writers import export_graph
    from visionlab.ops.fuse import fuse_conv_bn

    model, models = load(checkpoint), {}
    for path, fmt in EXPORT_FORMATS.items():  # exported unfused, as `visionlab export` does
        out = checkpoint.parent / fmt
        out.mkdir()
        models[path] = load_exported(export_graph(model, fmt, out))
    fuse_conv_bn(model)  # what load(..., fuse=True) does, on the model loaded once
    return {"eager": model, **models}


def predictor(model: torch.nn.Module) -> Callable[[torch.Tensor], list[Any]]:
    """What one call of a path does for a batch ``[B, 3, H, W]`` of images in [0, 1].

    Eager: :func:`visionlab.predict`'s work on tensors (the eval transform of each image,
    the model, the task's post-processing, results mapped back onto the images). Exports:
    the graph (resize, normalisation and post-processing inside) through the runtime's
    model, detections split per image."""
    from visionlab.constants import STACKED_TASKS
    from visionlab.engine.api import _predict_options, _predict_prepared, make_transform
    from visionlab.export.runtime import ExportedModel

    if isinstance(model, ExportedModel):
        if model.task in STACKED_TASKS:
            return lambda batch: [model.outputs(batch)]
        return lambda batch: model(list(batch))
    transform = make_transform(model.task, False, model.image_size, {})
    options = _predict_options(model)
    cpu = torch.device("cpu")

    def eager(batch: torch.Tensor) -> list[Any]:
        images = list(batch)
        prepared = [transform(image, {})[0] for image in images]
        return _predict_prepared(model, images, prepared, cpu, options)

    return torch.no_grad()(eager)


def forward_flops(model: torch.nn.Module, images: torch.Tensor) -> float:
    """FLOPs per image of the eager model's forward (what ``FlopCounterMode`` counts:
    convolutions, matrix products) over ``images``, one image a call."""
    from torch.utils.flop_counter import FlopCounterMode

    from visionlab.constants import STACKED_TASKS

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        for image in images:
            model(image[None] if model.task in STACKED_TASKS else [image])
    return counter.get_total_flops() / len(images)


def matmul(n: int) -> Callable[[], torch.Tensor]:
    """A float32 ``torch.mm`` of two ``n x n`` matrices (``2 n^3`` FLOPs a call)."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    return lambda: torch.mm(a, b)


def detections(outputs: list[Any]) -> int | None:
    """Boxes in a call's result (None for classifiers and FCNs)."""
    has_boxes = outputs and "boxes" in outputs[0]
    return sum(len(out["boxes"]) for out in outputs) if has_boxes else None


def time_paths(
    calls: dict[str, Callable[[torch.Tensor], list[Any]]],
    batches: list[torch.Tensor],
    rounds: int,
    bar: Any,
    once: dict[str, Callable[[], Any]] | None = None,
) -> dict[str, float]:
    """Median ms of a round (every batch once) of each path, the paths taking turns round by
    round (one warm-up round first); ``once``: calls made once a round that take their turn
    too (a reference such as the matrix multiply)."""

    def whole_round(fn: Callable) -> Callable[[list], None]:
        return lambda round_batches: [fn(batch) for batch in round_batches]

    per_round = {name: whole_round(fn) for name, fn in calls.items()}
    per_round |= {name: (lambda _, fn=fn: fn()) for name, fn in (once or {}).items()}
    take_turns(per_round, [batches])  # warm-up
    times: dict[str, list[float]] = {name: [] for name in per_round}
    for _ in range(rounds):
        for name, ms in take_turns(per_round, [batches]).items():
            times[name] += ms
        bar.update(1)
    return {name: statistics.median(ms) for name, ms in times.items()}


# ----------------------------------------------------------------------- the section


def _settings(args: argparse.Namespace) -> tuple[list[int], list[str], int, int]:
    """Sizes, families, rounds and the matmul side (``--quick``: tiny)."""
    families = comma_list(args.families, "--families", choices=tuple(FAMILIES))
    if args.quick:
        return [64], families, 1, 256
    return comma_list(args.sizes, "--sizes", int), families, args.rounds, 2048


def _images_of(family: str, quick: bool) -> int:
    return 2 if quick else FAMILIES[family][2]  # a round's images


def _batches_of(family: str, quick: bool) -> tuple[int, ...]:
    return tuple(min(b, _images_of(family, quick)) for b in FAMILIES[family][1])


def throughput_steps(args: argparse.Namespace) -> int:
    sizes, families, rounds, _ = _settings(args)
    per_size = sum(1 + rounds * len(_batches_of(f, args.quick)) for f in families)
    return len(sizes) * per_size


def onnx_operators(path: Path, batch: torch.Tensor, threads: int, calls: int = 3) -> str:
    """The operator types taking most of onnxruntime's kernel time for ``batch`` (its own
    profiler, ``calls`` calls), as ``"Conv 77%, Softmax 10%, TopK 3%"``."""
    import json
    from collections import Counter

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level, options.intra_op_num_threads = 3, threads
    options.enable_profiling, options.profile_file_prefix = True, str(path.parent / "profile")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(calls):
        session.run(None, {"images": batch.numpy()})
    per_op: Counter[str] = Counter()
    for event in json.loads(Path(session.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    total = sum(per_op.values()) or 1
    return ", ".join(f"{op} {100 * us / total:.0f}%" for op, us in per_op.most_common(3))


def throughput(args: argparse.Namespace, bar: Any) -> list[str]:
    """Images/s of each family, size, batch and path, GFLOP/s against the matmul rate."""
    from visionlab.data.scenes import render_images

    sizes, families, rounds, side = _settings(args)
    checkpoints = Path(args.checkpoints) if args.checkpoints else None
    reference = {"matmul": matmul(side)}
    rows, sources = [], {}
    with tempfile.TemporaryDirectory(prefix="visionlab-bench-predict-") as tmp:
        for size in sizes:
            most = max(_images_of(f, args.quick) for f in families)
            images = render_images("val", most, size=size, seed=SEED)
            for family in families:
                bar.set_description(f"{family} {size} px: export")
                ckpt, sources[family] = build_family(family, size, Path(tmp), checkpoints)
                models = load_paths(ckpt)
                torch.set_num_threads(args.threads)  # loading may change it
                n_images = _images_of(family, args.quick)
                flops = forward_flops(models["eager"], images[: min(4, n_images)])
                calls = {name: predictor(models[name]) for name in PATHS}
                bar.update(1)
                for batch in _batches_of(family, args.quick):
                    bar.set_description(f"{family} {size} px, batch {batch}")
                    batches = list(images[: n_images // batch * batch].split(batch))
                    count = len(batches) * batch
                    ms = time_paths(calls, batches, rounds, bar, reference)
                    mm_gflops = 2 * side**3 / (ms["matmul"] / 1000) / 1e9
                    found = {n: detections(fn(batches[0])) for n, fn in calls.items()}
                    onnx = ckpt.parent / "onnx" / "model.onnx"
                    operators = onnx_operators(onnx, batches[0], args.threads)
                    for name in PATHS:
                        per_s = count * 1000 / ms[name]
                        rows.append({"family": family, "size": size, "batch": batch,
                                     "path": name, "images_per_s": per_s,
                                     "detections": found[name], "flops": flops,
                                     "operators": operators if name == "onnxruntime" else "-",
                                     "images": count, "matmul": mm_gflops})  # fmt: skip
    for r in rows:
        eager = next(e for e in rows if _key(e) == _key(r) and e["path"] == "eager")
        r["ratio"] = r["images_per_s"] / eager["images_per_s"]
        r["gflops"] = r["flops"] * r["images_per_s"] / 1e9
        r["matmul_share"] = r["gflops"] / r["matmul"]
    _plot(rows, Path(args.out_dir) / "predict.png")
    return _throughput_markdown(args, rows, side, rounds, sources)


def _key(r: dict[str, Any]) -> tuple:
    return r["family"], r["size"], r["batch"]


def _plot(rows: list[dict[str, Any]], out_png: Path) -> None:
    """Images/s (log scale) per family, size and batch, one bar per path."""
    from matplotlib.figure import Figure

    groups = list(dict.fromkeys(_key(r) for r in rows))
    fig = Figure(figsize=(2.0 + 0.75 * len(groups), 4.5))
    ax = fig.subplots()
    width = 0.8 / len(PATHS)
    for k, path in enumerate(PATHS):
        values = {_key(r): r["images_per_s"] for r in rows if r["path"] == path}
        xs = [g + (k - (len(PATHS) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [values[g] for g in groups], width=width * 0.95, label=path)
    labels = [f"{f}\n{s} px, b{b}" for f, s, b in groups]
    ax.set_xticks(range(len(groups)), labels, fontsize=7, rotation=60, ha="right")
    ax.set(yscale="log", ylabel="images/s (log scale)")
    ax.set_title("Prediction on the CPU: eager PyTorch vs onnxruntime vs torch.export")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)


def _throughput_markdown(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    side: int,
    rounds: int,
    sources: dict[str, str],
) -> list[str]:
    mm = [r["matmul"] for r in rows]
    lines = [
        "## Model throughput: eager vs onnxruntime vs torch.export",
        "",
        f"- Threads: {args.threads} (torch's, and onnxruntime's intra-op threads, which "
        "sleep when idle instead of spinning: `visionlab.export.runtime`), CPU only.",
        "- Models: each family's recipe (model_args as in the file, "
        "`pretrained_backbone=null`), image size set to the row's size (YOLO's "
        "`input_size` too); weights: "
        + "; ".join(f"{f} {s}" for f, s in sources.items())
        + ". Random weights decide how many boxes the detectors keep (detections/image: "
        "what each path returned for the first batch); post-processing cost depends on it.",
        "- Input: scenes validation images rendered at the row's size, float32 "
        "[3, H, W] in [0, 1], already in memory (no decoding is timed); per round "
        + ", ".join(f"{f} {n}" for f, n in {r["family"]: r["images"] for r in rows}.items())
        + " images.",
        "- Timed, eager: what `visionlab.predict` does with tensors: the eval transform of "
        "each image (resize to the model's size), the model with batch norms folded "
        "(`load(..., fuse=True)`), the task's post-processing (softmax + top-5; per-pixel "
        "softmax + argmax; box decoding, thresholds, NMS, mask pasting) and the results "
        "mapped back onto the images. Timed, exports: one call of the exported graph per "
        "batch through `visionlab.load`'s runtime model (resize, normalisation and "
        "post-processing are inside the graph), its outputs split per image for detectors; "
        "the ONNX file on onnxruntime's CPU provider, the `.pt2` program through "
        "`torch.export.load(...).module()`, both written by `visionlab export` from the "
        "unfused model.",
        "- Rounds: each path predicts the round's images in batches of the row's size, "
        "the paths taking turns round by round (`take_turns`): one warm-up round, then "
        f"{rounds}; images/s from the median round.",
        "- onnxruntime operators: the three operator types taking most of its kernel time "
        "on the row's first batch (onnxruntime's profiler, 3 calls).",
        "- GFLOP/image: FLOPs of the eager model's forward counted by "
        "`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products; "
        "detectors: the mean of the first images at batch 1). GFLOP/s: GFLOP/image x "
        "images/s, for every path (the exports do the same network work).",
        f"- Matrix multiply (matmul GFLOP/s): float32 `torch.mm` of {side} x {side} "
        f"matrices, {args.threads} thread(s), once a round taking its turn with the paths "
        "(the machine's load falls on it too); the median over the row's rounds. % of "
        "matmul: GFLOP/s over it. Over this run it measured "
        f"{min(mm):.1f} to {max(mm):.1f} GFLOP/s.",
        "",
        "| family | px | batch | path | images/s | x eager | ms/image | detections/image "
        "| GFLOP/image | GFLOP/s | matmul GFLOP/s | % of matmul | onnxruntime operators |",
        "|:--|--:|--:|:--|--:|--:|--:|--:|--:|--:|--:|--:|:--|",
    ]
    for r in rows:
        found = r["detections"]
        lines.append(row(
            r["family"], r["size"], r["batch"], r["path"], f"{r['images_per_s']:.1f}",
            f"{r['ratio']:.2f}", f"{1000 / r['images_per_s']:.2f}",
            "-" if found is None else f"{found / r['batch']:.1f}",
            f"{r['flops'] / 1e9:.3f}", f"{r['gflops']:.1f}", f"{r['matmul']:.1f}",
            f"{100 * r['matmul_share']:.1f}",
            r["operators"],
        ))  # fmt: skip
    return [*lines, "", "`predict.png`: the images/s of this table (log scale).", "",
            *_targets(rows)]  # fmt: skip


def _targets(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["## Targets", ""]
    for family in TARGET_ORT_FAMILIES:
        mine = [r for r in rows if r["family"] == family and r["path"] == "onnxruntime"]
        if not mine:
            continue
        worst = min(mine, key=lambda r: r["ratio"])
        met = worst["ratio"] >= TARGET_ORT_SPEEDUP
        each = ", ".join(f"{r['size']} px b{r['batch']} {r['ratio']:.2f}x" for r in mine)
        cause = "" if met else (
            f"; onnxruntime's kernel time at {worst['size']} px b{worst['batch']}: "
            f"{worst['operators']}"
        )  # fmt: skip
        lines.append(
            f"- onnxruntime >= {TARGET_ORT_SPEEDUP}x eager images/s, {family}, every size and "
            f"batch: {'met' if met else '**not met**'} ({each}{cause})."
        )
    for size in sorted({r["size"] for r in rows if r["family"] == "classifier"}):
        best_batch = max(r["batch"] for r in rows if r["family"] == "classifier")
        mine = [r for r in rows if _key(r) == ("classifier", size, best_batch)]
        best = max(mine, key=lambda r: r["matmul_share"])
        met = best["matmul_share"] >= TARGET_MATMUL_SHARE
        lines.append(
            f"- best path >= {100 * TARGET_MATMUL_SHARE:.0f}% of the matmul rate, classifier "
            f"at batch {best_batch}, {size} px: {'met' if met else '**not met**'} "
            f"({best['path']}: {best['gflops']:.1f} GFLOP/s, "
            f"{100 * best['matmul_share']:.1f}%)."
        )
    return [*lines, ""]


# ------------------------------------------------------------------------------- run


@dataclass(frozen=True)
class Section:
    """One part of predict.md: ``steps(args)`` progress-bar steps, and ``run(args, bar)``
    that measures and returns its Markdown lines (its title first)."""

    name: str
    steps: Callable[[argparse.Namespace], int]
    run: Callable[[argparse.Namespace, Any], list[str]]


def _app_load(args: argparse.Namespace, bar: Any) -> list[str]:
    return app_load.run(args, bar, build_family)


# The sections of predict.md, in order.
SECTIONS: tuple[Section, ...] = (
    Section("Model throughput", throughput_steps, throughput),
    Section("Web app load test", app_load.steps, _app_load),
)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    if min(args.threads, args.rounds) < 1:
        raise VisionLabError("--threads and --rounds must be >= 1")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    load_before = load_average()
    lines = [header("Prediction on the CPU: eager PyTorch, onnxruntime, torch.export"), ""]
    total = sum(section.steps(args) for section in SECTIONS)
    with tqdm(total=total, desc="bench predict", unit="step") as bar:
        for section in SECTIONS:
            lines += section.run(args, bar)
    load_after = load_average()
    lines.append(load_line(load_before, load_after))
    if max(load_before, load_after) > (os.cpu_count() or 1):
        lines[-1] += (
            " Other jobs shared the machine (load above its cores): absolute figures are low "
            "and noisy; the paths took turns round by round, so their ratios less so."
        )
    write_markdown(out_dir, "predict.md", [*lines, ""], out_dir / "predict.png")
    return 0

"""`visionlab explain CKPT IMAGE --out DIR`: pictures of what happens inside the model, one
numbered PNG per step (``01_proposals.png``, ``02_...``), ``index.html`` showing them in order
with a sentence each, and ``steps.json`` (the sentences and the numbers behind them).

The family is read from the checkpoint: R-CNN (selective search, the warped regions and their
scores), SPPNet (the pyramid's bins over the feature map and the image), Fast R-CNN
(proposals, the RoIs the box head keeps), Faster / Mask R-CNN and the relation head (the
RPN's anchors at one location, positive and negative anchors as training labels them,
proposals before and after NMS, the RoIs kept, detections; Mask R-CNN's 28 x 28 masks before
and after pasting; the relation head's best pairs), YOLO (the grid, the responsible cells,
every predictor's box with its confidence), FCN (the coarse score maps at strides 32 / 16 /
8, the upsampled result by deconvolution and by bilinear interpolation) and classifiers (the
first feature maps, the top-k classes). The image is explained at the model's input size.

``--data DATASET --index N`` (instead of IMAGE) takes the image and its ground truth from a
dataset split (``--split``, default ``val``): anchors and YOLO's cells are then labelled
against the true objects; without ground truth the model's detections scoring at least
``--score-threshold`` stand in for them, and the sentences say so.

``DIR`` must be new or empty: files already there are never overwritten, unless
``--overwrite`` (which replaces the explanation's own file names only).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from visionlab.argtypes import unit_interval
from visionlab.errors import DataError, VisionLabError, describe_class_mismatch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a .pt checkpoint (or a safetensors export folder)")
    parser.add_argument("image", nargs="?", help="an image file (or --data DATASET --index N)")
    parser.add_argument("--out", required=True, help="output folder (new or empty)")
    parser.add_argument(
        "--data", help="take the image and its ground truth from this dataset (or 'scenes')"
    )
    parser.add_argument("--split", default="val", help="--data's split (default: val)")
    parser.add_argument("--index", type=int, default=0, help="--data's image index (from 0)")
    parser.add_argument(
        "--score-threshold",
        type=unit_interval,
        default=0.3,
        help="detections drawn, and standing in for objects without ground truth (0..1)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="write into a non-empty --out folder"
    )


def _check_out(out: Path, overwrite: bool) -> None:
    if out.is_dir() and not overwrite:
        taken = sorted(p.name for p in out.iterdir())
        if taken:
            more = f" and {len(taken) - 3} more" if len(taken) > 3 else ""
            raise VisionLabError(
                f"--out {out} is not empty ({', '.join(taken[:3])}{more}): choose a new or empty "
                "folder, or pass --overwrite to replace the explanation's files in it"
            )


def _scene_input(args: argparse.Namespace, model) -> tuple:
    """``(image, target or None, what)``: the image at the model's input size, its ground
    truth from ``--data``, and a phrase naming it."""
    from visionlab.data.datasets import load_dataset
    from visionlab.data.imageio import load_image
    from visionlab.engine.common import make_transform

    transform = make_transform(model.task, False, model.image_size, {})
    if args.data is None:
        image, _ = transform(load_image(args.image), {})
        return image, None, f"{args.image} (no ground truth)"
    dataset = load_dataset(args.data, args.split, task=model.task, transforms=transform)
    if not 0 <= args.index < len(dataset):
        raise VisionLabError(
            f"--index {args.index} is out of range: split {dataset.split!r} of {args.data} has "
            f"{len(dataset)} images (0..{len(dataset) - 1})"
        )
    if model.classes and list(dataset.classes) != model.classes:
        # as `evaluate` checks: ground truth is never drawn under the model's other names
        raise DataError(
            args.data,
            describe_class_mismatch(
                "the dataset", list(dataset.classes), "the checkpoint", model.classes
            ),
        )
    image, target = dataset[args.index]
    name = dataset.record(args.index).file_name
    return (
        image,
        target,
        f"image {args.index} ({name}) of {args.data} {dataset.split}, with its ground truth",
    )


def run(args: argparse.Namespace) -> int:
    from visionlab.engine.api import load
    from visionlab.explain import FAMILIES, Scene, explain, family_of, write_report
    from visionlab.paths import ensure_output_dir

    if (args.image is None) == (args.data is None):
        raise VisionLabError("give an IMAGE or --data DATASET --index N (one of them)")
    if args.image is not None and not Path(args.image).is_file():
        raise VisionLabError(f"{args.image}: no such image file")
    out = Path(args.out)
    _check_out(out, args.overwrite)
    if not Path(args.checkpoint).exists():
        raise VisionLabError(f"{args.checkpoint}: no such checkpoint")
    ensure_output_dir(out)
    model = load(args.checkpoint, "cpu")
    family = family_of(model)  # an unknown one fails before any image is read
    image, target, what = _scene_input(args, model)
    scene = Scene(
        image=image,
        target=target,
        score_threshold=args.score_threshold,
        classes=list(model.classes),
        predicates=list(model.predicates),
    )
    steps = explain(model, scene, family)
    name = model.meta.get("model_name", family)
    title = f"{FAMILIES[family].title} explained: {name}"
    about = (
        f"Checkpoint {args.checkpoint}; {what}, at the model's input size "
        f"{image.shape[-1]} x {image.shape[-2]} px. One picture per step, in order."
    )
    files = write_report(steps, out, title, about)
    print(f"wrote {len(files)} pictures, steps.json and index.html to {out}")
    return 0

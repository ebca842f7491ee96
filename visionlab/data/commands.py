"""Render, convert, check and draw datasets.

  visionlab data scenes OUT [--train N] [--val N] [--size PX] [--seed S]
  visionlab data convert SRC DST --to coco|voc|yolo [--split S] [--overwrite] [--segments]
  visionlab data check DATASET [--split S] [--no-decode]
  visionlab data show DATASET --out DIR [-n 8] [--split S] [--task T]

DATASET is a COCO, VRD, Visual Genome, VOC, YOLO or image-folder dataset (detected from its
layout), a COCO json file (with --images DIR), a YOLO data yaml, or "scenes" (the built-in
dataset). VRD and Visual Genome are read only (convert them to COCO to write them).
"""

from __future__ import annotations

import argparse
import sys

from visionlab.constants import TASKS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = sub.add_parser("scenes", help="render the synthetic scenes dataset (COCO layout)")
    p.add_argument("out", help="output folder (new or empty)")
    p.add_argument("--train", type=int, default=2000, help="training images (default 2000)")
    p.add_argument("--val", type=int, default=500, help="validation images (default 500)")
    p.add_argument("--size", type=int, default=128, help="image side in px (default 128)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    p = sub.add_parser("convert", help="convert a dataset to COCO, VOC or YOLO")
    p.add_argument("src", help="source dataset (any supported format)")
    p.add_argument("dst", help="output folder (new or empty)")
    p.add_argument("--to", required=True, choices=("coco", "voc", "yolo"), help="output format")
    p.add_argument("--split", action="append", help="split to convert (repeat; default all)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace DST when it is an earlier output of `data convert`",
    )
    p.add_argument(
        "--segments",
        action="store_true",
        help="YOLO: write instance masks as segmentation polygons",
    )
    p.add_argument("--images", help="images folder when SRC is a COCO json file")

    p = sub.add_parser("check", help="report images, objects per class and every problem")
    p.add_argument("dataset", help="dataset to check")
    p.add_argument("--split", action="append", help="split to check (repeat; default all)")
    p.add_argument(
        "--no-decode",
        action="store_true",
        help="do not decode the images (annotations and file presence only)",
    )
    p.add_argument("--images", help="images folder when DATASET is a COCO json file")

    p = sub.add_parser("show", help="draw samples with their annotations into PNG files")
    p.add_argument("dataset", help="dataset to draw")
    p.add_argument("--out", required=True, help="folder for the PNG files")
    p.add_argument("-n", type=int, default=8, help="number of samples (default 8)")
    p.add_argument("--split", default="train", help="split (default train)")
    p.add_argument(
        "--task",
        choices=TASKS,
        help="default: classification for image folders, instance when every "
        "object has a mask, else detection",
    )
    p.add_argument("--seed", type=int, default=0, help="which samples (default 0)")
    p.add_argument("--images", help="images folder when DATASET is a COCO json file")


def run(args: argparse.Namespace) -> int:
    return {"scenes": _scenes, "convert": _convert, "check": _check, "show": _show}[args.action](
        args
    )


def _scenes(args: argparse.Namespace) -> int:
    from visionlab.data.scenes import render_scenes

    out = render_scenes(
        args.out, n_train=args.train, n_val=args.val, size=args.size, seed=args.seed, progress=True
    )
    print(f"wrote the scenes dataset to {out}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from visionlab.data.convert import convert_dataset

    notes = convert_dataset(
        args.src,
        args.dst,
        to=args.to,
        splits=args.split,
        overwrite=args.overwrite,
        images=args.images,
        segments=args.segments,
    )
    print(
        f"wrote {args.dst} ({args.to})" + (f", with {len(notes)} warning(s) above" if notes else "")
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    from visionlab.data.check import check_dataset, format_report

    report = check_dataset(
        args.dataset,
        args.split,
        decode_images=not args.no_decode,
        images=args.images,
        progress=sys.stderr.isatty(),
    )
    print(format_report(report))
    return 0 if report.ok else 1


def _show(args: argparse.Namespace) -> int:
    from visionlab.data import datasets
    from visionlab.paths import ensure_output_dir
    from visionlab.viz import show_dataset

    root = datasets.resolve_path(args.dataset)
    out = ensure_output_dir(args.out)  # before the dataset is read
    task = args.task
    if task is None:
        if datasets.detect_format(root) == "folder":
            task = "classification"
        else:
            probe = datasets.load_dataset(root, args.split, images=args.images)
            with_objects = [r for r in probe.records if len(r.labels)]
            masked = bool(with_objects) and all(r.has_masks for r in with_objects)
            task = "instance" if masked else "detection"
    dataset = datasets.load_dataset(args.dataset, args.split, task=task, images=args.images)
    for path in show_dataset(dataset, out, n=args.n, seed=args.seed):
        print(path)
    return 0

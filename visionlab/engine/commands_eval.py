"""`visionlab eval CKPT [--data DATASET] [--split val] [--limit N] [--json]`: score a checkpoint.

Metric names are those of the task's evaluator: classification ``top1`` / ``top5``,
segmentation ``mIoU`` / ``pixel_acc``, detection ``AP`` / ``AP50`` / ..., instance
segmentation the box numbers and the mask numbers (``mask_AP`` / ``mask_AP50`` / ...,
``mask_per_class``) of one pass. When the checkpoint
lives in a run directory (``RUN/checkpoints/*.pt``) the printed result is also written to
``RUN/eval.json``; a run folder that refuses the file gets a warning, not an error.
(`visionlab eval detections --gt ... --dt ...` scores a COCO results file.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a .pt checkpoint or an exported folder")
    parser.add_argument(
        "--data", help="dataset path in any supported format, or 'scenes' (default: the recipe's)"
    )
    parser.add_argument("--split", default="val", help="split to evaluate (default: val)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument(
        "--limit", type=int, default=None, help="score only the split's first N images"
    )


def _table(metrics: dict[str, Any]) -> str:
    lines = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            continue
        lines.append(
            f"{key:>12}  {value:.4f}" if isinstance(value, float) else f"{key:>12}  {value}"
        )
    for key, table in metrics.items():  # per_class, and mask_per_class for instance models
        if isinstance(table, dict) and table:
            lines.append(f"{key.replace('_', ' ')}:")
            lines += [f"  {name:>10}  {float(v):.4f}" for name, v in table.items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from visionlab.engine.api import evaluate, load, resolve_device
    from visionlab.engine.common import write_eval_json
    from visionlab.engine.logging import to_plain

    model = load(args.checkpoint, resolve_device(args.device))
    data = args.data or (model.meta.get("config") or {}).get("data")
    metrics = evaluate(
        model,
        data,
        args.split,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.json,
        limit=args.limit,
    )
    ckpt = Path(args.checkpoint)
    if args.json:
        print(json.dumps(to_plain(metrics)))
    else:
        part = "" if args.limit is None else f", first {args.limit} images"
        print(f"{ckpt} on {data} [{args.split}{part}]")
        print(_table(metrics))
    if ckpt.is_file() and ckpt.parent.name == "checkpoints":
        payload = {
            "checkpoint": str(ckpt),
            "data": str(data),
            "split": args.split,
            "images": "all" if args.limit is None else f"first {args.limit}",
            "step": model.meta.get("step"),
            "metrics": metrics,
        }
        path = ckpt.parent.parent / "eval.json"
        try:
            write_eval_json(path, payload)
        except OSError as err:  # the metrics above are the result; the copy is a convenience
            reason = err.strerror or str(err)
            print(f"visionlab eval: warning: could not write {path}: {reason}", file=sys.stderr)
    return 0

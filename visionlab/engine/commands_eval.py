"""`visionlab eval CKPT [--data DATASET] [--split val] [--limit N] [--json] [--plots DIR]`:
score a checkpoint.

Metric names are those of the task's evaluator: classification ``top1`` / ``top5``,
segmentation ``mIoU`` / ``pixel_acc``, detection ``AP`` / ``AP50`` / ..., instance
segmentation the box numbers and the mask numbers (``mask_AP`` / ``mask_AP50`` / ...,
``mask_per_class``) of one pass. When the checkpoint
lives in a run directory (``RUN/checkpoints/*.pt``) the printed result is also written to
``RUN/eval.json``; a run folder that refuses the file gets a warning, not an error.
(`visionlab eval detections --gt ... --dt ...` scores a COCO results file.)

``--plots DIR`` also writes the error analysis of the same pass (the metrics are unchanged):
detectors (relation models: their boxes) precision/recall curves per class at IoU 0.5 and
0.75, AP by object size, a confusion matrix with a background row and column, Hoiem et al.'s
error breakdown and the worst images drawn; segmentation the IoU per class and the pixel
confusion matrix; classification the confusion matrix; with ``DIR/analysis.json``
(:mod:`visionlab.eval.analysis`). The detection confusion matrix and the worst images take the
detections scoring at least ``--plots-score`` (0.3, predict's default).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from visionlab.argtypes import unit_interval


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
    parser.add_argument(
        "--plots",
        metavar="DIR",
        help="also write the error analysis (PNGs and analysis.json) into DIR",
    )
    parser.add_argument(
        "--plots-score",
        type=unit_interval,
        default=0.3,
        metavar="S",
        help="score threshold of the confusion matrix and worst images (default: 0.3, as "
        "predict's)",
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
    seen: dict[str, Any] = {}

    def collect(evaluator: Any, dataset: Any) -> Any:
        from visionlab.eval.analysis import AnalysisCollector

        seen["dataset"] = dataset
        seen["collector"] = AnalysisCollector(evaluator, model.task, dataset.classes)
        return seen["collector"]

    metrics = evaluate(
        model,
        data,
        args.split,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.json,
        limit=args.limit,
        wrap_evaluator=collect if args.plots else None,
    )
    ckpt = Path(args.checkpoint)
    about = {  # what was scored: eval.json and analysis.json both say it
        "checkpoint": str(ckpt),
        "data": str(data),
        "split": args.split,
        "images": "all" if args.limit is None else f"first {args.limit}",
    }
    if args.json:
        print(json.dumps(to_plain(metrics)))
    else:
        part = "" if args.limit is None else f", first {args.limit} images"
        print(f"{ckpt} on {data} [{args.split}{part}]")
        print(_table(metrics))
    if ckpt.is_file() and ckpt.parent.name == "checkpoints":
        payload = {**about, "step": model.meta.get("step"), "metrics": metrics}
        path = ckpt.parent.parent / "eval.json"
        try:
            write_eval_json(path, payload)
        except OSError as err:  # the metrics above are the result; the copy is a convenience
            reason = err.strerror or str(err)
            print(f"visionlab eval: warning: could not write {path}: {reason}", file=sys.stderr)
    if args.plots:
        header = {**about, "task": model.task, "score_threshold": args.plots_score}
        return _write_plots(args, seen, metrics, header)
    return 0


def _write_plots(
    args: argparse.Namespace, seen: dict[str, Any], metrics: dict[str, Any], header: dict
) -> int:
    """The error analysis of the pass just run (``seen``: its collector and dataset): PNGs
    and ``analysis.json`` in ``--plots``."""
    from visionlab.eval.analysis_plots import write_analysis

    try:
        files = write_analysis(
            seen["collector"],
            seen["dataset"],
            args.plots,
            metrics=metrics,
            score_threshold=args.plots_score,
            header=header,
        )
    except OSError as err:
        reason = err.strerror or str(err)
        print(
            f"visionlab eval: error: cannot write the analysis to {args.plots}: {reason}",
            file=sys.stderr,
        )
        return 1
    names = ", ".join(p.name for p in files)
    print(
        f"analysis: {len(files)} files in {args.plots} ({names})",
        file=sys.stderr if args.json else sys.stdout,
    )
    return 0

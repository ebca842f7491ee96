"""`visionlab export CKPT --format onnx|torch-export|safetensors --out DIR`: a trained model
for deployment.

``safetensors`` writes ``DIR/model.safetensors`` (the state dict; no pickles, safe to load
anywhere) and ``DIR/model.json`` (model name and builder arguments, task, class names, input
size and normalisation): enough for ``visionlab.load(DIR)`` to rebuild the model.

``onnx`` (``DIR/model.onnx``, the dynamo exporter, opset
:data:`visionlab.export.writers.OPSET`, the metadata in its ``metadata_props``) and
``torch-export`` (``DIR/model.pt2`` with ``DIR/meta.json``) write the model's graph with its
pre- and post-processing inside (:mod:`visionlab.export.graphs`), batch, height and width
dynamic: the classifiers, the FCNs and YOLO. ``visionlab predict`` takes either file (or
``DIR``) like a checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torch import nn

FORMATS = ("safetensors", "onnx", "torch-export")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a .pt checkpoint (runs/NAME/checkpoints/best.pt)")
    parser.add_argument("--format", choices=FORMATS, default="safetensors")
    parser.add_argument("--out", required=True, help="output folder")


def normalization(model: nn.Module) -> dict[str, Any]:
    """How inputs are normalised: models here take RGB in [0, 1] and normalise inside."""
    out = {"input": "RGB float32 in [0, 1]", "inside_model": False, "mean": None, "std": None}
    for module in model.modules():
        mean, std = getattr(module, "mean", None), getattr(module, "std", None)
        if hasattr(mean, "flatten") and hasattr(std, "flatten"):
            out["inside_model"] = True
            out["mean"] = [round(float(v), 6) for v in mean.flatten()]
            out["std"] = [round(float(v), 6) for v in std.flatten()]
            break
    return out


def export(checkpoint: str | Path, out: str | Path, fmt: str = "safetensors") -> Path:
    """Export ``checkpoint`` to ``out`` as ``fmt`` (one of :data:`FORMATS`); returns the
    model file."""
    from visionlab.engine.api import load
    from visionlab.engine.checkpoint import export_safetensors
    from visionlab.paths import ensure_output_dir

    model = load(checkpoint)
    out = ensure_output_dir(out)
    if fmt != "safetensors":
        from visionlab.export.writers import export_graph

        return export_graph(model, fmt, out)
    meta = {
        "model_name": model.meta["model_name"],
        "model_args": model.meta.get("model_args") or {},
        "task": model.task,
        "classes": model.classes,
        "predicates": model.predicates,
        "input_size": [3, model.image_size, model.image_size] if model.image_size else None,
        "image_size": model.image_size,
        "normalize": normalization(model),
        "source": str(checkpoint),
        "step": model.meta.get("step"),
    }
    weights, _ = export_safetensors(model, out, meta)
    return weights


def run(args: argparse.Namespace) -> int:
    path = export(args.checkpoint, args.out, args.format)
    beside = {"safetensors": "model.json", "torch-export": "meta.json"}.get(args.format)
    also = f" (+ {path.parent / beside})" if beside else ""
    print(f"exported {args.checkpoint} -> {path}{also}")
    return 0

"""Writing an export: the graph of :mod:`visionlab.export.graphs` for a loaded model, traced
once by ``torch.export`` and saved as an ONNX model (the dynamo exporter) or a ``.pt2``
program, with the model's classes and settings in its metadata."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionlab.errors import VisionLabError
from visionlab.export.graphs import ClassifierGraph, SegmentationGraph, YoloGraph

OPSET = 20  # Resize with antialias needs 18; NonMaxSuppression is in every recent opset
ONNX_FILE, PROGRAM_FILE, META_FILE = "model.onnx", "model.pt2", "meta.json"
META_KEY = "visionlab"  # the ONNX metadata_props key holding the JSON of :func:`export_meta`

# What stays outside the graph, and why (in every export's metadata; see the package
# docstring).
OUTSIDE = {
    "classification": "top-k selection (k is a prediction option): the graph gives every "
    "class sorted by score",
    "segmentation": "nothing",
    "detection": "the score threshold of `visionlab predict` (an option), applied to the "
    "detections past the model's own score_thresh, which is inside",
    "relation": "the score threshold of `visionlab predict`, as for detection; the triplets "
    "are ranked inside with the model's graph constraint, and `--no-graph-constraint` ranks "
    "the graph's pairs and predicate_scores outside",
}


def build_graph(model: nn.Module) -> nn.Module:
    """The exportable graph of a model returned by ``visionlab.load``.

    Raises:
        VisionLabError: a model this exporter cannot write whole (the message says why).
    """
    from visionlab.models.yolo import YOLO

    name = model.meta.get("model_name")
    if model.meta.get("format") in ("onnx", "torch-export"):
        raise VisionLabError(f"{name}: this is an export already; export its checkpoint")
    if model.task == "classification":
        return ClassifierGraph(model, model.image_size)
    if model.task == "segmentation":
        return SegmentationGraph(model, model.image_size)
    if isinstance(model, YOLO):
        return YoloGraph(model)
    if _is_faster_rcnn(model):
        from visionlab.export.two_stage import TwoStageGraph

        return TwoStageGraph(model, model.image_size)
    raise VisionLabError(
        f"{name}: ONNX / torch.export cover the classifiers, the FCNs, YOLO and Faster / Mask "
        "R-CNN and the relation models; R-CNN, SPPNet and Fast R-CNN take their proposals "
        "from selective search (OpenCV, outside any graph): export them with --format "
        "safetensors"
    )


def _is_faster_rcnn(model: nn.Module) -> bool:
    """Faster R-CNN or Mask R-CNN: the two-stage skeleton with an RPN and a box (and mask)
    head."""
    from visionlab.models.rpn import RPN
    from visionlab.models.two_stage import TwoStageDetector

    return (
        isinstance(model, TwoStageDetector)
        and isinstance(model.proposer, RPN)
        and set(model.roi_heads) in ({"box"}, {"box", "mask"}, {"box", "relation"})
    )


def export_meta(model: nn.Module, graph: nn.Module, fmt: str, dynamic: dict[str, bool]) -> dict:
    """The classes and settings an export carries: enough for ``visionlab predict``."""
    meta = model.meta
    heads = getattr(model, "roi_heads", None)
    settings = getattr(heads["box"] if heads is not None else model, "detection_settings", None)
    return {
        "format": fmt,
        "model_name": meta["model_name"],
        "model_args": meta.get("model_args") or {},
        "task": model.task,
        "classes": model.classes,
        "predicates": model.predicates,
        "image_size": model.image_size,
        "step": meta.get("step"),
        "inputs": {
            "images": "float32 [B, 3, H, W], RGB in [0, 1]; resized and normalised inside",
        },
        "dynamic": dynamic,
        "outputs": list(graph.outputs),
        "detection_settings": asdict(settings) if settings is not None else None,
        "relation_settings": (
            asdict(heads["relation"].settings)
            if heads is not None and "relation" in heads
            else None
        ),
        "outside_graph": OUTSIDE["detection" if model.task == "instance" else model.task],
        "opset": OPSET if fmt == "onnx" else None,
        "torch": torch.__version__,
    }


def _example(model: nn.Module, graph: nn.Module) -> torch.Tensor:
    """An example batch: two images (one for a one-image graph) of a size unlike the
    model's, so nothing specialises to it."""
    side = int(model.image_size or getattr(model, "input_size", 0) or 64)
    return torch.rand(1 if _one_image(graph) else 2, 3, side + 5, side + 3)


def _one_image(graph: nn.Module) -> bool:
    return getattr(graph, "one_image", False)


def _dynamic_shapes(graph: nn.Module) -> dict[str, dict[int, Any]]:
    """Batch (unless the graph takes one image), height and width dynamic where the model
    allows (``Dim.AUTO``: the exporter keeps a dimension static that the model fixes)."""
    auto = torch.export.Dim.AUTO
    return {"images": {0: torch.export.Dim.STATIC if _one_image(graph) else auto, 2: auto, 3: auto}}


def trace(graph: nn.Module, example: torch.Tensor) -> tuple[Any, dict[str, bool]]:
    """``torch.export`` of ``graph`` (:func:`_dynamic_shapes`); returns the program and
    which of batch, height and width stayed dynamic."""
    try:  # without autograd: the models' training-only paths (e.g. RoI align's) stay out
        with torch.no_grad():
            program = torch.export.export(graph, (example,), dynamic_shapes=_dynamic_shapes(graph))
    except Exception as err:  # the exporter's own errors are many and long
        first = str(err).strip().splitlines()[0]
        raise VisionLabError(f"torch.export failed: {type(err).__name__}: {first}") from None
    shape = program.graph_module.graph.find_nodes(op="placeholder")[-1].meta["val"].shape
    dims = {
        name: not isinstance(d, int) for name, d in zip(("batch", "N", "height", "width"), shape)
    }
    dims.pop("N")
    return program, dims


def check_sizes(program: Any, example: torch.Tensor, dynamic: dict[str, bool], name: str) -> None:
    """Run ``program`` on image sizes the example did not take (another remainder by 32
    too): ``Dim.AUTO`` keeps a size dynamic under a condition the model's code put on it
    (e.g. "needs padding"), which then fails at run time on the other sizes.

    Raises:
        VisionLabError: such a condition, with what to do instead.
    """
    if not (dynamic["height"] or dynamic["width"]):
        return
    module, (n, _, height, width) = program.module(), example.shape
    for h, w in ((height - 5, width - 3), (height + 27, width + 13)):
        try:
            with torch.no_grad():
                module(torch.rand(n, 3, h, w))
        except Exception as err:  # the program's own guard
            first = str(err).strip().splitlines()[0]
            raise VisionLabError(
                f"{name}: the traced graph holds only for some image sizes ({first}); "
                "train with an image_size (the graph then resizes every image to it)"
            ) from None


def write_program(program: Any, meta: dict, out: Path) -> Path:
    """``out/model.pt2`` (``torch.export.save``) and its ``out/meta.json``."""
    path = out / PROGRAM_FILE
    torch.export.save(program, path)
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return path


@contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """The exporter's INFO chatter (each optimisation pass logs) held back: warnings stay."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def write_onnx(program: Any, outputs: Sequence[str], meta: dict, out: Path) -> Path:
    """``out/model.onnx``: the dynamo exporter's translation of the traced ``program``,
    ``meta`` in its metadata_props."""
    from onnxscript.function_libs.torch_lib.ops.vision import torchvision_nms

    path = out / ONNX_FILE
    try:
        with _quiet("onnxscript", "onnx_ir", "torch.onnx"):
            onnx_program = torch.onnx.export(
                program,
                dynamo=True,
                opset_version=OPSET,
                input_names=["images"],
                output_names=list(outputs),
                custom_translation_table={torch.ops.visionlab.nms.default: torchvision_nms},
                verbose=False,
            )
    except Exception as err:  # the exporter's own errors are many and long
        first = str(err).strip().splitlines()[0]
        raise VisionLabError(f"ONNX export failed: {type(err).__name__}: {first}") from None
    props = onnx_program.model.metadata_props
    props[META_KEY] = json.dumps(meta)
    for key in ("task", "model_name"):
        props[key] = str(meta[key])
    props["classes"] = json.dumps(meta["classes"])
    onnx_program.save(str(path))
    return path


def export_graph(model: nn.Module, fmt: str, out: Path) -> Path:
    """Write ``model`` (from ``visionlab.load``) to ``out`` as ``fmt`` ("onnx" or
    "torch-export"); returns the model file."""
    graph = build_graph(model).eval()
    example = _example(model, graph)
    with torch.no_grad():
        program, dynamic = trace(graph, example)
        check_sizes(program, example, dynamic, model.meta.get("model_name"))
        meta = export_meta(model, graph, fmt, dynamic)
        if fmt == "torch-export":
            return write_program(program, meta, out)
        return write_onnx(program, graph.outputs, meta, out)

"""Pictures of what happens inside a model, one numbered PNG per step and an ``index.html``
that shows them in order with a sentence each (``visionlab explain CKPT IMAGE --out DIR``).

The family is read from the loaded model: R-CNN and SPPNet (:mod:`.regions`), Fast, Faster
and Mask R-CNN and the relation head (:mod:`.two_stage`), YOLO (:mod:`.grid`), FCN and the
classifiers (:mod:`.dense`). Intermediate values come from the models' public methods and
forward hooks; the drawings are :mod:`visionlab.viz`'s, heat maps matplotlib's.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from visionlab.errors import VisionLabError
from visionlab.explain.common import Scene, Step

__all__ = ["FAMILIES", "Scene", "Step", "explain", "family_of", "write_report"]

# family -> what the page's title calls it
FAMILIES = {
    "rcnn": "R-CNN",
    "sppnet": "SPPNet",
    "fast_rcnn": "Fast R-CNN",
    "faster_rcnn": "Faster R-CNN",
    "mask_rcnn": "Mask R-CNN",
    "relation_rcnn": "Faster R-CNN with a relation head",
    "yolo": "YOLO",
    "fcn": "FCN",
    "classifier": "Image classifier",
}


def family_of(model: nn.Module) -> str:
    """The family of ``model`` (a key of :data:`FAMILIES`), read from its classes.

    Raises:
        VisionLabError: a model no explanation covers (an ONNX / torch.export graph, say).
    """
    from visionlab.models.classifier import ImageClassifier
    from visionlab.models.fcn import FCN
    from visionlab.models.rcnn import RegionDetector, WarpedRegions
    from visionlab.models.rpn import RPN
    from visionlab.models.two_stage import SelectiveSearchProposer, TwoStageDetector
    from visionlab.models.yolo import YOLO

    name = getattr(model, "meta", {}).get("model_name", type(model).__name__)
    if isinstance(model, RegionDetector):
        return "rcnn" if isinstance(model.regions, WarpedRegions) else "sppnet"
    if isinstance(model, TwoStageDetector):
        if isinstance(model.proposer, SelectiveSearchProposer):
            return "fast_rcnn"
        if isinstance(model.proposer, RPN):
            heads = set(model.roi_heads)
            return next(
                (
                    f
                    for f, h in (("relation_rcnn", "relation"), ("mask_rcnn", "mask"))
                    if h in heads
                ),
                "faster_rcnn",
            )
    if isinstance(model, YOLO):
        return "yolo"
    if isinstance(model, FCN):
        return "fcn"
    if isinstance(model, ImageClassifier):
        return "classifier"
    fmt = getattr(model, "meta", {}).get("format")
    hint = f" (an {fmt} export holds the graph only; explain its checkpoint)" if fmt else ""
    raise VisionLabError(f"explain: no explanation for {name!r}{hint}")


def _steps_function(family: str) -> Callable[[Any, Scene], list[Step]]:
    from visionlab.explain import dense, grid, regions, two_stage

    return {
        "rcnn": regions.rcnn_steps,
        "sppnet": regions.sppnet_steps,
        "fast_rcnn": two_stage.fast_rcnn_steps,
        "faster_rcnn": two_stage.faster_rcnn_steps,
        "mask_rcnn": two_stage.faster_rcnn_steps,
        "relation_rcnn": two_stage.faster_rcnn_steps,
        "yolo": grid.yolo_steps,
        "fcn": dense.fcn_steps,
        "classifier": dense.classifier_steps,
    }[family]


def explain(model: nn.Module, scene: Scene) -> list[Step]:
    """The steps of ``model`` (in eval mode) on ``scene``, in order."""
    return _steps_function(family_of(model))(model.eval(), scene)


def write_report(steps: list[Step], out: Path, title: str, about: str) -> list[Path]:
    """Write ``out/NN_name.png`` per step, ``out/steps.json`` (sentences and facts) and
    ``out/index.html`` (the pictures in order, a sentence each; images by relative path,
    nothing external). Returns the PNG paths, in order."""
    out.mkdir(parents=True, exist_ok=True)
    files, records, sections = [], [], []
    for k, step in enumerate(steps, 1):
        name = f"{k:02d}_{step.name}.png"
        step.image.save(out / name)
        files.append(out / name)
        records.append({"file": name, "title": step.title, "sentence": step.sentence, **step.facts})
        sections.append(
            f'<section id="step{k}">\n<h2>{k}. {html.escape(step.title)}</h2>\n'
            f"<p>{html.escape(step.sentence)}</p>\n"
            f'<img src="{html.escape(name)}" alt="{html.escape(step.title)}">\n</section>'
        )
    (out / "steps.json").write_text(json.dumps({"title": title, "steps": records}, indent=1))
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>\n"
        "body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }\n"
        "img { max-width: 100%; border: 1px solid #ddd; }\n"
        "section { margin-bottom: 2.5em; }\n</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n<p>{html.escape(about)}</p>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )
    (out / "index.html").write_text(page, encoding="utf-8")
    return files

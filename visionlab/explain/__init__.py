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
from importlib import import_module
from pathlib import Path
from typing import NamedTuple

from torch import nn

from visionlab.errors import VisionLabError
from visionlab.explain.common import Scene, Step

__all__ = ["FAMILIES", "Family", "Scene", "Step", "explain", "family_of", "write_report"]


class Family(NamedTuple):
    """An explained family: what the page's title calls it, and the function of
    ``visionlab.explain.<module>`` that gives its steps (imported when it is explained)."""

    title: str
    module: str
    function: str


FAMILIES = {
    "rcnn": Family("R-CNN", "regions", "rcnn_steps"),
    "sppnet": Family("SPPNet", "regions", "sppnet_steps"),
    "fast_rcnn": Family("Fast R-CNN", "two_stage", "fast_rcnn_steps"),
    "faster_rcnn": Family("Faster R-CNN", "two_stage", "faster_rcnn_steps"),
    "mask_rcnn": Family("Mask R-CNN", "two_stage", "faster_rcnn_steps"),
    "relation_rcnn": Family("Faster R-CNN with a relation head", "two_stage", "faster_rcnn_steps"),
    "yolo": Family("YOLO", "grid", "yolo_steps"),
    "fcn": Family("FCN", "dense", "fcn_steps"),
    "classifier": Family("Image classifier", "dense", "classifier_steps"),
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


def explain(model: nn.Module, scene: Scene, family: str | None = None) -> list[Step]:
    """The steps of ``model`` (in eval mode) on ``scene``, in order; ``family`` is
    :func:`family_of` the model, computed here when not given."""
    entry = FAMILIES[family or family_of(model)]
    steps = getattr(import_module(f"visionlab.explain.{entry.module}"), entry.function)
    return steps(model.eval(), scene)


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

"""Task adapters: one interface between the trainer and every kind of model.

A :class:`Task` knows how to batch samples (``collate``), turn a model and a batch into a dict
of ``loss_*`` tensors (``loss``), turn a model's output into the per-image prediction dicts of
the data contract (``predict``), feed an evaluator (``eval_outputs``) and which evaluator
scores it (``evaluator``). Classifiers and FCNs return logits, so their adapters compute the
loss; detection-family models follow torchvision's contract (``model(images, targets)`` returns
the loss dict in training mode, predictions in eval mode; the declared base is
:class:`visionlab.models.detector.Detector`), so their adapter only forwards, with the extras
a caller asks for (``model(images, extras=...)``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionlab.constants import IGNORE_INDEX
from visionlab.data.loader import collate_for


def to_device(obj: Any, device: torch.device | str) -> Any:
    """Move every tensor inside ``obj`` (tensor, list, tuple or dict, nested) to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


@dataclass
class Task:
    """Base adapter; subclasses implement ``loss``, ``predict`` and ``evaluator``.

    Attributes:
        name: the task name ("classification", ...).
        label_smoothing: cross-entropy label smoothing (classification only).
    """

    name: str = ""
    label_smoothing: float = 0.0

    def collate(self, batch: Sequence[tuple[Tensor, dict[str, Any]]]) -> Any:
        return collate_for(self.name)(batch)

    def num_model_classes(self, classes: Sequence[str]) -> int:
        """``num_classes`` a model of this task needs for the dataset's ``classes``."""
        return len(classes)

    def loss(self, model: nn.Module, images: Any, targets: Any) -> dict[str, Tensor]:
        raise NotImplementedError

    def eval_outputs(self, model: nn.Module, images: Any, targets: Any = None) -> Any:
        """What this task's evaluator ``update`` takes as predictions (model in eval mode;
        ``targets``, as the loader gives them, for a task whose model is also run on given
        boxes)."""
        return self.predict(model, images)

    def eval_targets(self, targets: Any) -> Any:
        """What this task's evaluator ``update`` takes as targets."""
        return targets

    def predict(self, model: nn.Module, images: Any, **kwargs: Any) -> list[dict[str, Tensor]]:
        raise NotImplementedError

    def evaluator(self, classes: Sequence[str], predicates: Sequence[str] = ()) -> Any:
        """The evaluator of this task for a dataset's ``classes`` (and ``predicates``)."""
        raise NotImplementedError


class ClassificationTask(Task):
    """Logits ``[B, C]`` -> cross-entropy ``loss_classifier``; predictions are the top-k classes."""

    def loss(self, model: nn.Module, images: Tensor, targets: dict[str, Any]) -> dict[str, Tensor]:
        logits = model(images)  # [B, C]
        loss = F.cross_entropy(
            logits.float(), targets["labels"], label_smoothing=self.label_smoothing
        )
        return {"loss_classifier": loss}

    def eval_outputs(self, model: nn.Module, images: Tensor, targets: Any = None) -> Tensor:
        return model(images).float()  # logits [B, C]

    def eval_targets(self, targets: dict[str, Any]) -> Tensor:
        return targets["labels"]

    def predict(
        self, model: nn.Module, images: Tensor, *, topk: int = 5, **_: Any
    ) -> list[dict[str, Tensor]]:
        """Per image: ``labels [k] int64`` (0..C-1, best first) and ``scores [k]`` (softmax)."""
        probs = model(images).float().softmax(dim=1)  # [B, C]
        scores, labels = probs.topk(min(topk, probs.shape[1]), dim=1)
        return [{"labels": lab, "scores": sc} for lab, sc in zip(labels, scores)]

    def evaluator(self, classes: Sequence[str], predicates: Sequence[str] = ()) -> Any:
        from visionlab.eval.classification import ClassificationEvaluator

        return ClassificationEvaluator(len(classes), list(classes))


class SegmentationTask(Task):
    """Logits ``[B, K+1, H, W]`` (class 0 = background) -> per-pixel cross-entropy
    ``loss_seg`` ignoring label ``IGNORE_INDEX`` (255); predictions are the per-pixel argmax
    ``semantic``."""

    def num_model_classes(self, classes: Sequence[str]) -> int:
        return len(classes) + 1

    @staticmethod
    def _logits(model: nn.Module, images: Tensor) -> Tensor:
        logits = model(images)
        if isinstance(logits, dict):  # torchvision segmentation models return {"out": ...}
            logits = logits["out"]
        if logits.shape[-2:] != images.shape[-2:]:
            logits = F.interpolate(
                logits, size=images.shape[-2:], mode="bilinear", align_corners=False
            )
        return logits.float()

    def loss(self, model: nn.Module, images: Tensor, targets: dict[str, Any]) -> dict[str, Tensor]:
        logits = self._logits(model, images)  # [B, K+1, H, W]
        semantic = targets["semantic"]  # [B, H, W]
        if not (semantic != IGNORE_INDEX).any():  # nothing labelled: zero, not nan
            return {"loss_seg": logits.sum() * 0.0}
        return {"loss_seg": F.cross_entropy(logits, semantic, ignore_index=IGNORE_INDEX)}

    def eval_outputs(self, model: nn.Module, images: Tensor, targets: Any = None) -> Tensor:
        return self._logits(model, images).argmax(dim=1)  # [B, H, W] int64

    def eval_targets(self, targets: dict[str, Any]) -> Tensor:
        return targets["semantic"]

    def predict(self, model: nn.Module, images: Tensor, **_: Any) -> list[dict[str, Tensor]]:
        """Per image: ``semantic [H, W] int64`` (0 = background) and ``scores [H, W]``."""
        probs = self._logits(model, images).softmax(dim=1)
        scores, semantic = probs.max(dim=1)
        return [{"semantic": sem, "scores": sc} for sem, sc in zip(semantic, scores)]

    def evaluator(self, classes: Sequence[str], predicates: Sequence[str] = ()) -> Any:
        from visionlab.eval.segmentation import SegmentationEvaluator

        return SegmentationEvaluator(len(classes) + 1, ["background", *classes])


class DetectionTask(Task):
    """torchvision detection contract: ``model(images, targets)`` -> ``{loss_*}`` in training,
    ``model(images)`` -> ``[{boxes [N, 4] xyxy, labels [N] (1..C), scores [N], ...}]`` in eval
    (:class:`visionlab.models.detector.Detector`).
    """

    def num_model_classes(self, classes: Sequence[str]) -> int:
        return len(classes) + 1  # with background, as torchvision counts

    def loss(
        self, model: nn.Module, images: list[Tensor], targets: list[dict[str, Any]]
    ) -> dict[str, Tensor]:
        losses = model(images, targets)
        if not isinstance(losses, dict):
            raise TypeError(
                f"a detection model must return a dict of losses in training mode, got "
                f"{type(losses).__name__}"
            )
        return losses

    def predict(
        self,
        model: nn.Module,
        images: list[Tensor],
        *,
        score_threshold: float = 0.0,
        extras: Collection[str] = (),
        **_: Any,
    ) -> list[dict[str, Tensor]]:
        """Per image the model's prediction dict, detections scoring below
        ``score_threshold`` dropped; ``extras`` (e.g. ``("proposals",)``, ``("grid",)``) are
        passed to the model, which adds their keys (per-image extras such as ``proposals``
        are kept whole, per-detection ones such as ``cells`` filtered with the boxes)."""
        outputs = model(list(images), extras=tuple(extras)) if extras else model(list(images))
        return [_threshold(out, score_threshold) for out in outputs]

    def evaluator(self, classes: Sequence[str], predicates: Sequence[str] = ()) -> Any:
        from visionlab.eval.detection import DetectionEvaluator

        return DetectionEvaluator(
            list(classes), iou_type="segm" if self.name == "instance" else "bbox"
        )


class RelationTask(DetectionTask):
    """Detection with relationships (``relation_rcnn``, ``relation_freq``): trained as a
    detector (the targets carry ``relations``); evaluated in the three modes of
    :data:`visionlab.eval.relations.MODES` (the model run on the image alone, on the given
    boxes, and on the given boxes and labels) by
    :class:`~visionlab.eval.relations.SceneGraphEvaluator`."""

    def eval_outputs(
        self, model: nn.Module, images: list[Tensor], targets: Any = None
    ) -> dict[str, list[dict[str, Tensor]]]:
        extras = ("relation_pairs",)
        outputs = {"sgdet": model(list(images), extras=extras)}
        if targets is not None:
            targets = to_device(targets, images[0].device)
            boxes = [{"boxes": t["boxes"]} for t in targets]
            labelled = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
            outputs["sgcls"] = model(list(images), extras=extras, given=boxes)
            outputs["predcls"] = model(list(images), extras=extras, given=labelled)
        return outputs

    def predict(
        self,
        model: nn.Module,
        images: list[Tensor],
        *,
        score_threshold: float = 0.0,
        extras: Collection[str] = (),
        graph_constraint: bool = True,
        **_: Any,
    ) -> list[dict[str, Tensor]]:
        """As :meth:`DetectionTask.predict`; ``graph_constraint=False`` ranks every (pair,
        predicate) instead of each pair's best predicate (Lu et al.'s "no graph constraint"),
        from the pair scores of the ``relation_pairs`` extra, dropped again unless asked."""
        wanted = tuple(extras)
        asked = wanted if graph_constraint else tuple({*wanted, "relation_pairs"})
        outputs = model(list(images), extras=asked) if asked else model(list(images))
        from visionlab.eval.relations import rank_triplets

        heads = getattr(model, "roi_heads", None)
        head = heads["relation"] if heads is not None and "relation" in heads else None
        for out in outputs:
            if not graph_constraint:  # as many triplets as the head keeps with it
                settings = head.settings if head is not None else None
                k = (
                    settings.relations_per_image
                    if settings is not None
                    else model.meta["relation_settings"]["relations_per_image"]  # an export
                )
                out["relations"], out["relation_scores"] = rank_triplets(
                    out["pairs"], out["predicate_scores"], k, graph_constraint=False
                )
            if "relation_pairs" not in wanted:
                out.pop("pairs", None)
                out.pop("predicate_scores", None)
        return [_threshold(out, score_threshold) for out in outputs]

    def evaluator(self, classes: Sequence[str], predicates: Sequence[str] = ()) -> Any:
        from visionlab.eval.relations import SceneGraphEvaluator

        return SceneGraphEvaluator(list(classes), list(predicates))


def _threshold(out: dict[str, Tensor], score_threshold: float) -> dict[str, Tensor]:
    """One image's prediction without the detections scoring below ``score_threshold``:
    per-detection values filtered, relations re-indexed into the kept detections (and
    dropped with a detection), per-image extras (``proposals``, ``grid_size``) kept whole."""
    if score_threshold <= 0:
        return out
    keep = out["scores"] >= score_threshold
    n = keep.numel()
    whole = ("relations", "relation_scores", "pairs", "predicate_scores", "proposals")
    kept = {
        k: v[keep] if isinstance(v, Tensor) and v.ndim and v.shape[0] == n else v
        for k, v in out.items()
        if k not in whole
    }
    if "proposals" in out:
        kept["proposals"] = out["proposals"]
    if "relations" in out:  # relation indices refer to the kept boxes only
        kept.update(_keep_relations(out, keep))
    return kept


def _keep_relations(out: dict[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
    relations = out["relations"].reshape(-1, 3)
    scores = out.get("relation_scores", torch.ones(len(relations)))
    new_index = torch.cumsum(keep.long(), 0) - 1
    both = keep[relations[:, 0]] & keep[relations[:, 2]] if len(relations) else keep[:0]
    rel = relations[both]
    rel = torch.stack([new_index[rel[:, 0]], rel[:, 1], new_index[rel[:, 2]]], dim=1)
    return {"relations": rel, "relation_scores": scores[both]}


_TASKS: dict[str, type[Task]] = {
    "classification": ClassificationTask,
    "segmentation": SegmentationTask,
    "detection": DetectionTask,
    # Mask R-CNN: detection with `masks` in targets and outputs, scored by box AP (`AP`, ...)
    # and mask AP (`mask_AP`, ...) in one pass; `mask_AP` picks the best checkpoint
    "instance": DetectionTask,
    "relation": RelationTask,
}


def get_task(name: str, **options: Any) -> Task:
    """The adapter of task ``name`` ("classification", "segmentation", "detection",
    "instance", "relation"); ``options`` set its attributes (e.g. ``label_smoothing=0.1``)."""
    if name not in _TASKS:
        from visionlab.errors import ConfigError

        raise ConfigError(f"unknown task {name!r}; expected one of {', '.join(_TASKS)}")
    return _TASKS[name](name=name, **options)

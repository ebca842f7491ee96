"""The one declared base of every detector (R-CNN, SPPNet, Fast and Faster R-CNN, YOLO): the
forward contract, the extras a caller may ask for, and the optional hooks the engine calls.

The forward contract is torchvision's (``models/detection/generalized_rcnn.py``): a dict of
``loss_*`` tensors in training mode, one prediction dict per image in eval mode. What a
model can show beyond its detections (proposals, YOLO's grid) is asked for by argument,
``model(images, extras=("proposals",))``. The hooks (``prepare_data``, parameter groups,
``freeze_backbone`` / ``unfreeze_backbone``, ``stages``) have defaults here.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from visionlab.errors import VisionLabError
from visionlab.models.backbones import STRIDES

__all__ = [
    "EXTRA_KEYS",
    "Detector",
    "attach_proposals",
    "check_detection_inputs",
    "check_extras",
    "check_given",
    "drop_unasked",
    "supported_extras",
]

# The eval-output keys each extra adds to a prediction dict.
EXTRA_KEYS: dict[str, tuple[str, ...]] = {
    # Tensor[P, 4] xyxy, the image's region proposals (best first), in input pixels
    "proposals": ("proposals",),
    # grid_size: int S; cells: Tensor[N, 2] (row, col) of the cell each detection came from
    "grid": ("grid_size", "cells"),
    # pairs: Tensor[M, 2] (subject, object) detection indices; predicate_scores: Tensor[M, P]
    # every pair's triplet score for each predicate (relation models)
    "relation_pairs": ("pairs", "predicate_scores"),
}


def model_name(model: nn.Module) -> str:
    """The registry name of ``model`` (``build_args["name"]``), else its class name."""
    build_args = getattr(model, "build_args", None)
    if isinstance(build_args, dict) and build_args.get("name"):
        return str(build_args["name"])
    return type(model).__name__


def supported_extras(model: nn.Module) -> frozenset[str]:
    """The extras ``model`` can return: a detector's :attr:`Detector.supported_extras`;
    none for any other model."""
    return model.supported_extras if isinstance(model, Detector) else frozenset()


def check_extras(model: nn.Module, extras: Collection[str]) -> frozenset[str]:
    """The extras asked of ``model``, as a set.

    Raises:
        VisionLabError: ``extras`` is a bare string, or names an extra the model does not
            make (the message names the model and the extras it supports).
    """
    if isinstance(extras, str):
        raise VisionLabError(
            f"extras is a collection of names, e.g. ({extras!r},), not the string {extras!r}"
        )
    wanted = frozenset(extras)
    supported = supported_extras(model)
    unknown = sorted(wanted - supported)
    if unknown:
        name = model_name(model)
        offer = ", ".join(repr(e) for e in sorted(supported)) or "none"
        raise VisionLabError(
            f"{name} cannot return the extra{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(e) for e in unknown)}; the extras {name} supports: {offer}"
        )
    return wanted


def check_detection_inputs(
    images: Sequence[Tensor], targets: Sequence[dict] | None, training: bool
) -> None:
    """Raise ``ValueError`` on inputs that break the detector contract: ``images`` a
    non-empty list of ``Tensor[3, H, W]``; in training one target per image, each with
    ``boxes: Tensor[N, 4]`` (``N = 0`` for an image without objects)."""
    if not isinstance(images, list | tuple) or not images:
        raise ValueError("a detector takes a non-empty list of Tensor[3, H, W] images")
    for im in images:
        if not isinstance(im, Tensor) or im.dim() != 3 or im.shape[0] != 3:
            shape = tuple(im.shape) if isinstance(im, Tensor) else type(im).__name__
            raise ValueError(f"each image must be Tensor[3, H, W], got {shape}")
    if training:
        if targets is None or len(targets) != len(images):
            raise ValueError(
                "training needs one target dict (boxes, labels) per image (for predictions, "
                "call model.eval() first)"
            )
        for t in targets:
            boxes = t["boxes"]
            if boxes.dim() != 2 or boxes.shape[1] != 4:
                raise ValueError(f"target boxes must be Tensor[N, 4], got {tuple(boxes.shape)}")


def check_given(model: nn.Module, images: Sequence[Tensor], given: Sequence[dict]) -> None:
    """Refuse ``given`` boxes a model cannot take, or that are not one dict per image with
    ``boxes [N, 4]`` and optional ``labels [N]`` in 1..C."""
    if not getattr(model, "takes_given", False):
        raise VisionLabError(f"{model_name(model)} cannot run on given boxes")
    if model.training:
        raise VisionLabError(f"{model_name(model)}: given boxes are for eval; call model.eval()")
    if len(given) != len(images):
        raise ValueError(f"given: {len(given)} dicts for {len(images)} images")
    for g in given:
        boxes = g.get("boxes") if isinstance(g, dict) else None
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError("given: each image needs 'boxes' Tensor[N, 4]")
        labels = g.get("labels")
        if labels is not None and (labels.shape != (len(boxes),) or (labels < 1).any()):
            raise ValueError("given 'labels' must be Tensor[N] with values in 1..C")


def drop_unasked(detections: list[dict[str, Any]], made: Collection[str], asked: Collection[str]):
    """Remove from each prediction dict the keys of the extras in ``made`` not ``asked``."""
    for extra in set(made) - set(asked):
        for det in detections:
            for key in EXTRA_KEYS[extra]:
                det.pop(key, None)


def attach_proposals(detections: list[dict[str, Any]], proposals: Sequence[Tensor]) -> None:
    """Add each image's ``proposals`` (``Tensor[P, 4]``) to its prediction dict, in place."""
    for det, props in zip(detections, proposals):
        det["proposals"] = props


class Detector(nn.Module):
    """Base of every detector: ``forward(images, targets=None, *, extras=())``.

    A subclass sets ``self.backbone`` and :attr:`supported_extras`, and implements
    :meth:`losses` and :meth:`detect`.

    Attributes:
        supported_extras: the extras :meth:`forward` can add to eval outputs (keys in
            :data:`EXTRA_KEYS`).
        stages: the stages of a model trained in stages, in order; :mod:`visionlab.engine.stages`
            runs ``train_stage`` by the Trainer on ``model.train_stage_data(dataset,
            indices, *, cache)``, the others by ``model.run_stage(name, dataset, indices, *,
            cache, progress) -> stats``. Empty (the default): one Trainer run.
        stage_images: training images the stages use (a seeded subset; 0 = all).
        stage_eval_images: validation images scored after the stages (0 = all, -1 = none).
    """

    supported_extras: ClassVar[frozenset[str]] = frozenset()
    takes_given: ClassVar[bool] = False
    stages: ClassVar[tuple[str, ...]] = ()
    train_stage: ClassVar[str] = ""
    stage_images: int = 0
    stage_eval_images: int = 0

    def forward(
        self,
        images: list[Tensor],
        targets: list[dict[str, Tensor]] | None = None,
        *,
        extras: Collection[str] = (),
        given: Sequence[dict[str, Tensor]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Any]]:
        """The detector contract.

        Args:
            images: ``[Tensor[3, H_i, W_i]]`` float RGB in ``[0, 1]``; sizes may differ.
            targets: training only, one dict per image: ``boxes [N, 4]`` xyxy pixels,
                ``labels [N] int64`` in ``1..C`` (``N = 0``: an image without objects).
            extras: eval only: a subset of :attr:`supported_extras` to add to each
                prediction dict.
            given: eval only, models with :attr:`takes_given` (the two-stage skeleton): per
                image ``boxes [N, 4]`` to use instead of the model's own detections, with
                ``labels [N]`` (kept, scores 1) or without (classified by the model); the
                later heads (masks, relationships) run on them. The outputs keep the given
                order.

        Returns:
            Training: ``{"loss_*": Tensor[]}``. Eval: per image ``{"boxes": Tensor[N, 4],
            "labels": Tensor[N] int64 in 1..C, "scores": Tensor[N] (decreasing)}`` plus the
            keys of the extras asked for.

        Raises:
            VisionLabError: an extra the model does not make, or extras in training mode.
            ValueError: inputs that break the contract (:func:`check_detection_inputs`).
        """
        wanted = check_extras(self, extras)
        check_detection_inputs(images, targets, self.training)
        if self.training:
            if wanted:
                raise VisionLabError(
                    f"{model_name(self)}: extras {sorted(wanted)} are eval outputs; "
                    "call model.eval() first"
                )
            return self.losses(images, targets)
        if given is not None:
            check_given(self, images, given)
            return self.detect_given(images, wanted, list(given))
        return self.detect(images, wanted)

    def losses(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Training: the ``loss_*`` tensors of a batch (inputs already checked)."""
        raise NotImplementedError

    def detect(self, images: list[Tensor], extras: frozenset[str]) -> list[dict[str, Any]]:
        """Eval: one prediction dict per image, with the keys of ``extras`` (already
        checked against :attr:`supported_extras`)."""
        raise NotImplementedError

    def detect_given(
        self, images: list[Tensor], extras: frozenset[str], given: list[dict[str, Tensor]]
    ) -> list[dict[str, Any]]:
        """Eval on ``given`` boxes (see :meth:`forward`; inputs already checked)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------ hooks

    def prepare_data(self, datasets: Iterable[Any], *, transform: Any = None) -> None:
        """Work on the ``datasets`` (None entries skipped) once before training, their images
        as ``transform`` gives them (None: the datasets' own); called on rank 0. Default:
        nothing."""

    def _freezable_backbone(self, verb: str) -> nn.Module:
        backbone = getattr(self, "backbone", None)
        if backbone is None or not hasattr(backbone, "freeze_to"):
            raise VisionLabError(f"{model_name(self)} has no backbone to {verb}")
        return backbone

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The backbone's parameters (a lower learning rate suits pretrained ones)."""
        backbone = getattr(self, "backbone", None)
        return list(backbone.parameters()) if backbone is not None else []

    def head_parameters(self) -> list[nn.Parameter]:
        """Every parameter but the backbone's."""
        ids = {id(p) for p in self.backbone_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def freeze_backbone(self) -> None:
        """Train everything but the backbone (``transfer.freeze: backbone``):
        :meth:`~visionlab.models.backbones.Backbone.freeze_to` of its last map."""
        self._freezable_backbone("freeze").freeze_to(STRIDES[-1])

    def unfreeze_backbone(self) -> None:
        """Train the whole backbone again (``transfer.unfreeze_after``), the layers frozen by
        ``frozen_stride`` too: ``freeze_to(0)``."""
        self._freezable_backbone("unfreeze").freeze_to(0)

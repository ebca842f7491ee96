"""The one declared base of every detector (R-CNN, SPPNet, Fast and Faster R-CNN, YOLO): the
forward contract, the extras a caller may ask for, and the optional hooks the engine calls.

The forward contract is torchvision's (``models/detection/generalized_rcnn.py``):
``model(images, targets)`` in training mode returns a dict of ``loss_*`` tensors, so the
trainer needs no per-model code (``loss = sum(model(images, targets).values())``), and
``model(images)`` in eval mode returns one prediction dict per image. What a model can show
beyond its detections (its region proposals, YOLO's grid) is asked for by argument,
``model(images, extras=("proposals",))``, never by an attribute set from outside; a model
refuses an extra it does not make, naming the ones it does.

The hooks have defaults here, so the engine calls them on any detector: ``prepare_data``
(work on the datasets before training, e.g. Fast R-CNN's selective-search cache),
``backbone_parameters`` / ``head_parameters`` (optimizer parameter groups), and
``freeze_backbone`` / ``unfreeze_backbone`` (staged training, through the one freeze
mechanism, :meth:`~visionlab.models.backbones.Backbone.freeze_to`); ``stages`` declares a
model trained in stages (R-CNN's).
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
    "supported_extras",
]

# The eval-output keys each extra adds to a prediction dict.
EXTRA_KEYS: dict[str, tuple[str, ...]] = {
    # Tensor[P, 4] xyxy, the image's region proposals (best first), in input pixels
    "proposals": ("proposals",),
    # grid_size: int S; cells: Tensor[N, 2] (row, col) of the cell each detection came from
    "grid": ("grid_size", "cells"),
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


def attach_proposals(detections: list[dict[str, Any]], proposals: Sequence[Tensor]) -> None:
    """Add each image's ``proposals`` (``Tensor[P, 4]``) to its prediction dict, in place."""
    for det, props in zip(detections, proposals):
        det["proposals"] = props


class Detector(nn.Module):
    """Base of every detector: ``forward(images, targets=None, *, extras=())``.

    A subclass sets ``self.backbone`` (a :class:`~visionlab.models.backbones.Backbone`)
    and :attr:`supported_extras`, and implements :meth:`losses` and :meth:`detect`; it
    overrides a hook only where it has something to do.

    Attributes:
        supported_extras: the extras :meth:`forward` can add to eval outputs (keys in
            :data:`EXTRA_KEYS`), e.g. ``{"proposals"}`` for the R-CNN family, ``{"grid"}``
            for YOLO.
        stages: the stages of a model trained in stages, in order (R-CNN's: proposals,
            finetune, ...); :mod:`visionlab.engine.stages` runs them, ``train_stage`` by the
            Trainer on ``model.train_stage_data(dataset, indices, *, cache)``, the others by
            ``model.run_stage(name, dataset, indices, *, cache, progress) -> stats``. Empty
            (the default): one Trainer run.
        stage_images: training images the stages use (a seeded subset; 0 = all).
        stage_eval_images: validation images scored after the stages (0 = all, -1 = none).
    """

    supported_extras: ClassVar[frozenset[str]] = frozenset()
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
    ) -> dict[str, Tensor] | list[dict[str, Any]]:
        """The detector contract.

        Args:
            images: ``[Tensor[3, H_i, W_i]]`` float RGB in ``[0, 1]``; sizes may differ.
            targets: training only, one dict per image: ``boxes [N, 4]`` xyxy pixels,
                ``labels [N] int64`` in ``1..C`` (``N = 0``: an image without objects).
            extras: eval only: what to add to each prediction dict, a subset of
                :attr:`supported_extras` (see :data:`EXTRA_KEYS`); nothing is added
                unless asked for.

        Returns:
            Training mode: ``{"loss_*": Tensor[]}``, summed by the trainer. Eval mode: per
            image ``{"boxes": Tensor[N, 4] xyxy in that image's pixels, "labels":
            Tensor[N] int64 in 1..C, "scores": Tensor[N] (decreasing)}`` plus the keys of
            the extras asked for.

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
        return self.detect(images, wanted)

    def losses(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Training: the ``loss_*`` tensors of a batch (inputs already checked)."""
        raise NotImplementedError

    def detect(self, images: list[Tensor], extras: frozenset[str]) -> list[dict[str, Any]]:
        """Eval: one prediction dict per image, with the keys of ``extras`` (already
        checked against :attr:`supported_extras`)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------ hooks

    def prepare_data(self, datasets: Iterable[Any], *, transform: Any = None) -> None:
        """Work on the training and validation ``datasets`` (None entries skipped) once
        before training, their images as ``transform`` (the evaluation transform, which the
        engine passes; None = the datasets' own) gives them; the engine calls it on rank 0.
        Default: nothing."""

    def _backbone(self) -> nn.Module | None:
        return getattr(self, "backbone", None)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The backbone's parameters (a lower learning rate suits pretrained ones)."""
        backbone = self._backbone()
        return list(backbone.parameters()) if backbone is not None else []

    def head_parameters(self) -> list[nn.Parameter]:
        """Every parameter but the backbone's."""
        ids = {id(p) for p in self.backbone_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def freeze_backbone(self) -> None:
        """Train everything but the backbone (``transfer.freeze: backbone``): its layers
        get no gradients and keep their batch-norm statistics
        (:meth:`~visionlab.models.backbones.Backbone.freeze_to` of its last map)."""
        backbone = self._backbone()
        if backbone is None or not hasattr(backbone, "freeze_to"):
            raise VisionLabError(f"{model_name(self)} has no backbone to freeze")
        backbone.freeze_to(STRIDES[-1])

    def unfreeze_backbone(self) -> None:
        """Train the whole backbone again (``transfer.unfreeze_after``), the layers frozen
        by ``frozen_stride`` too: ``freeze_to(0)``, which leaves the stages the model never
        runs off."""
        backbone = self._backbone()
        if backbone is None or not hasattr(backbone, "freeze_to"):
            raise VisionLabError(f"{model_name(self)} has no backbone to unfreeze")
        backbone.freeze_to(0)

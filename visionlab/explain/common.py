"""What every family's explanation shares: a step (one numbered picture and its sentence),
the scene it explains (the image at the model's input size, its ground truth if any), the
objects a step may lean on (the ground truth, or the model's detections standing in for
it), and matplotlib figures turned into images."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from visionlab.viz import draw_detections

SHOWN_PROPOSALS = 200  # the proposals a picture draws, the first of their order


def search_how(mode: str, search_size: int | None) -> str:
    """The phrase naming how selective search ran: its ``mode`` and the size of the copy it
    searched (none: the image itself)."""
    size = f", on a copy {search_size} px on its longer side" if search_size else ""
    return f"{mode} mode{size}"


@dataclass
class Step:
    """One picture of an explanation.

    Attributes:
        name: a slug for the file name (``NN_name.png``).
        title: a few words for the page's heading.
        sentence: what the picture shows, in one or two sentences.
        image: the picture.
        facts: plain numbers and lists behind the picture (written to ``steps.json``).
    """

    name: str
    title: str
    sentence: str
    image: Image.Image
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scene:
    """What an explanation is about.

    Attributes:
        image: ``Tensor[3, H, W]`` in [0, 1], as the model's eval transform gives it (every
            box of an explanation is in its pixels).
        target: its ground truth (``boxes [N, 4]``, ``labels [N]`` 1..C, maybe ``label``
            for a classification sample), or None.
        score_threshold: detections below this are not drawn and stand in for no object.
        classes, predicates: the model's names.
    """

    image: Tensor
    target: dict[str, Any] | None
    score_threshold: float
    classes: list[str]
    predicates: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of :attr:`image`."""
        return int(self.image.shape[-2]), int(self.image.shape[-1])

    def has_boxes(self) -> bool:
        return self.target is not None and "boxes" in self.target


@dataclass
class Objects:
    """The objects a step labels anchors or cells against: ``boxes [N, 4]``, ``labels [N]``,
    and ``source``, a sentence saying where they come from."""

    boxes: Tensor
    labels: Tensor
    source: str
    ground_truth: bool


def objects_of(scene: Scene, detections: dict[str, Tensor]) -> Objects:
    """The ground-truth objects of ``scene``, or else its ``detections`` at or above the score
    threshold, standing in for them (the phrase says which)."""
    if scene.has_boxes():
        boxes = scene.target["boxes"].reshape(-1, 4).float()
        n = len(boxes)
        source = f"The objects are the image's {n} ground-truth box{'es' * (n != 1)}."
        return Objects(boxes, scene.target["labels"].reshape(-1).long(), source, True)
    keep = detections["scores"] >= scene.score_threshold
    n = int(keep.sum())
    source = (
        f"No ground truth was given: the model's {n} detection{'s' * (n != 1)} scoring at "
        f"least {scene.score_threshold:.2f} stand in for the objects."
    )
    return Objects(detections["boxes"][keep].float(), detections["labels"][keep], source, False)


@torch.no_grad()
def run_detector(model: nn.Module, scene: Scene, extras: Sequence[str] = ()) -> dict[str, Tensor]:
    """The model's prediction dict for the scene's image (eval mode, CPU tensors)."""
    return cpu_tensors(model([scene.image], extras=tuple(extras))[0])


def cpu_tensors(out: dict[str, Any]) -> dict[str, Any]:
    """``out`` with its tensors moved to the CPU."""
    return {k: v.cpu() if isinstance(v, Tensor) else v for k, v in out.items()}


def detections_step(scene: Scene, detections: dict[str, Tensor], what: str) -> Step:
    """The final detections (those at or above the score threshold), drawn."""
    keep = detections["scores"] >= scene.score_threshold
    n, total = int(keep.sum()), len(keep)
    picture = draw_detections(
        scene.image,
        detections["boxes"][keep],
        detections["labels"][keep],
        detections["scores"][keep],
        scene.classes,
        detections["masks"][keep] if "masks" in detections else None,
    )
    sentence = (
        f"{what}: {total} detection{'s' * (total != 1)} after class-wise NMS, {n} of them "
        f"scoring at least {scene.score_threshold:.2f} (drawn with class and score)."
    )
    return Step("detections", "Detections", sentence, picture, {"detections": n})


def figure(width: float, height: float) -> Any:
    """A matplotlib figure (object API, no pyplot state, no display) of ``width`` x
    ``height`` inches."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def figure_image(fig: Any) -> Image.Image:
    """An RGB image of the matplotlib figure ``fig``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")


def no_ticks(*axes: Any) -> None:
    """Remove the ticks (and their labels) of each matplotlib axes in ``axes``."""
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])


def image_array(image: Tensor) -> Any:
    """``[3, H, W]`` in [0, 1] as the ``[H, W, 3]`` numpy array matplotlib's ``imshow``
    takes."""
    return image.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy()


@contextmanager
def captured(module: nn.Module, *, inputs: bool = False) -> Iterator[list[Any]]:
    """Collect what ``module`` returns (or, with ``inputs``, its first argument) on each
    call inside the block, by a forward hook removed at the end."""
    seen: list[Any] = []
    if inputs:
        handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    else:
        handle = module.register_forward_hook(lambda _m, _args, out: seen.append(out))
    try:
        yield seen
    finally:
        handle.remove()

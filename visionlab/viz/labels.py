"""Draw per-pixel and per-image labels: semantic maps (overlay and VOC palette PNG) and
classification captions. Every function returns a new RGB PIL image (or writes the PNG asked
for); the input is never modified."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from visionlab.constants import IGNORE_INDEX
from visionlab.errors import VisionLabError
from visionlab.viz._common import (
    MIN_SIZE,
    add_legend,
    blend_masks,
    class_name,
    color_for,
    font,
    style_for,
    to_pil,
    upscale,
    voc_palette,
)

ImageLike = Tensor | Image.Image


def _check_semantic(semantic: Tensor) -> Tensor:
    sem = torch.as_tensor(semantic).detach().cpu()
    if sem.ndim != 2 or sem.is_floating_point():
        raise VisionLabError(
            f"semantic must be an integer [H, W] map, got {sem.dtype} {tuple(sem.shape)}"
        )
    if sem.numel() and (sem.min() < 0 or sem.max() > IGNORE_INDEX):
        raise VisionLabError(
            f"semantic labels must lie in 0..{IGNORE_INDEX} ({IGNORE_INDEX} = ignore)"
        )
    return sem.to(torch.uint8)


def draw_semantic(
    image: ImageLike,
    semantic: Tensor,
    class_names: Sequence[str] | None = None,
    alpha: float = 0.5,
    *,
    legend: bool = True,
    min_size: int | None = MIN_SIZE,
) -> Image.Image:
    """Blend a class map in VOC colours over the image (each class region tinted and
    outlined), with a legend of the classes present in a panel on the right.

    Args:
        semantic: int ``[H, W]``: 0 = background (not painted), k = ``class_names[k - 1]``,
            255 = ignore (VOC's cream).
        alpha: how much of a class colour replaces the image under it.
        min_size: enlarge the picture first so its longer side is at least this many pixels.

    Returns:
        The (enlarged) image, wider by the legend when a class is present.
    """
    sem = _check_semantic(semantic)
    src = to_pil(image)
    if (src.height, src.width) != tuple(sem.shape):
        raise VisionLabError(f"semantic is {tuple(sem.shape)}, image is {(src.height, src.width)}")
    pil, _ = upscale(src, min_size)
    present = [int(v) for v in sem.unique().tolist() if v != 0]
    if not present:
        return pil
    palette = voc_palette()
    colors = [palette[v] for v in present]
    width, _ = style_for(pil)
    pil = blend_masks(pil, torch.stack([sem == v for v in present]), colors, alpha, width)
    if not legend:
        return pil
    names = ["ignore" if v == IGNORE_INDEX else class_name(v, class_names, 1) for v in present]
    return add_legend(pil, list(zip(names, colors)))


def semantic_to_palette_png(semantic: Tensor, path: str | Path) -> Path:
    """Write a class map as a "P"-mode PNG with the VOC palette (the format of VOC's
    SegmentationClass files): pixel value = label, 255 kept as the ignore colour.

    Args:
        semantic: int ``[H, W]`` with values in 0..255.
    Returns:
        The path written.
    """
    sem = _check_semantic(semantic)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = Image.fromarray(sem.contiguous().numpy())  # "L": pixel value = label
    out.putpalette([c for rgb in voc_palette() for c in rgb])  # "L" -> "P", values untouched
    out.save(path, format="PNG")
    return path


def draw_classification(
    image: ImageLike,
    top_labels: Tensor | Sequence[int],
    top_scores: Tensor | Sequence[float],
    class_names: Sequence[str] | None = None,
    *,
    true_label: int | None = None,
    min_size: int | None = MIN_SIZE,
) -> Image.Image:
    """The image with a caption strip below: one line per top-k class with a score bar.

    Args:
        top_labels: ``[K]`` class indices, 0-based (label k is ``class_names[k]``).
        top_scores: ``[K]`` probabilities.
        true_label: when given, the caption names it (green if it is the top-1, else red);
            with no top labels the caption is just "label: name" (a ground-truth picture).
        min_size: enlarge the picture first so its longer side is at least this many pixels.

    Returns:
        An image as wide as the (upscaled) input and taller by the caption.
    """
    pil, _ = upscale(to_pil(image), min_size)
    labels = [int(v) for v in torch.as_tensor(top_labels).flatten().tolist()]
    scores = [float(v) for v in torch.as_tensor(top_scores).flatten().tolist()]
    if len(labels) != len(scores):
        raise VisionLabError(f"{len(labels)} top labels but {len(scores)} top scores")
    _, font_size = style_for(pil)
    line = font_size + 8
    rows = len(labels) + (true_label is not None)
    out = Image.new("RGB", (pil.width, pil.height + rows * line + 6), (255, 255, 255))
    out.paste(pil, (0, 0))
    draw = ImageDraw.Draw(out)
    y = pil.height + 4
    bar_w = pil.width // 3
    for rank, (lab, score) in enumerate(zip(labels, scores)):
        color = color_for(lab)
        draw.rectangle(
            (4, y + 2, 4 + int(bar_w * max(0.0, min(1.0, score))), y + line - 4), fill=color
        )
        draw.rectangle((4, y + 2, 4 + bar_w, y + line - 4), outline=(160, 160, 160))
        mark = " *" if true_label is not None and lab == true_label else ""
        draw.text(
            (bar_w + 10, y + 2),
            f"{rank + 1}. {class_name(lab, class_names, 0)} {score:.2f}{mark}",
            fill=(0, 0, 0),
            font=font(font_size),
        )
        y += line
    if true_label is not None:
        name = class_name(true_label, class_names, 0)
        if labels:  # a prediction: green when its top-1 is right, red when wrong
            text, fill = f"true: {name}", (0, 140, 0) if labels[0] == true_label else (200, 0, 0)
        else:  # ground truth only
            text, fill = f"label: {name}", (0, 0, 0)
        draw.text((4, y + 2), text, fill=fill, font=font(font_size))
    return out

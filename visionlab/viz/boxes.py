"""Draw the detector family's pictures: detections with masks, relationship arrows, region
proposals, anchors and the YOLO grid. Every function returns a new RGB PIL image; the input is
never modified. Boxes are always ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)`` absolute pixels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from visionlab.errors import VisionLabError
from visionlab.viz._common import (
    MIN_SIZE,
    Color,
    LabelPlacer,
    add_legend,
    along,
    as_boxes,
    blend_masks,
    class_name,
    color_for,
    draw_arrow,
    label_font_size,
    predicate_label,
    select_relations,
    small_font_size,
    style_for,
    to_pil,
    upscale,
)

ImageLike = Tensor | Image.Image
# a label to place: (text, colour, font size, candidate top-left corners, best first)
LabelJob = tuple[str, Color, int, list[tuple[float, float]]]


def _outline(x1: float, y1: float, x2: float, y2: float) -> tuple[float, float, float, float]:
    """Pillow's rectangle includes its far corner; a box (x1, y1, x2, y2) covers the pixels
    x1 .. x2 - 1, so its outline is drawn on the last pixel inside it."""
    return x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)


def _prepare_detections(
    pil: Image.Image,
    factor: float,
    boxes: Tensor,
    labels: Tensor | None,
    scores: Tensor | None,
    class_names: Sequence[str] | None,
    masks: Tensor | None,
    score_threshold: float,
    mask_alpha: float,
    color_by: str = "class",
    number: bool = False,
) -> tuple[Image.Image, list[LabelJob]]:
    """Masks (filled and outlined) and box outlines drawn; the box labels returned as (text,
    colour, font size, candidate top-left positions) for a :class:`LabelPlacer`, so later
    labels can avoid them. Each label's font is sized to its box, and its first choice is
    above the box, then inside its top, below it, then at its right end (all kept inside the
    picture by the placer). ``color_by``: ``"class"`` (colour of the label) or ``"instance"``
    (detection i gets ``color_for(i)``). ``number``: labels read "i: name" (i = the
    detection's index)."""
    if color_by not in ("class", "instance"):
        raise VisionLabError(f"color_by must be 'class' or 'instance', got {color_by!r}")
    n = len(boxes)
    labels = torch.ones(n, dtype=torch.int64) if labels is None else torch.as_tensor(labels).cpu()
    keep = torch.ones(n, dtype=torch.bool)
    if scores is not None:
        scores = torch.as_tensor(scores).detach().cpu().float()
        keep = scores >= score_threshold
    order = torch.nonzero(keep).flatten()
    if scores is not None:
        order = order[scores[order].argsort(descending=True)]
    colors = [color_for(int(labels[i]) if color_by == "class" else i) for i in order.tolist()]
    width, _ = style_for(pil)
    if masks is not None and len(order):
        m = torch.as_tensor(masks).detach().cpu()[order.flip(0)]  # best painted last, on top
        m = m > 0.5 if m.is_floating_point() else m.bool()
        size = (round(pil.height / factor), round(pil.width / factor))
        if tuple(m.shape[-2:]) != size:
            raise VisionLabError(f"masks are {tuple(m.shape[-2:])}, image is {size}")
        pil = blend_masks(pil, m, colors[::-1], mask_alpha, outline=width)
    draw = ImageDraw.Draw(pil)
    jobs = []
    measure = LabelPlacer(draw, pil.size)
    for i, color in reversed(list(zip(order.tolist(), colors))):
        x1, y1, x2, y2 = (boxes[i] * factor).tolist()
        draw.rectangle(_outline(x1, y1, x2, y2), outline=color, width=width)
    for i, color in zip(order.tolist(), colors):  # best first: it gets the best place
        x1, y1, x2, y2 = (boxes[i] * factor).tolist()
        text = class_name(labels[i], class_names, 1)
        if number:
            text = f"{i}: {text}"
        if scores is not None:
            text += f" {float(scores[i]):.2f}"
        font_size = label_font_size(x2 - x1, y2 - y1, pil)
        w, h = measure.size(text, font_size)
        places = [(x1, y1 - h), (x1, y1), (x1, y2), (x2 - w, y1 - h), (x1, y2 - h), (x2 - w, y2)]
        jobs.append((text, color, font_size, places))
    return pil, jobs


def draw_detections(
    image: ImageLike,
    boxes: Tensor,
    labels: Tensor | None = None,
    scores: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    masks: Tensor | None = None,
    score_threshold: float = 0.0,
    *,
    min_size: int | None = MIN_SIZE,
    mask_alpha: float = 0.45,
    color_by: str = "class",
) -> Image.Image:
    """Boxes with "name 0.93" labels and translucent, outlined instance masks.

    Args:
        image: float ``[3, H, W]`` in [0, 1] (or uint8, or a PIL image).
        boxes: ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)`` pixels of ``image``.
        labels: ``Tensor[N]`` int, 1..C (label k is ``class_names[k - 1]``; 0 = background).
        scores: ``Tensor[N]`` in [0, 1]; boxes below ``score_threshold`` are not drawn.
        masks: bool (or probabilities, cut at 0.5) ``[N, H, W]``.
        min_size: enlarge the picture first so its longer side is at least this many pixels
            (None: draw at the image's own size).
        color_by: ``"class"`` (a fixed colour per class) or ``"instance"`` (detection i,
            with its mask, outline and label, in ``color_for(i)``: neighbouring instances of
            one class stay apart).

    Returns:
        An RGB image the size of ``image`` (times the ``min_size`` factor). Higher scores are
        drawn on top; labels, in a font sized to their box, are placed inside the picture so
        that they overlap as little as possible (above the box, else inside, else below).
    """
    pil, factor = upscale(to_pil(image), min_size)
    pil, jobs = _prepare_detections(
        pil,
        factor,
        as_boxes(boxes),
        labels,
        scores,
        class_names,
        masks,
        score_threshold,
        mask_alpha,
        color_by,
    )
    placer = LabelPlacer(ImageDraw.Draw(pil), pil.size)
    for text, color, font_size, places in jobs:
        placer.place(text, color, font_size, places)
    return pil


def draw_relations(
    image: ImageLike,
    boxes: Tensor,
    relations: Tensor,
    predicate_names: Sequence[str] | None = None,
    *,
    labels: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    masks: Tensor | None = None,
    relation_scores: Tensor | None = None,
    score_threshold: float = 0.0,
    max_relations: int = 50,
    one_per_pair: bool = False,
    draw_boxes: bool = True,
    number_boxes: bool = False,
    min_size: int | None = MIN_SIZE,
) -> Image.Image:
    """Arrows from each subject box centre to its object box centre, labelled with the
    predicate (and score) along the arrow.

    Args:
        boxes: ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)``.
        relations: ``Tensor[R, 3]`` int: (subject index, predicate index, object index).
        predicate_names: predicate index p is ``predicate_names[p]`` (0-based).
        labels, class_names, masks: as in :func:`draw_detections`, for the boxes.
        relation_scores: ``Tensor[R]``; the best ``max_relations`` above the threshold are drawn
            (without scores: the first ``max_relations``).
        one_per_pair: draw only the first (best) relation of each unordered pair of boxes, so
            "A left of B" hides its mirror "B right of A" and busy scenes stay readable.
        draw_boxes: also draw the boxes, masks and class labels.
        number_boxes: box labels read "k: class" (k = the box's index), matching the nodes of
            :func:`~visionlab.viz.draw_scene_graph`.
        min_size: enlarge the picture first so its longer side is at least this many pixels.

    Box labels are sized to their box; predicate labels, which come second, are small.
    """
    boxes = as_boxes(boxes)
    pil, factor = upscale(to_pil(image), min_size)
    jobs: list[LabelJob] = []
    if draw_boxes:
        pil, jobs = _prepare_detections(
            pil, factor, boxes, labels, None, class_names, masks, 0.0, 0.45, number=number_boxes
        )
    rel, order = select_relations(
        relations, len(boxes), relation_scores, score_threshold, max_relations, one_per_pair
    )
    draw = ImageDraw.Draw(pil)
    placer = LabelPlacer(draw, pil.size)
    width, _ = style_for(pil)
    small = small_font_size(pil)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2 * factor
    for i in order.flip(0).tolist():  # best last, on top
        s, p, o = rel[i].tolist()
        score = None if relation_scores is None else relation_scores[i]
        text, color = predicate_label(p, predicate_names, score)
        start, end = tuple(centres[s].tolist()), tuple(centres[o].tolist())
        if s == o:  # a self-relation: a ring around the box centre
            r = 3 * (width + 1)
            ring = (start[0] - r, start[1] - r, start[0] + r, start[1] + r)
            draw.ellipse(ring, outline=color, width=width + 1)
        else:
            draw_arrow(draw, start, end, color, width + 1)
        places = along(start, end, placer.size(text, small), (0.5, 0.35, 0.65, 0.2, 0.8))
        jobs.append((text, color, small, places))
    # labels after all outlines and arrows, so no line crosses a label
    for text, color, font_size, places in jobs:
        placer.place(text, color, font_size, places)
    return pil


def draw_proposals(
    image: ImageLike,
    boxes: Tensor,
    max_boxes: int = 200,
    *,
    scores: Tensor | None = None,
    min_size: int | None = MIN_SIZE,
) -> Image.Image:
    """Region proposals as thin outlines, coloured by rank (first / best proposals warm),
    with a legend on the right saying how many there were and which colour is first.

    Args:
        boxes: ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)``, ranked (best first) unless ``scores``.
        max_boxes: draw at most this many.
        min_size: enlarge the picture first so its longer side is at least this many pixels.
    """
    boxes = as_boxes(boxes)
    if scores is not None:
        boxes = boxes[torch.as_tensor(scores).detach().cpu().argsort(descending=True)]
    shown = boxes[:max_boxes]
    pil, factor = upscale(to_pil(image), min_size)
    draw = ImageDraw.Draw(pil)
    width, _ = style_for(pil)
    k = max(1, len(shown) - 1)
    for i in range(len(shown) - 1, -1, -1):  # best drawn last, on top
        x1, y1, x2, y2 = (shown[i] * factor).tolist()
        draw.rectangle(
            _outline(x1, y1, x2, y2), outline=_rank_color(i / k), width=max(1, width - 1)
        )
    count = f"{len(shown)} of {len(boxes)}" if len(boxes) > len(shown) else f"{len(boxes)}"
    entries: list[tuple[str, Color | None]] = [(f"{count} proposals", None)]
    if len(shown):
        entries.append(("first", _rank_color(0.0)))
    if len(shown) > 1:
        entries.append(("last", _rank_color(1.0)))
    return add_legend(pil, entries)


def _rank_color(t: float) -> Color:
    """The colour of a proposal ``t`` of the way down the ranking: red -> yellow -> cyan."""
    return (int(255 * (1 - t) ** 0.5), int(80 + 175 * min(1.0, 2 * t)), int(255 * t))


def draw_anchors(
    image_size: tuple[int, int],
    anchors: Tensor,
    *,
    image: ImageLike | None = None,
    max_anchors: int = 100,
    margin: int | None = None,
    min_size: int | None = MIN_SIZE,
) -> Image.Image:
    """Anchor boxes on a blank canvas (or over ``image``) with a margin, so anchors that reach
    past the image border stay visible; each anchor shape (w, h) has its own colour, named in
    a legend on the right.

    Args:
        image_size: ``(H, W)`` of the image the anchors belong to.
        anchors: ``Tensor[A, 4]`` in ``(x1, y1, x2, y2)`` image pixels, e.g. the anchors of one
            feature-map location, or all of them (the first ``max_anchors`` are drawn).
        margin: canvas pixels around the image (default: what the anchors need, capped).
        min_size: enlarge the image first so its longer side is at least this many pixels.
    """
    h, w = image_size
    anchors = as_boxes(anchors)[:max_anchors]
    base = to_pil(image) if image is not None else Image.new("RGB", (w, h), (245, 245, 245))
    if base.size != (w, h):
        raise VisionLabError(f"image is {base.size[::-1]}, image_size is {(h, w)}")
    base, factor = upscale(base, min_size)
    if margin is None:
        over = torch.cat([-anchors[:, :2], anchors[:, 2:] - torch.tensor([w, h])], 1)
        margin = (
            int(min(max(over.max().item(), 0.0) if len(anchors) else 0.0, max(h, w)) * factor) + 8
        )
    canvas = Image.new("RGB", (base.width + 2 * margin, base.height + 2 * margin), (255, 255, 255))
    canvas.paste(base, (margin, margin))
    draw = ImageDraw.Draw(canvas)
    width, font_size = style_for(base)
    draw.rectangle(
        (margin - 1, margin - 1, margin + base.width, margin + base.height),
        outline=(0, 0, 0),
        width=1,
    )
    shapes: dict[tuple[int, int], int] = {}
    for a in anchors:
        shape = (round(float(a[2] - a[0])), round(float(a[3] - a[1])))
        color = color_for(shapes.setdefault(shape, len(shapes)))
        x1, y1, x2, y2 = (a * factor + margin).tolist()
        draw.rectangle(_outline(x1, y1, x2, y2), outline=color, width=width)
    return add_legend(
        canvas, [(f"{aw}x{ah}", color_for(k)) for (aw, ah), k in shapes.items()], font_size
    )


def responsible_cells_of(boxes: Tensor, image_size: tuple[int, int], S: int) -> Tensor:
    """``Tensor[N, 2]`` (row, col) of the S x S grid cell holding each box centre (YOLO v1: the
    cell "responsible" for detecting that object)."""
    h, w = image_size
    boxes = as_boxes(boxes)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    col = (cx / w * S).floor().long().clamp(0, S - 1)
    row = (cy / h * S).floor().long().clamp(0, S - 1)
    return torch.stack([row, col], dim=1)


def draw_grid(
    image: ImageLike,
    S: int,
    responsible_cells: Tensor | None = None,
    *,
    boxes: Tensor | None = None,
    labels: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    min_size: int | None = MIN_SIZE,
) -> Image.Image:
    """YOLO's S x S grid, with the responsible cells shaded and (optionally) the boxes and
    their centres.

    Args:
        S: cells per side.
        responsible_cells: ``Tensor[K, 2]`` (row, col), or bool ``[S, S]``; default: the cells
            holding the centres of ``boxes``.
        boxes: ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)``; drawn with their centre points.
        min_size: enlarge the picture first so its longer side is at least this many pixels
            (cells, boxes and centres scale with it).
    """
    if S < 1:
        raise VisionLabError(f"S must be >= 1, got {S}")
    src = to_pil(image)
    if responsible_cells is None and boxes is not None:
        responsible_cells = responsible_cells_of(boxes, (src.height, src.width), S)
    base, factor = upscale(src, min_size)
    cells = torch.zeros(0, 2, dtype=torch.long)
    if responsible_cells is not None:
        rc = torch.as_tensor(responsible_cells).detach().cpu()
        cells = torch.nonzero(rc) if rc.dtype == torch.bool else rc.long().reshape(-1, 2)
    cw, ch = base.width / S, base.height / S
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    odraw = ImageDraw.Draw(overlay)
    for r, c in cells.tolist():
        odraw.rectangle((c * cw, r * ch, (c + 1) * cw, (r + 1) * ch), fill=(255, 255, 0, 90))
    width, _ = style_for(base)
    for k in range(1, S):
        odraw.line((k * cw, 0, k * cw, base.height), fill=(255, 255, 255, 200), width=width)
        odraw.line((0, k * ch, base.width, k * ch), fill=(255, 255, 255, 200), width=width)
    out = Image.alpha_composite(base.convert("RGBA"), overlay).convert("RGB")
    if boxes is None:
        return out
    # boxes, labels and centre dots on top of the grid, so the grid never hides a label
    b = as_boxes(boxes) * factor
    out = draw_detections(out, b, labels, class_names=class_names, min_size=None)
    draw = ImageDraw.Draw(out)
    r = 2 + width
    labs = torch.ones(len(b)) if labels is None else torch.as_tensor(labels)
    for (x, y), lab in zip(((b[:, :2] + b[:, 2:]) / 2).tolist(), labs.tolist()):
        draw.ellipse(
            (x - r, y - r, x + r, y + r), fill=color_for(int(lab)), outline=(255, 255, 255)
        )
    return out

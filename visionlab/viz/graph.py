"""Draw a scene graph: the objects that take part in relations as nodes on a circle and the
relations as arrows labelled with their predicate, a picture to put beside the image."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from visionlab.viz._common import (
    INK,
    WHITE,
    Color,
    LabelPlacer,
    along,
    class_name,
    color_for,
    draw_arrow,
    font,
    predicate_label,
    select_relations,
    style_for,
    text_color,
)

LABEL_AT = 0.4  # predicate labels sit 40% of the way from the subject, so A->B and B->A differ

Node = tuple[tuple[float, float], tuple[float, float]]  # (centre, half sizes)


def _node_layout(
    count: int, size: int, top: float, node_sizes: Sequence[tuple[int, int]]
) -> list[tuple[float, float]]:
    """Centres of ``count`` nodes spread evenly on a circle that fits the canvas below ``top``,
    the first on the left, then clockwise; a single node sits in the middle."""
    cx, cy = size / 2, (size + top) / 2
    if count == 1:
        return [(cx, cy)]
    half_w = max(w for w, _ in node_sizes) / 2
    half_h = max(h for _, h in node_sizes) / 2
    radius = max(0.0, min(size / 2 - half_w, (size - top) / 2 - half_h) - 4)
    angles = [math.pi + 2 * math.pi * j / count for j in range(count)]
    return [(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in angles]


def _exit_point(
    centre: tuple[float, float],
    half: tuple[float, float],
    offset: tuple[float, float],
    direction: tuple[float, float],
) -> tuple[float, float]:
    """Where the ray from ``centre + offset`` along unit ``direction`` leaves the box of
    half-sizes ``half`` around ``centre`` (``offset`` lies inside the box)."""
    t = min(
        (math.copysign(h, d) - o) / d for h, o, d in zip(half, offset, direction) if abs(d) > 1e-9
    )
    return centre[0] + offset[0] + t * direction[0], centre[1] + offset[1] + t * direction[1]


def _edge(
    subject: Node, obj: Node, shift: float
) -> tuple[tuple[float, float], tuple[float, float]]:
    """(start, end) of an arrow from node ``subject`` to node ``obj``, each a (centre, half
    sizes) pair: on the line joining the centres moved ``shift`` pixels sideways (to the
    left of subject -> object), from border to border."""
    (sx, sy), (ox, oy) = subject[0], obj[0]
    length = math.hypot(ox - sx, oy - sy) or 1.0
    d = ((ox - sx) / length, (oy - sy) / length)
    offset = (d[1] * shift, -d[0] * shift)
    start = _exit_point(*subject, offset, d)
    return start, _exit_point(*obj, offset, (-d[0], -d[1]))


def draw_scene_graph(
    labels: Tensor,
    relations: Tensor,
    *,
    class_names: Sequence[str] | None = None,
    predicate_names: Sequence[str] | None = None,
    relation_scores: Tensor | None = None,
    score_threshold: float = 0.0,
    max_relations: int = 20,
    one_per_pair: bool = False,
    size: int = 384,
) -> Image.Image:
    """The relations of one image as a graph: a node per object that takes part in a drawn
    relation, an arrow from subject to object per relation.

    Nodes are rounded boxes in their class colour reading "k: class" (k = the object's index,
    as in ``draw_relations(..., number_boxes=True)``), spread evenly on a circle; arrows and
    their predicate labels are coloured by predicate as in
    :func:`~visionlab.viz.draw_relations`. Several relations between one pair of objects are
    drawn side by side.

    Args:
        labels: ``Tensor[N]`` int, 1..C (label k is ``class_names[k - 1]``).
        relations: ``Tensor[R, 3]`` int: (subject index, predicate index, object index).
        predicate_names: predicate index p is ``predicate_names[p]`` (0-based).
        relation_scores: ``Tensor[R]``; the best ``max_relations`` above the threshold are
            drawn, labelled with their score (without scores: the first ``max_relations``).
        one_per_pair: draw only the first (best) relation of each unordered pair of objects.
        size: the canvas is ``size`` x ``size`` pixels.

    Returns:
        An RGB image; with no relation to draw it reads "no relations".

    Raises:
        VisionLabError: a relation refers to an object outside 0..N-1.
    """
    labels = torch.as_tensor(labels).detach().cpu().long().reshape(-1)
    rel, order = select_relations(
        relations, len(labels), relation_scores, score_threshold, max_relations, one_per_pair
    )
    canvas = Image.new("RGB", (size, size), WHITE)
    draw = ImageDraw.Draw(canvas)
    placer = LabelPlacer(draw, canvas.size)
    width, font_size = style_for(canvas)
    small = max(10, font_size - 2)
    title = draw.textbbox((size / 2, 4), "scene graph", font=font(small), anchor="mt")
    draw.text((size / 2, 4), "scene graph", fill=INK, font=font(small), anchor="mt")
    placer.placed.append(title)
    if len(order) == 0:
        draw.text((size / 2, size / 2), "no relations", fill=INK, font=font(font_size), anchor="mm")
        return canvas

    chosen = rel[order].tolist()  # best first
    ids = sorted({s for s, _, _ in chosen} | {o for _, _, o in chosen})
    texts = [f"{k}: {class_name(labels[k], class_names, 1)}" for k in ids]
    ascent, descent = font(font_size).getmetrics()
    pad = max(2, font_size // 3)
    sizes = [
        (round(draw.textlength(t, font=font(font_size))) + 2 * pad, ascent + descent + pad)
        for t in texts
    ]
    centres = _node_layout(len(ids), size, title[3] + 4, sizes)
    nodes: dict[int, Node] = {k: (c, (w / 2, h / 2)) for k, c, (w, h) in zip(ids, centres, sizes)}

    # relations between one pair of objects run side by side, in lanes across the line that
    # joins the pair (counted from the lower index, so A->B and B->A part ways)
    pairs: dict[tuple[int, int], list[int]] = {}
    for j, (s, _, o) in enumerate(chosen):
        pairs.setdefault((min(s, o), max(s, o)), []).append(j)
    line = width + 1
    spacing = 2 * line + 4
    jobs: list[tuple[str, Color, list[tuple[float, float]]]] = []
    for j in range(len(chosen) - 1, -1, -1):  # best last, on top
        s, p, o = chosen[j]
        score = None if relation_scores is None else relation_scores[int(order[j])]
        text, color = predicate_label(p, predicate_names, score)
        w, h = placer.size(text, small)
        (x, y), (_, hh) = nodes[s]
        if s == o:  # a self-relation: a loop over the top of the node (which hides its base)
            r = hh + 2
            draw.ellipse((x - r, y - hh - r, x + r, y - hh + r), outline=color, width=line)
            jobs.append((text, color, [(x - w / 2, y - hh - r - h), (x + r, y - hh - r - h / 2)]))
            continue
        lane = pairs[(min(s, o), max(s, o))]
        shift = (lane.index(j) - (len(lane) - 1) / 2) * spacing * (1 if s < o else -1)
        limit = min(*nodes[s][1], *nodes[o][1]) - line  # the arrow ends on both borders
        start, end = _edge(nodes[s], nodes[o], max(-limit, min(limit, shift)))
        draw_arrow(draw, start, end, color, line)
        fractions = (LABEL_AT, LABEL_AT - 0.1, LABEL_AT + 0.1, LABEL_AT - 0.2, 0.5)
        jobs.append((text, color, along(start, end, (w, h), fractions)))

    for k, t in zip(ids, texts):
        (x, y), (hw, hh) = nodes[k]
        color = color_for(int(labels[k]))
        rect = (x - hw, y - hh, x + hw, y + hh)
        draw.rounded_rectangle(rect, radius=max(2, round(hh / 2)), fill=color)
        draw.text((x, y), t, fill=text_color(color), font=font(font_size), anchor="mm")
        placer.placed.append(rect)  # predicate labels keep clear of the nodes
    for text, color, places in reversed(jobs):  # best first: it gets the best place
        placer.place(text, color, small, places)
    return canvas

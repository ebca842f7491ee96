"""Shared drawing helpers: image conversion and enlargement, fixed colour palettes, fonts,
labels placed clear of each other, legend panels, translucent masks, arrows and the choice of
which relations a picture shows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache

import torch
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont
from torch import Tensor

from visionlab.constants import IGNORE_INDEX
from visionlab.errors import VisionLabError

Color = tuple[int, int, int]

# A fixed, high-contrast palette (Tableau 20 reordered so neighbours differ): class k always
# gets PALETTE[k % 20], so a class has the same colour in every picture and every run.
PALETTE: tuple[Color, ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
)  # fmt: skip
IGNORE_COLOR: Color = (224, 224, 192)  # VOC's colour for the 255 "ignore / boundary" label
WHITE: Color = (255, 255, 255)
INK: Color = (60, 60, 60)  # text and swatch outlines on white panels and canvases


def color_for(index: int) -> Color:
    """The fixed colour of class (or predicate, or run) ``index``."""
    return PALETTE[int(index) % len(PALETTE)]


@cache
def voc_palette() -> tuple[Color, ...]:
    """The 256-entry PASCAL VOC label palette (0 black, 1 maroon, 2 green, ...), with entry 255
    set to VOC's ignore colour. Built by spreading the bits of the label over R, G and B."""
    colors = []
    for label in range(256):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colors.append((r, g, b))
    colors[IGNORE_INDEX] = IGNORE_COLOR
    return tuple(colors)


def to_pil(image: Tensor | Image.Image) -> Image.Image:
    """An RGB PIL copy of ``image``: float ``[3, H, W]`` in [0, 1], uint8 ``[3, H, W]``,
    ``[H, W]`` grey, or a PIL image of any mode."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")  # convert() copies, so drawing never touches the input
    if not isinstance(image, Tensor):
        raise VisionLabError(f"expected an image tensor or PIL image, got {type(image).__name__}")
    x = image.detach().cpu()
    if x.ndim == 2:
        x = x.unsqueeze(0)
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise VisionLabError(f"expected an image of shape [3, H, W], got {tuple(image.shape)}")
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    if x.dtype != torch.uint8:
        x = (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(x.permute(1, 2, 0).contiguous().numpy(), mode="RGB")


# Small images are drawn enlarged until their longer side reaches this many pixels, so that
# labels, outlines and legends have room to be read (every drawing's ``min_size`` default).
MIN_SIZE = 512


def upscale(image: Image.Image, min_size: int | None = MIN_SIZE) -> tuple[Image.Image, float]:
    """Enlarge ``image`` so its longer side is at least ``min_size`` (integer factor, nearest,
    so pixels stay crisp; None or 0: as it is). Returns the image and the factor applied to
    coordinates."""
    if not min_size or max(image.size) >= min_size:
        return image, 1.0
    factor = -(-min_size // max(image.size))  # ceil
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST), float(factor)


@cache
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in font at ``size`` px (no font files, nothing downloaded)."""
    return ImageFont.load_default(size=size)


def style_for(image: Image.Image) -> tuple[int, int]:
    """(line width, font size) that read well at this image's size; the font size is the
    largest a label on this image gets (see :func:`label_font_size`)."""
    side = min(image.size)
    return max(1, round(side / 180)), max(11, round(side / 26))


def small_font_size(image: Image.Image) -> int:
    """The font size of the smallest labels on ``image`` (three fifths of :func:`style_for`'s):
    small objects' labels, and text that comes second, such as an arrow's predicate."""
    return max(10, round(0.6 * style_for(image)[1]))


def label_font_size(box_w: float, box_h: float, image: Image.Image) -> int:
    """The font size of a label for a ``box_w`` x ``box_h`` box on ``image``: in proportion
    to the box, between :func:`small_font_size` and :func:`style_for`'s size, so a small
    object's label hides less of the picture and a large one's reads at a glance."""
    by_box = round(math.sqrt(max(0.0, box_w) * max(0.0, box_h)) / 4)
    return int(min(style_for(image)[1], max(small_font_size(image), by_box)))


def text_color(background: Color) -> Color:
    """Black or white, whichever reads better on ``background``."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def _label_size(draw: ImageDraw.ImageDraw, text: str, font_size: int) -> tuple[int, int, int]:
    """(width, height, left bearing) of a label box; the height is the same for every text."""
    f = font(font_size)
    ascent, descent = f.getmetrics()
    left, _, right, _ = draw.textbbox((0, 0), text, font=f, anchor="ls")
    pad = max(1, font_size // 6)
    return right - left + 2 * pad, ascent + descent + 2 * pad, left


def _paint_label(
    draw: ImageDraw.ImageDraw, x: float, y: float, text: str, color: Color, font_size: int
) -> tuple[float, float, float, float]:
    f = font(font_size)
    w, h, left = _label_size(draw, text, font_size)
    pad = max(1, font_size // 6)
    draw.rectangle((x, y, x + w, y + h), fill=color)
    draw.text(
        (x + pad - left, y + pad + f.getmetrics()[0]),
        text,
        fill=text_color(color),
        font=f,
        anchor="ls",
    )
    return x, y, x + w, y + h


def draw_label(
    draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, color: Color, font_size: int
) -> None:
    """Text on a filled box of ``color`` whose top-left corner is ``xy``."""
    _paint_label(draw, *xy, text, color, font_size)


def add_legend(
    image: Image.Image,
    entries: Sequence[tuple[str, Color | None]],
    font_size: int | None = None,
) -> Image.Image:
    """``image`` with a white panel on its right listing ``entries`` top to bottom: a swatch
    of the colour, then the text (colour None: a line of text alone), in as many columns as
    the image's height needs. The image keeps its place (0, 0) and every pixel, so a legend
    never hides any of it. No entries: ``image`` itself."""
    if not entries:
        return image
    if font_size is None:
        _, font_size = style_for(image)
    f = font(font_size)
    ascent, descent = f.getmetrics()
    pad = max(2, font_size // 3)
    line = ascent + descent + pad
    swatch = ascent
    rows = max(1, (image.height - pad) // line)
    columns = [entries[k : k + rows] for k in range(0, len(entries), rows)]
    measure = ImageDraw.Draw(image)

    def entry_width(text: str, color: Color | None) -> float:
        return measure.textlength(text, font=f) + (swatch + pad if color is not None else 0)

    widths = [max(entry_width(*e) for e in col) for col in columns]
    panel_w = round(sum(widths) + pad * (2 * len(columns) + 1))
    height = max(image.height, pad + min(rows, len(entries)) * line)
    out = Image.new("RGB", (image.width + panel_w, height), WHITE)
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    x = image.width + 2 * pad
    for col, col_w in zip(columns, widths):
        y = pad
        for text, color in col:
            tx = x
            if color is not None:
                top = y + (ascent + descent - swatch) / 2
                draw.rectangle((x, top, x + swatch, top + swatch), fill=color, outline=INK)
                tx += swatch + pad
            draw.text((tx, y), text, fill=INK, font=f)
            y += line
        x += col_w + 2 * pad
    return out


class LabelPlacer:
    """Places labels so they overlap as little as possible: each label has candidate
    positions in order of preference; the first free one wins, else the least covered."""

    def __init__(self, draw: ImageDraw.ImageDraw, bounds: tuple[int, int]) -> None:
        self.draw, self.bounds = draw, bounds
        self.placed: list[tuple[float, float, float, float]] = []

    def size(self, text: str, font_size: int) -> tuple[int, int]:
        w, h, _ = _label_size(self.draw, text, font_size)
        return w, h

    def _overlap(self, rect: tuple[float, float, float, float]) -> float:
        total = 0.0
        for x1, y1, x2, y2 in self.placed:
            iw = min(rect[2], x2) - max(rect[0], x1)
            ih = min(rect[3], y2) - max(rect[1], y1)
            total += max(0.0, iw) * max(0.0, ih)
        return total

    def place(
        self, text: str, color: Color, font_size: int, candidates: Sequence[tuple[float, float]]
    ) -> None:
        """Draw ``text`` at the best of ``candidates`` (top-left corners)."""
        w, h = self.size(text, font_size)
        best, best_cost = None, math.inf
        for x, y in candidates:
            x = min(max(0, x), max(0, self.bounds[0] - w))
            y = min(max(0, y), max(0, self.bounds[1] - h))
            cost = self._overlap((x, y, x + w, y + h))
            if cost < best_cost:
                best, best_cost = (x, y), cost
            if cost == 0:
                break
        if best is not None:
            self.placed.append(_paint_label(self.draw, *best, text, color, font_size))


def _mask_image(mask: Tensor, size: tuple[int, int]) -> Image.Image:
    """A bool ``[h, w]`` mask as an "L" image (255 inside) resized (nearest) to ``size``."""
    m = Image.fromarray(mask.to(torch.uint8).mul_(255).numpy(), mode="L")
    return m if m.size == size else m.resize(size, Image.NEAREST)


def blend_masks(
    image: Image.Image, masks: Tensor, colors: list[Color], alpha: float = 0.45, outline: int = 0
) -> Image.Image:
    """Paint ``masks`` (bool ``[N, h, w]``, the image's size or an integer fraction of it)
    translucently onto ``image``, in order (later masks on top); ``outline`` > 0 also draws
    each mask's inner border, that many pixels wide, in its full colour."""
    for mask, color in zip(masks.bool(), colors):
        solid = Image.new("RGB", image.size, color)
        inside = _mask_image(mask, image.size)
        image = Image.composite(Image.blend(image, solid, alpha), image, inside)
        if outline > 0:  # the mask less its erosion: the pixels on its border
            border = ImageChops.subtract(
                inside, inside.filter(ImageFilter.MinFilter(2 * outline + 1))
            )
            image = Image.composite(solid, image, border)
    return image


def as_boxes(boxes: Tensor | None) -> Tensor:
    """``boxes`` as float ``Tensor[N, 4]`` on the CPU (empty when None)."""
    if boxes is None:
        return torch.zeros(0, 4)
    boxes = torch.as_tensor(boxes).detach().cpu().float()
    if boxes.numel() == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise VisionLabError(
            f"boxes must be Tensor[N, 4] (x1, y1, x2, y2), got {tuple(boxes.shape)}"
        )
    return boxes


def class_name(index: int, names: Sequence[str] | None, offset: int) -> str:
    """``names[index - offset]`` when it exists, else the number."""
    i = int(index) - offset
    return names[i] if names is not None and 0 <= i < len(names) else str(int(index))


def draw_arrow(
    draw: ImageDraw.ImageDraw,
    start: tuple[float, float],
    end: tuple[float, float],
    color: Color,
    width: int,
) -> None:
    """A line from ``start`` to ``end`` with a filled head whose tip is at ``end``."""
    head = 4 + 3 * width
    angle = math.atan2(end[1] - start[1], end[0] - start[0])
    draw.line((*start, *end), fill=color, width=width)
    left = (end[0] - head * math.cos(angle - 0.45), end[1] - head * math.sin(angle - 0.45))
    right = (end[0] - head * math.cos(angle + 0.45), end[1] - head * math.sin(angle + 0.45))
    draw.polygon((end, left, right), fill=color)


def predicate_label(
    predicate: int, names: Sequence[str] | None, score: float | Tensor | None = None
) -> tuple[str, Color]:
    """The text ("name" or "name 0.87") and colour of a relation's predicate; predicate
    colours are offset from class colours so they differ from the first classes'."""
    text = class_name(predicate, names, 0)
    if score is not None:
        text += f" {float(score):.2f}"
    return text, color_for(int(predicate) + 3)


def along(
    start: tuple[float, float],
    end: tuple[float, float],
    size: tuple[int, int],
    fractions: Sequence[float],
) -> list[tuple[float, float]]:
    """Top-left corners of a ``size`` (w, h) label centred at each fraction of the way from
    ``start`` to ``end``: candidate places for a :class:`LabelPlacer`."""
    w, h = size
    return [
        (start[0] + t * (end[0] - start[0]) - w / 2, start[1] + t * (end[1] - start[1]) - h / 2)
        for t in fractions
    ]


def select_relations(
    relations: Tensor,
    num_objects: int,
    relation_scores: Tensor | None = None,
    score_threshold: float = 0.0,
    max_relations: int = 50,
    one_per_pair: bool = False,
) -> tuple[Tensor, Tensor]:
    """Which relations a picture shows, best first.

    Args:
        relations: ``Tensor[R, 3]`` int: (subject index, predicate index, object index).
        num_objects: N; subjects and objects must lie in 0..N-1.
        relation_scores: ``Tensor[R]``; those below ``score_threshold`` are dropped and the rest
            sorted best first (without scores: the given order).
        one_per_pair: keep only the first (best) relation of each unordered pair of objects.

    Returns:
        ``(rel, order)``: ``relations`` as int64 ``Tensor[R, 3]`` on the CPU, and the indices
        of the chosen rows of ``rel``, best first, at most ``max_relations`` of them.
    """
    rel = torch.as_tensor(relations).detach().cpu().long().reshape(-1, 3)
    order = torch.arange(len(rel))
    if relation_scores is not None:
        s = torch.as_tensor(relation_scores).detach().cpu().float()
        order = order[s >= score_threshold]
        order = order[s[order].argsort(descending=True)]
    bad = (rel[order][:, [0, 2]] < 0) | (rel[order][:, [0, 2]] >= num_objects)
    if bad.any():
        raise VisionLabError(f"relations refer to objects outside 0..{num_objects - 1}")
    if one_per_pair:
        seen: set[tuple[int, int]] = set()
        first = []
        for i in order.tolist():
            pair = (min(rel[i, 0], rel[i, 2]).item(), max(rel[i, 0], rel[i, 2]).item())
            if pair not in seen:
                seen.add(pair)
                first.append(i)
        order = torch.tensor(first, dtype=torch.long)
    return rel, order[:max_relations]

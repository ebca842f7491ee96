"""Drawing one synthetic scene: shapes, textured backgrounds, occlusion and predicates.

Numpy (and Pillow to upsample one texture), no files: :func:`render_scene` turns (seed,
split, index) into an RGB image, its visible instance masks and its relationships. The
dataset, its rules and its file layout are described in :mod:`visionlab.data.scenes`; the
constants here are the ones it documents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

SCENE_CLASSES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "hexagon",
    "ring",
)
# Named object colours (RGB, 0..255). The colour of an object is drawn independently of its
# class, then jittered and shaded per object, so colour is no shortcut to the class.
SCENE_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 175, 60),
    "cyan": (40, 205, 225),
    "blue": (40, 70, 225),
    "purple": (135, 50, 195),
    "pink": (235, 90, 175),
}
# Priority order: an ordered pair (subject, object) gets the first predicate that holds.
# "left of" / "right of" are exclusive and adjacent, so a horizontal flip maps the label of
# every pair to its mirror (transforms.flip_predicate_pairs); the others are flip-invariant.
PREDICATES: tuple[str, ...] = (
    "inside",
    "in front of",
    "overlapping",
    "bigger than",
    "left of",
    "right of",
    "above",
    "below",
)

MAX_OBJECTS = 8  # objects sampled per image: uniform in 0..MAX_OBJECTS
MIN_OBJECT_SIZE = 8  # px, smallest circumscribed-circle diameter of a shape
MIN_VISIBLE_FRACTION = 0.25  # drop a shape with less of its full area visible
MIN_VISIBLE_SIDE = 6  # px, drop a shape whose visible box has a shorter longer side
NEST_PROBABILITY = 0.25  # chance that a shape is placed inside an earlier, larger one
FRONT_MIN_PIXELS = 4  # px of the object's shape hidden by the subject for "in front of"
BIGGER_RATIO = 4.0  # visible-area ratio for "bigger than" (twice the linear size)

_SPLIT_CODES = {"train": 0, "val": 1}
_STAR_INNER = 0.45  # inner / outer radius of the five-pointed star
_RING_INNER = 0.55  # hole radius / outer radius of the ring
_CROSS_HALF_WIDTH = 0.3  # arm half-width / circumradius of the cross


@dataclass
class SceneObject:
    """One shape as drawn, in z-order (later objects occlude earlier ones).

    ``full`` is the whole shape (``bool [h, w]``, before occlusion and clipping) in a window
    whose top-left pixel may lie outside the image; ``rows, cols`` are the image slices
    where that window meets the image and ``inside`` the shape there. ``visible`` (same
    slices) is what stays uncovered, filled in by :func:`render_scene` with its tight
    ``box`` ``(x1, y1, x2, y2)`` (x2, y2 exclusive, image pixels) and ``visible_area``.
    """

    category: int  # index into SCENE_CLASSES
    color: str
    size: float  # circumscribed-circle diameter in px
    cx: float
    cy: float
    full: np.ndarray
    rows: slice
    cols: slice
    inside: np.ndarray
    visible: np.ndarray | None = None
    box: tuple[int, int, int, int] = (0, 0, 0, 0)
    visible_area: int = 0

    @classmethod
    def place(
        cls,
        category: int,
        color: str,
        size: float,
        cx: float,
        cy: float,
        angle: float,
        *,
        image_size: int,
    ) -> SceneObject:
        """Rasterise the shape (see :func:`shape_mask`) and clip it to the image."""
        x0, y0, full = shape_mask(SCENE_CLASSES[category], size, cx, cy, angle)
        h, w = full.shape
        ix0, iy0 = min(max(x0, 0), image_size), min(max(y0, 0), image_size)
        ix1, iy1 = max(min(x0 + w, image_size), ix0), max(min(y0 + h, image_size), iy0)
        inside = full[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
        return cls(category, color, size, cx, cy, full, slice(iy0, iy1), slice(ix0, ix1), inside)

    @property
    def full_area(self) -> int:
        return int(self.full.sum())

    @property
    def visibility(self) -> float:
        """Visible pixels / pixels of the whole shape (occlusion and truncation)."""
        return self.visible_area / max(self.full_area, 1)

    def set_visible(self, visible: np.ndarray) -> None:
        """Store the visible part (``bool`` over ``rows, cols``), its area and its box."""
        self.visible = visible
        self.visible_area = int(np.count_nonzero(visible))
        rows = np.nonzero(visible.any(axis=1))[0]
        cols = np.nonzero(visible.any(axis=0))[0]
        if rows.size == 0:
            self.box = (0, 0, 0, 0)
        else:
            x1, y1 = self.cols.start + int(cols[0]), self.rows.start + int(rows[0])
            x2, y2 = self.cols.start + int(cols[-1]) + 1, self.rows.start + int(rows[-1]) + 1
            self.box = (x1, y1, x2, y2)

    def visible_mask(self, height: int, width: int) -> np.ndarray:
        """The visible pixels in the whole image, ``bool [height, width]``."""
        out = np.zeros((height, width), dtype=bool)
        assert self.visible is not None
        out[self.rows, self.cols] = self.visible
        return out


@dataclass
class Scene:
    """A rendered scene: ``image`` uint8 ``[H, W, 3]`` RGB, ``objects`` in z-order (only
    the annotated ones), ``instance_map`` int32 ``[H, W]`` (0 background, k + 1 for
    ``objects[k]``), ``relations`` as ``(subject index, predicate index, object index)``."""

    image: np.ndarray
    objects: list[SceneObject]
    instance_map: np.ndarray
    relations: list[tuple[int, int, int]]


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The independent generator of one image: same (seed, split, index), same image."""
    return np.random.default_rng([seed, _SPLIT_CODES[split], index])


def shape_mask(
    kind: str, size: float, cx: float, cy: float, angle: float
) -> tuple[int, int, np.ndarray]:
    """Rasterise one shape: pixel (x, y) is in when its centre (x + .5, y + .5) is.

    ``size`` is the diameter of the circumscribed circle, ``angle`` a rotation in radians.
    Returns ``(x0, y0, mask)``: the window's top-left pixel and ``bool [h, w]``.
    """
    r = size / 2.0
    x0, y0 = math.floor(cx - r), math.floor(cy - r)
    x1, y1 = math.ceil(cx + r) + 1, math.ceil(cy + r) + 1
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    c, s = math.cos(angle), math.sin(angle)
    u = dx * c + dy * s  # coordinates in the shape's own frame
    v = dy * c - dx * s
    if kind == "circle":
        mask = u * u + v * v <= r * r
    elif kind == "ring":
        rho2 = u * u + v * v
        mask = (rho2 <= r * r) & (rho2 >= (_RING_INNER * r) ** 2)
    elif kind in ("square", "triangle", "hexagon"):
        n = {"square": 4, "triangle": 3, "hexagon": 6}[kind]
        apothem = r * math.cos(math.pi / n)
        mask = np.ones(u.shape, dtype=bool)
        for k in range(n):  # intersection of n half-planes, one per edge normal
            t = (2 * k + 1) * math.pi / n
            mask &= u * math.cos(t) + v * math.sin(t) <= apothem
    elif kind == "star":
        mask = _star(u, v, r)
    elif kind == "cross":
        w = _CROSS_HALF_WIDTH * r
        a = math.sqrt(r * r - w * w)
        au, av = np.abs(u), np.abs(v)
        mask = ((au <= a) & (av <= w)) | ((au <= w) & (av <= a))
    else:
        raise ValueError(f"unknown shape {kind!r}; expected one of {SCENE_CLASSES}")
    return x0, y0, mask


def _star(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Five-pointed star: a point is in when it is on the inner side of the edge of the
    angular sector it falls in (exact for any polygon star-shaped about its centre)."""
    step = math.pi / 5
    radii = np.where(np.arange(11) % 2 == 0, r, _STAR_INNER * r)
    vx = radii * np.cos(np.arange(11) * step)
    vy = radii * np.sin(np.arange(11) * step)
    phi = np.mod(np.arctan2(v, u), 2 * math.pi)
    k = np.minimum((phi / step).astype(np.int64), 9)
    ex, ey = vx[k + 1] - vx[k], vy[k + 1] - vy[k]
    return ex * (v - vy[k]) - ey * (u - vx[k]) >= 0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Gradient between two random muted colours plus one texture; float32 [H, W, 3]."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = coords[:, None], coords[None, :]
    col_a = np.clip(rng.uniform(0.15, 0.85) + rng.uniform(-0.2, 0.2, 3), 0, 1)
    col_b = np.clip(rng.uniform(0.15, 0.85) + rng.uniform(-0.2, 0.2, 3), 0, 1)
    theta = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(theta), math.sin(theta)
    low = min(0, c) + min(0, s)  # the gradient runs from 0 to 1 across the image
    features = np.empty((size, size, 3), dtype=np.float32)  # [1, gradient, texture]
    features[..., 0] = 1
    features[..., 1] = (xx * c + yy * s - low) / (abs(c) + abs(s))
    texture = int(rng.integers(4))
    amplitude = rng.uniform(0.04, 0.14)
    tint = rng.uniform(0.5, 1.0, 3)  # texture colour direction
    if texture == 1:  # stripes at a random angle and period
        period, phase = rng.uniform(4, size / 4), rng.uniform(0, 2 * math.pi)
        alpha = rng.uniform(0, math.pi)
        pos = (xx * math.cos(alpha) + yy * math.sin(alpha)) * (2 * math.pi * size / period)
        features[..., 2] = np.sin(pos + phase)
    elif texture == 2:  # smooth blotches: coarse noise, bilinear upsampled
        cells = int(rng.integers(3, 12))
        coarse = Image.fromarray(rng.standard_normal((cells, cells)).astype(np.float32))
        features[..., 2] = np.asarray(coarse.resize((size, size), Image.Resampling.BILINEAR))
    elif texture == 3:  # checkerboard with a random cell size
        ij = np.arange(size) // int(rng.integers(4, max(size // 6, 5)))
        features[..., 2] = ((ij[:, None] + ij[None, :]) % 2) * 2.0 - 1
    else:
        features[..., 2] = 0
    mix = np.stack([col_a, col_b - col_a, amplitude * tint]).astype(np.float32)
    return features @ mix


def _sample_objects(rng: np.random.Generator, size: int) -> list[SceneObject]:
    """Draw 0..MAX_OBJECTS shapes with class, colour, size, place and angle (z-order)."""
    objects: list[SceneObject] = []
    max_size = size / 2
    names = list(SCENE_COLORS)
    for _ in range(int(rng.integers(0, MAX_OBJECTS + 1))):
        category = int(rng.integers(len(SCENE_CLASSES)))
        color = names[int(rng.integers(len(names)))]
        parents = [o for o in objects if o.size >= 3 * MIN_OBJECT_SIZE]
        if parents and rng.random() < NEST_PROBABILITY:
            # a smaller shape on (or in) an earlier one: "inside" / "in front of" cases
            parent = parents[int(rng.integers(len(parents)))]
            obj_size = rng.uniform(MIN_OBJECT_SIZE, parent.size / 2)
            cx = parent.cx + rng.uniform(-0.2, 0.2) * parent.size
            cy = parent.cy + rng.uniform(-0.2, 0.2) * parent.size
        else:  # log-uniform size: small objects are as common as large ones per octave
            obj_size = math.exp(rng.uniform(math.log(MIN_OBJECT_SIZE), math.log(max_size)))
            cx, cy = rng.uniform(0.05 * size, 0.95 * size, 2)
        angle = rng.uniform(0, 2 * math.pi)
        objects.append(SceneObject.place(category, color, obj_size, cx, cy, angle, image_size=size))
    return objects


def _paint_ids(objects: list[SceneObject], size: int) -> np.ndarray:
    """Instance map: later objects overwrite earlier ones (0 = background)."""
    ids = np.zeros((size, size), dtype=np.int32)
    for k, obj in enumerate(objects):
        ids[obj.rows, obj.cols][obj.inside] = k + 1
    return ids


def _set_visible(objects: list[SceneObject], ids: np.ndarray) -> None:
    for k, obj in enumerate(objects):
        obj.set_visible(ids[obj.rows, obj.cols] == k + 1)


def _keep(obj: SceneObject) -> bool:
    x1, y1, x2, y2 = obj.box
    return obj.visibility >= MIN_VISIBLE_FRACTION and max(x2 - x1, y2 - y1) >= MIN_VISIBLE_SIDE


def _paint(image: np.ndarray, obj: SceneObject, rng: np.random.Generator) -> None:
    """Fill the shape with its jittered colour and a linear shading across it."""
    base = np.asarray(SCENE_COLORS[obj.color], dtype=np.float32) / 255
    base = base + rng.uniform(-0.06, 0.06, 3).astype(np.float32)
    theta, amount = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.3)
    gy, gx = np.nonzero(obj.inside)
    ramp = (gx + obj.cols.start + 0.5 - obj.cx) * math.cos(theta)
    ramp += (gy + obj.rows.start + 0.5 - obj.cy) * math.sin(theta)
    shade = (1 + amount / max(obj.size, 1.0) * ramp).astype(np.float32)
    image[obj.rows, obj.cols][gy, gx] = base[None, :] * shade[:, None]


def relation_predicate(subj: SceneObject, obj: SceneObject, hidden_by_subject: int) -> int:
    """The predicate index of the ordered pair (subject, object).

    ``hidden_by_subject`` is the number of pixels of ``obj``'s whole shape that visible
    pixels of ``subj`` cover. The rules, tried in ``PREDICATES`` order, are documented in
    :mod:`visionlab.data.scenes`; two distinct visible objects always get one of them.
    """
    sx1, sy1, sx2, sy2 = subj.box
    ox1, oy1, ox2, oy2 = obj.box
    s_box_area = (sx2 - sx1) * (sy2 - sy1)
    o_box_area = (ox2 - ox1) * (oy2 - oy1)
    if sx1 >= ox1 and sy1 >= oy1 and sx2 <= ox2 and sy2 <= oy2 and s_box_area < o_box_area:
        return 0  # inside
    if hidden_by_subject >= FRONT_MIN_PIXELS:
        return 1  # in front of
    if min(sx2, ox2) > max(sx1, ox1) and min(sy2, oy2) > max(sy1, oy1):
        return 2  # overlapping
    if subj.visible_area >= BIGGER_RATIO * obj.visible_area:
        return 3  # bigger than
    if sx2 <= ox1:
        return 4  # left of
    if sx1 >= ox2:
        return 5  # right of
    # boxes that do not overlap are apart along x or y, so one of these holds
    return 6 if sy2 <= oy1 else 7  # above / below


def _relations(objects: list[SceneObject], ids: np.ndarray) -> list[tuple[int, int, int]]:
    hidden = np.zeros((len(objects), len(objects)), dtype=np.int64)  # [subject, object]
    for j, obj in enumerate(objects):
        under = ids[obj.rows, obj.cols][obj.inside]  # who is visible where obj's shape is
        counts = np.bincount(under, minlength=len(objects) + 1)[1:]
        hidden[:, j] = counts
        hidden[j, j] = 0
    relations = []
    for i, subj in enumerate(objects):
        for j, obj in enumerate(objects):
            if i != j:
                relations.append((i, relation_predicate(subj, obj, int(hidden[i, j])), j))
    return relations


def render_scene(size: int, seed: int, split: str, index: int) -> Scene:
    """Render image ``index`` of ``split``: same arguments, same pixels and annotations."""
    rng = scene_rng(seed, split, index)
    image = _background(rng, size)
    objects = _sample_objects(rng, size)
    ids = _paint_ids(objects, size)
    _set_visible(objects, ids)
    # Removing a shape only uncovers others, so one pass leaves every kept shape valid;
    # dropped shapes are not painted, so every shape pixel in the image is annotated.
    kept = [o for o in objects if _keep(o)]
    if len(kept) != len(objects):
        objects = kept
        ids = _paint_ids(objects, size)
        _set_visible(objects, ids)
    for obj in objects:
        _paint(image, obj, rng)
    rels = _relations(objects, ids)
    # uniform per-pixel noise with a standard deviation of 1% to 5% of the range
    spread = rng.uniform(0.01, 0.05) * 255 * math.sqrt(12)
    noise = rng.random(image.shape, dtype=np.float32)
    noise *= spread
    image *= 255
    image += noise
    image += 0.5 - spread / 2  # centres the noise; +0.5 rounds to nearest below
    return Scene(np.clip(image, 0, 255, out=image).astype(np.uint8), objects, ids, rels)

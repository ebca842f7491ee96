"""Look at a dataset: draw a deterministic sample of it (boxes, masks, labels, relationship
arrows, semantic overlays, class captions) into PNGs plus one contact sheet."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw
from torch import Tensor
from tqdm import tqdm

from visionlab.errors import VisionLabError
from visionlab.viz._common import INK, MIN_SIZE, draw_label, style_for
from visionlab.viz.boxes import draw_relations
from visionlab.viz.labels import draw_classification, draw_semantic


def image_grid(
    images: Sequence[Image.Image],
    cols: int,
    *,
    pad: int = 4,
    background: tuple[int, int, int] = (255, 255, 255),
    titles: Sequence[str] | None = None,
) -> Image.Image:
    """A contact sheet: ``images`` in rows of ``cols``, each centred in a cell as large as the
    largest image, ``pad`` pixels apart; optional ``titles`` under each image."""
    if not images:
        raise VisionLabError("image_grid needs at least one image")
    if cols < 1:
        raise VisionLabError(f"cols must be >= 1, got {cols}")
    cols = min(cols, len(images))
    rows = -(-len(images) // cols)
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images)
    font_size = style_for(Image.new("RGB", (cell_w, cell_h)))[1]
    title_h = font_size + 8 if titles else 0
    sheet = Image.new(
        "RGB",
        (cols * cell_w + (cols + 1) * pad, rows * (cell_h + title_h) + (rows + 1) * pad),
        background,
    )
    draw = ImageDraw.Draw(sheet)
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        x = pad + c * (cell_w + pad)
        y = pad + r * (cell_h + title_h + pad)
        sheet.paste(
            im.convert("RGB"), (x + (cell_w - im.width) // 2, y + (cell_h - im.height) // 2)
        )
        if titles:
            draw_label(draw, (x, y + cell_h + 2), titles[k], INK, font_size)
    return sheet


def _names(dataset: Any, attr: str) -> list[str] | None:
    names = getattr(dataset, attr, None)
    return list(names) if names else None


def draw_sample(
    image: Tensor | Image.Image,
    target: dict[str, Any],
    *,
    classes: Sequence[str] | None = None,
    predicates: Sequence[str] | None = None,
    task: str | None = None,
    min_size: int | None = MIN_SIZE,
    max_relations: int = 12,
) -> Image.Image:
    """Draw one ``(image, target)`` of the data contract, whatever the task: semantic
    overlay, boxes + masks + labels + relationship arrows, or a class caption.

    Args:
        classes: foreground class names (detection label k is ``classes[k - 1]``,
            classification label k is ``classes[k]``).
        task: the dataset's task; inferred from the target's fields when None.
        min_size: enlarge the picture first so its longer side is at least this many pixels.
        max_relations: relationship arrows drawn at most, one per pair of objects.
    """
    if task is None:
        if "semantic" in target:
            task = "segmentation"
        elif "boxes" in target:
            task = "detection"
        else:
            task = "classification"
    if task == "segmentation":
        if "semantic" not in target:
            raise VisionLabError("a segmentation target needs a 'semantic' field")
        return draw_semantic(image, target["semantic"], classes, min_size=min_size)
    if task == "classification":
        label = target.get("labels")
        if label is None:
            raise VisionLabError("a classification target needs a 'labels' field")
        label = int(torch.as_tensor(label).flatten()[0])
        return draw_classification(image, [], [], classes, true_label=label, min_size=min_size)
    boxes = target.get("boxes", torch.zeros(0, 4))
    return draw_relations(
        image,
        boxes,
        target.get("relations", torch.zeros(0, 3, dtype=torch.int64)),
        predicates,
        labels=target.get("labels"),
        class_names=classes,
        masks=target.get("masks"),
        one_per_pair=True,
        max_relations=max_relations,
        min_size=min_size,
    )


def show_dataset(
    dataset: Any,
    out_dir: str | Path,
    n: int = 8,
    seed: int = 0,
    *,
    min_size: int | None = MIN_SIZE,
    cols: int = 4,
    progress: bool = True,
) -> list[Path]:
    """Draw ``n`` samples of ``dataset`` (picked by a seeded permutation: the same seed gives
    the same samples) into ``out_dir/NN_<name>.png`` and a contact sheet ``out_dir/grid.png``.

    Args:
        dataset: a dataset of the contract: ``dataset[i] -> (image, target)``, ``len()``, and
            optional ``classes``, ``predicates``, ``task`` attributes.
        min_size: small images are enlarged (integer factor) until their longer side reaches
            this, so labels are readable.

    Returns:
        The paths written: one per sample, in the order drawn, then ``grid.png``.
    """
    size = len(dataset)
    if size == 0:
        raise VisionLabError("the dataset is empty: nothing to show")
    if n < 1:
        raise VisionLabError(f"n must be >= 1, got {n}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(size, generator=generator)[: min(n, size)].tolist()
    classes, predicates = _names(dataset, "classes"), _names(dataset, "predicates")
    task = getattr(dataset, "task", None)
    paths, drawn, titles = [], [], []
    for k, i in enumerate(tqdm(indices, desc="drawing", disable=not progress, leave=False)):
        image, target = dataset[i]
        picture = draw_sample(
            image, target, classes=classes, predicates=predicates, task=task, min_size=min_size
        )
        name = Path(str(target.get("file_name", f"sample{i}"))).stem or f"sample{i}"
        path = out_dir / f"{k:02d}_{name}.png"
        picture.save(path)
        paths.append(path)
        drawn.append(picture)
        titles.append(f"#{i} {name}")
    tile = max(min_size or 0, 128)
    thumbs = [p.copy() for p in drawn]
    for t in thumbs:
        t.thumbnail((tile, tile + tile // 2), Image.BILINEAR)
    sheet = image_grid(thumbs, cols, titles=titles)
    grid = out_dir / "grid.png"
    sheet.save(grid)
    return [*paths, grid]

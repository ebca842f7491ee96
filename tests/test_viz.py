"""Drawing: right sizes, pixels change where boxes are, dataset sheets, palette PNGs, curves."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from visionlab.errors import DataError, VisionLabError
from visionlab.viz import (
    PALETTE,
    color_for,
    draw_anchors,
    draw_classification,
    draw_detections,
    draw_grid,
    draw_proposals,
    draw_relations,
    draw_scene_graph,
    draw_semantic,
    image_grid,
    plot_curves,
    read_metrics,
    responsible_cells_of,
    semantic_to_palette_png,
    show_dataset,
    voc_palette,
)

H, W = 64, 96
CLASSES = ["circle", "square", "triangle"]
PREDICATES = ["left of", "right of", "above"]


def _image() -> torch.Tensor:
    return torch.full((3, H, W), 0.5)


def _pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).long()


def _changed(a: Image.Image, b: torch.Tensor) -> torch.Tensor:
    """[H, W] bool: where the drawing differs from the plain image ``b`` (same size)."""
    return (_pixels(a) - (b.permute(1, 2, 0) * 255).round().long()).abs().sum(-1) > 0


class FakeDataset(torch.utils.data.Dataset):
    """A tiny in-memory dataset with the contract of docs/interfaces.md."""

    def __init__(self, task: str, n: int = 5, size: int = 32) -> None:
        self.task, self.n, self.size = task, n, size
        self.classes, self.predicates = CLASSES, PREDICATES

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        s = self.size
        image = torch.rand(3, s, s, generator=torch.Generator().manual_seed(i))
        if self.task == "classification":
            return image, {"labels": torch.tensor(i % 3), "image_id": i, "file_name": f"c{i}.png"}
        boxes = torch.tensor([[2.0, 2.0, 14.0, 12.0], [16.0, 18.0, 30.0, 30.0]])
        masks = torch.zeros(2, s, s, dtype=torch.bool)
        masks[0, 2:12, 2:14] = True
        masks[1, 18:30, 16:30] = True
        if self.task == "segmentation":
            sem = masks[0].long() + 2 * masks[1].long()
            sem[0] = 255
            return image, {"semantic": sem, "image_id": i, "file_name": f"s{i}.png"}
        target = {
            "boxes": boxes,
            "labels": torch.tensor([1, 1 + i % 3]),
            "masks": masks,
            "relations": torch.tensor([[0, 2, 1]]),
            "image_id": i,
            "file_name": f"d{i}.png",
        }
        return image, target


def test_draw_detections_marks_boxes_at_the_image_size():
    image = _image()
    boxes = torch.tensor([[10.0, 20.0, 40.0, 50.0]])
    out = draw_detections(
        image, boxes, torch.tensor([2]), torch.tensor([0.9]), CLASSES, min_size=None
    )
    assert out.size == (W, H) and out.mode == "RGB"
    changed = _changed(out, image)
    assert changed[35, 10] and changed[35, 40 - 1]  # left and right edges drawn
    assert not changed[35, 25] and not changed[60, 80]  # inside and far away untouched
    assert tuple(_pixels(out)[35, 10].tolist()) == color_for(2)  # fixed colour per class
    # the "square 0.90" label sits just above the box
    assert changed[12:20, 10:30].any()


def test_draw_detections_threshold_masks_and_upscale():
    image = _image()
    boxes = torch.tensor([[5.0, 5.0, 30.0, 30.0], [50.0, 10.0, 90.0, 60.0]])
    masks = torch.zeros(2, H, W, dtype=torch.bool)
    masks[1, 20:50, 60:80] = True
    out = draw_detections(
        image,
        boxes,
        torch.tensor([1, 2]),
        torch.tensor([0.2, 0.8]),
        CLASSES,
        masks,
        0.5,
        min_size=None,
    )
    changed = _changed(out, image)
    assert not changed[15, 5]  # the 0.2 box is below the threshold
    assert changed[35, 70]  # inside the mask of the kept box: tinted
    big = draw_detections(image, boxes, masks=masks, min_size=200)
    assert big.size == (W * 3, H * 3)  # the longer side 96 -> 288, the first factor >= 200
    assert image.shape == (3, H, W) and (image == 0.5).all()  # input untouched


def test_draw_relations_draws_arrow_between_centres():
    image = _image()
    boxes = torch.tensor([[4.0, 24.0, 20.0, 40.0], [70.0, 24.0, 86.0, 40.0]])
    rel = torch.tensor([[0, 0, 1]])
    out = draw_relations(image, boxes, rel, PREDICATES, draw_boxes=False, min_size=None)
    assert out.size == (W, H)
    changed = _changed(out, image)
    assert changed[32, 25] and changed[32, 60]  # along the line between the centres
    assert not changed[5, 45]
    with pytest.raises(VisionLabError, match="outside"):
        draw_relations(image, boxes, torch.tensor([[0, 0, 5]]), PREDICATES)
    # the mirror "1 right of 0" adds nothing to the picture once "0 left of 1" is drawn
    both = torch.tensor([[0, 0, 1], [1, 1, 0]])
    kw = {"draw_boxes": False, "min_size": None}
    one = draw_relations(image, boxes, both, PREDICATES, one_per_pair=True, **kw)
    assert _pixels(one).equal(_pixels(out))
    assert not _pixels(draw_relations(image, boxes, both, PREDICATES, **kw)).equal(_pixels(out))


def test_draw_semantic_and_palette_png_round_trip(tmp_path):
    sem = torch.zeros(H, W, dtype=torch.int64)
    sem[10:30, 10:40] = 1
    sem[40:60, 50:90] = 20
    sem[0] = 255
    out = draw_semantic(_image(), sem, CLASSES, legend=False, min_size=None)
    changed = _changed(out, _image())
    assert out.size == (W, H) and changed[20, 20] and changed[50, 70] and not changed[35, 45]
    path = semantic_to_palette_png(sem, tmp_path / "sub" / "mask.png")
    with Image.open(path) as png:
        assert png.mode == "P"
        assert torch.equal(torch.from_numpy(np.array(png)).long(), sem)
        palette = png.getpalette()
    assert tuple(palette[3:6]) == (128, 0, 0)  # VOC: 1 = maroon
    assert tuple(palette[255 * 3 : 256 * 3]) == voc_palette()[255] == (224, 224, 192)
    with pytest.raises(VisionLabError, match=r"0\.\.255"):
        semantic_to_palette_png(sem + 300, tmp_path / "bad.png")


def test_proposals_anchors_grid_classification_sizes():
    image = _image()
    props = torch.tensor([[0.0, 0.0, 20.0, 20.0]] * 5 + [[40.0, 30.0, 60.0, 50.0]] * 5)
    out = draw_proposals(image, props, max_boxes=5, min_size=None)
    assert out.height == H and out.width > W  # the legend on the right
    assert not _changed(out.crop((0, 0, W, H)), image)[40, 40]  # proposals 6.. are not drawn
    anchors = torch.tensor([[-16.0, -8.0, 48.0, 24.0], [8.0, 8.0, 24.0, 24.0]])
    a = draw_anchors((H, W), anchors, min_size=None)
    assert a.width > W and a.height > H  # margin for the anchor reaching past the border
    grid = draw_grid(image, 4, torch.tensor([[0, 0]]), min_size=None)
    assert grid.size == (W, H)
    px = _pixels(grid)
    assert px[5, 5, 2] < px[5, 60, 2]  # the responsible cell is tinted yellow (less blue)
    # the first vertical grid line (x = W / 4) is white at alpha 200 over the grey 128 image
    line = round(128 + (255 - 128) * 200 / 255)
    assert px[30, W // 4].tolist() == [line] * 3
    assert px[30, W // 4 - 1].tolist() == px[30, W // 4 + 1].tolist() == [128] * 3  # 1 px wide
    cls = draw_classification(image, [2, 0], [0.7, 0.2], CLASSES, true_label=2, min_size=None)
    assert cls.width == W and cls.height > H
    boxes = torch.tensor([[0.0, 0.0, 30.0, 30.0], [60.0, 40.0, 90.0, 60.0]])
    assert responsible_cells_of(boxes, (H, W), 4).tolist() == [[0, 0], [3, 3]]


def test_image_grid_layout():
    images = [Image.new("RGB", (10, 20), color_for(k)) for k in range(5)]
    sheet = image_grid(images, cols=3, pad=2)
    assert sheet.size == (3 * 10 + 4 * 2, 2 * 20 + 3 * 2)
    assert sheet.getpixel((2 + 12 * 2 + 5, 2 + 10)) == PALETTE[2]
    with pytest.raises(VisionLabError):
        image_grid([], cols=2)


@pytest.mark.parametrize("task", ["detection", "segmentation", "classification"])
def test_show_dataset_writes_n_pictures_and_a_sheet(tmp_path, task):
    ds = FakeDataset(task)
    paths = show_dataset(ds, tmp_path / task, n=3, seed=1, progress=False)
    assert len(paths) == 4 and paths[-1].name == "grid.png"
    assert sorted(p.name for p in (tmp_path / task).iterdir()) == sorted(p.name for p in paths)
    for p in paths[:-1]:
        with Image.open(p) as im:
            assert max(im.size) >= 512  # 32 px samples are enlarged to be readable
    again = show_dataset(ds, tmp_path / "again", n=3, seed=1, progress=False)
    assert [p.name for p in again] == [p.name for p in paths]  # same seed, same samples
    assert len(show_dataset(ds, tmp_path / "all", n=50, progress=False)) == len(ds) + 1


def test_plot_curves_writes_png(tmp_path):
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    for run, scale in ((run_a, 1.0), (run_b, 0.5)):
        run.mkdir()
        lines = [json.dumps({"step": s, "loss": scale / (s + 1)}) for s in range(30)]
        lines += [json.dumps({"epoch": e, "val/top1": 0.5 + e / 10 * scale}) for e in range(3)]
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    out = plot_curves(
        [run_a, run_b / "metrics.jsonl"],
        ["loss", "val/top1"],
        tmp_path / "c.png",
        title="t",
        smooth=0.5,
    )
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 400
    assert len(read_metrics(run_a)) == 33
    with pytest.raises(DataError, match="nope"):
        plot_curves({"a": run_a}, ["nope"], tmp_path / "d.png")
    (tmp_path / "bad.jsonl").write_text('{"step": 1}\n{oops\n')
    with pytest.raises(DataError, match="line 2"):
        read_metrics(tmp_path / "bad.jsonl")


def test_plot_grouped_bars_draws_a_bar_per_series_and_group(tmp_path):
    from visionlab.viz import plot_grouped_bars

    groups = ["< 12 px", "12-20 px", ">= 32 px"]
    series = {"fcn8s": [0.34, 0.5, float("nan")], "classifier": [0.83, 0.94, 0.94]}
    out = plot_grouped_bars(groups, series, tmp_path / "sub" / "bars.png", ylabel="named (%)")
    image = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert image.shape[0] > 100 and image.shape[1] > 200
    for k in range(2):  # both series' colours are painted
        color = np.array(color_for(k))
        assert (np.abs(image - color).sum(-1) < 30).sum() > 50
    with pytest.raises(VisionLabError, match="3 values"):
        plot_grouped_bars(groups, {"short": [0.1, 0.2]}, tmp_path / "x.png", ylabel="y")


def test_draw_detections_colours_instances_apart_and_outlines_masks():
    image = _image()
    boxes = torch.tensor([[10.0, 10.0, 40.0, 40.0], [50.0, 10.0, 90.0, 50.0]])
    masks = torch.zeros(2, H, W, dtype=torch.bool)
    masks[0, 15:35, 15:35] = True
    masks[1, 20:45, 55:85] = True
    labels, scores = torch.tensor([1, 1]), torch.tensor([0.9, 0.8])  # one class, two objects
    kw = {"min_size": None}
    by_class = _pixels(draw_detections(image, boxes, labels, scores, CLASSES, masks, **kw))
    out = draw_detections(image, boxes, labels, scores, CLASSES, masks, color_by="instance", **kw)
    px = _pixels(out)
    # each mask's border in its instance's own colour, its inside tinted (translucent)
    assert tuple(px[25, 15].tolist()) == color_for(0)
    assert tuple(px[30, 55].tolist()) == color_for(1)
    assert tuple(by_class[25, 15].tolist()) == tuple(by_class[30, 55].tolist()) == color_for(1)
    inside = tuple(px[25, 25].tolist())
    assert inside != color_for(0) and inside != (128, 128, 128)
    assert not _changed(out, image)[60, 5]  # background untouched
    with pytest.raises(VisionLabError, match="color_by"):
        draw_detections(image, boxes, labels, scores, CLASSES, masks, color_by="rainbow")


def _where(px: torch.Tensor, color: tuple[int, int, int]) -> torch.Tensor:
    """[H, W] bool: the pixels of exactly ``color``."""
    return (px == torch.tensor(color)).all(-1)


def _bbox(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2), inclusive, of the True pixels."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def test_draw_scene_graph_nodes_on_a_circle_and_arrows_between_them():
    size = 384
    labels = torch.tensor([1, 2, 3, 4])  # node k in color_for(k + 1)
    predicate = 5  # drawn in color_for(8): no node has that colour
    rel = torch.tensor([[0, predicate, 1], [2, predicate, 3]])
    out = draw_scene_graph(labels, rel, class_names=CLASSES, size=size)
    assert out.size == (size, size) and out.mode == "RGB"
    px = _pixels(out)
    assert tuple(px[size - 2, 2].tolist()) == (255, 255, 255)  # a white canvas
    boxes = [_bbox(_where(px, color_for(k + 1))) for k in range(4)]
    for k, (x1, y1, x2, y2) in enumerate(boxes):  # filled nodes in their class colour
        assert x2 - x1 > 20 and y2 - y1 > 8
        inside = _where(px[y1 : y2 + 1, x1 : x2 + 1], color_for(k + 1))
        assert inside.float().mean() > 0.5
    centres = torch.tensor([[(x1 + x2) / 2, (y1 + y2) / 2] for x1, y1, x2, y2 in boxes])
    # the first node on the left, then clockwise: top, right, bottom, all as far from the middle
    left, top, right, bottom = centres.tolist()
    assert left[0] < top[0] < right[0] and top[1] < left[1] < bottom[1]
    middle = (centres[0] + centres[2]) / 2
    assert abs(left[1] - right[1]) <= 1 and abs(top[0] - bottom[0]) <= 1
    assert abs(float(middle[0]) - size / 2) <= 1 and abs(top[0] - size / 2) <= 1
    radii = (centres - middle).norm(dim=1)
    assert float(radii.max() - radii.min()) <= 2
    # an arrow of the predicate colour from node 0 to node 1 (half-way along the diagonal)
    x, y = ((centres[0] + centres[1]) / 2).round().long().tolist()
    assert _where(px[y - 4 : y + 5, x - 4 : x + 5], color_for(predicate + 3)).any()
    # only objects in a drawn relation become nodes
    two = _pixels(draw_scene_graph(labels, rel[:1], class_names=CLASSES, size=size))
    assert _where(two, color_for(1)).any() and not _where(two, color_for(3)).any()


def test_draw_scene_graph_labels_opposite_edges_apart():
    size = 384
    labels = torch.tensor([1, 2])
    rel = torch.tensor([[0, 0, 1], [1, 1, 0]])  # "0 left of 1" and "1 right of 0"
    px = _pixels(draw_scene_graph(labels, rel, predicate_names=PREDICATES, size=size))
    a, b = _bbox(_where(px, color_for(1))), _bbox(_where(px, color_for(2)))
    assert a[2] < size / 2 < b[0] and abs((a[1] + a[3]) - (b[1] + b[3])) <= 1  # left, right
    start, end = a[2], b[0]  # the arrows run between the node borders
    row = (a[1] + a[3]) // 2
    for p in (0, 1):  # both arrows run side by side along the middle row (bar under a label)
        lane = _where(px[row - 8 : row + 9, start + 2 : end - 1], color_for(p + 3)).any(0)
        assert lane.float().mean() > 0.6

    def label_box(color: tuple[int, int, int]) -> tuple[int, int]:
        # columns with more of the colour than a 3-pixel line: the filled label box
        tall = _where(px[:, start + 20 : end - 20], color).sum(0) > 5
        cols = torch.nonzero(tall).flatten() + start + 20
        return int(cols.min()), int(cols.max())

    forward, backward = label_box(color_for(3)), label_box(color_for(4))
    assert forward[1] < backward[0]  # two separate boxes
    # each label 40% of the way from its subject: "left of" near node 0, "right of" near 1
    assert abs(sum(forward) / 2 - (start + 0.4 * (end - start))) <= 3
    assert abs(sum(backward) / 2 - (end - 0.4 * (end - start))) <= 3


def test_draw_scene_graph_empty_scores_and_errors():
    labels = torch.tensor([1, 2, 3])
    empty = draw_scene_graph(labels, torch.zeros(0, 3, dtype=torch.long), size=200)
    px = _pixels(empty)
    assert empty.size == (200, 200)
    ink = (px < 128).all(-1)
    assert ink[90:110, 40:160].any() and ink[:20].any()  # "no relations" and the title
    assert not ink[30:85].any() and not ink[115:].any()
    assert not any(_where(px, color_for(k)).any() for k in (1, 2, 3))  # no nodes
    rel = torch.tensor([[0, 2, 1], [1, 2, 0], [2, 2, 2]])
    scores = torch.tensor([0.9, 0.6, 0.1])
    # nothing above the threshold is the empty picture, not an error
    none = draw_scene_graph(labels, rel, relation_scores=scores, score_threshold=0.95, size=200)
    assert _pixels(none).equal(px)
    # the same selection as draw_relations: one per pair keeps the best of 0->1 and 1->0
    kw = {"score_threshold": 0.5, "predicate_names": PREDICATES}
    one = draw_scene_graph(labels, rel, relation_scores=scores, one_per_pair=True, **kw)
    first = draw_scene_graph(labels, rel[:1], relation_scores=scores[:1], **kw)
    assert _pixels(one).equal(_pixels(first))
    both = draw_scene_graph(labels, rel, relation_scores=scores, **kw)
    assert not _pixels(one).equal(_pixels(both))
    best = draw_scene_graph(labels, rel[[1, 0]], relation_scores=scores[[1, 0]], max_relations=1)
    assert _pixels(best).equal(
        _pixels(draw_scene_graph(labels, rel[:1], relation_scores=scores[:1]))
    )
    # a self-relation: one node in the middle with a loop of the predicate colour above it
    loop = _pixels(draw_scene_graph(labels, rel[2:], size=200))
    x1, y1, x2, _ = _bbox(_where(loop, color_for(3)))
    assert abs((x1 + x2) / 2 - 100) <= 1
    assert _where(loop[y1 - 12 : y1, x1:x2], color_for(2 + 3)).any()
    for bad in ([[0, 0, 3]], [[-1, 0, 1]]):
        with pytest.raises(VisionLabError, match="outside"):
            draw_scene_graph(labels, torch.tensor(bad))


def test_draw_relations_numbers_boxes_to_match_the_graph():
    image = _image()
    boxes = torch.tensor([[10.0, 20.0, 40.0, 50.0], [60.0, 20.0, 90.0, 50.0]])
    rel, labels = torch.tensor([[0, 0, 1]]), torch.tensor([1, 2])
    kw = {"labels": labels, "class_names": CLASSES, "min_size": None}
    plain = draw_relations(image, boxes, rel, PREDICATES, **kw)
    same = draw_relations(image, boxes, rel, PREDICATES, number_boxes=False, **kw)
    numbered = draw_relations(image, boxes, rel, PREDICATES, number_boxes=True, **kw)
    assert _pixels(same).equal(_pixels(plain))
    # "0: circle" is a wider label than "circle": more of the class colour above box 0
    above = slice(0, 20)
    wide = _where(_pixels(numbered)[above], color_for(1)).sum()
    assert wide > _where(_pixels(plain)[above], color_for(1)).sum()


# Pictures a person can read: small images are drawn enlarged, labels stay inside the
# picture, legends sit beside the image, masks are translucent.
SMALL = 128  # the scenes dataset's image size
BIG = 512  # the longer side a small image is drawn at by default


def _small_image() -> torch.Tensor:
    """A ``[3, SMALL, SMALL]`` image whose pixels all differ from their neighbours', so a
    resize other than nearest-neighbour, or a shifted paste, changes the picture."""
    return torch.rand(3, SMALL, SMALL, generator=torch.Generator().manual_seed(0))


def _enlarged(image: torch.Tensor, factor: int) -> torch.Tensor:
    """``[H * factor, W * factor, 3]`` int: the image enlarged by repeating each pixel."""
    px = (image.permute(1, 2, 0) * 255).round().long()
    return px.repeat_interleave(factor, 0).repeat_interleave(factor, 1)


def test_small_images_are_drawn_enlarged_with_boxes_cells_and_masks_scaled():
    image = _small_image()
    boxes = torch.tensor([[10.0, 20.0, 40.0, 50.0], [70.0, 60.0, 120.0, 100.0]])
    labels, scores = torch.tensor([1, 2]), torch.tensor([0.9, 0.8])
    masks = torch.zeros(2, SMALL, SMALL, dtype=torch.bool)
    masks[0, 25:45, 15:35] = True
    semantic = masks[0].long() + 2 * masks[1].long()
    rel = torch.tensor([[0, 0, 1]])
    drawings = {
        "detections": draw_detections(image, boxes, labels, scores, CLASSES),
        "instances": draw_detections(image, boxes, labels, scores, CLASSES, masks),
        "semantic": draw_semantic(image, semantic, CLASSES),
        "grid": draw_grid(image, 7, boxes=boxes, labels=labels, class_names=CLASSES),
        "proposals": draw_proposals(image, boxes),
        "relations": draw_relations(image, boxes, rel, PREDICATES, labels=labels),
        "classification": draw_classification(image, [1], [0.9], CLASSES),
    }
    for name, drawing in drawings.items():
        assert max(drawing.size) >= BIG, name
        assert min(drawing.size) >= BIG, name  # a square image: both sides
    factor = BIG // SMALL
    # nothing to draw: exactly the image, every pixel repeated factor x factor times
    plain = draw_detections(image, torch.zeros(0, 4))
    assert _pixels(plain).equal(_enlarged(image, factor))
    # the box (10, 20, 40, 50) is outlined at (40, 80, 160, 200): its left edge in the class
    # colour, the pixels just outside it the image's
    px = _pixels(drawings["detections"])
    assert tuple(px[140, 40].tolist()) == color_for(1)
    assert px[140, 39].equal(_enlarged(image, factor)[140, 39])
    # the responsible cell of box 0's centre (25, 35) -> row 1, col 1 of 7 is tinted there
    grid = _pixels(drawings["grid"]).float()
    cell = BIG / 7
    r = c = int(1.5 * cell)
    assert grid[r, c - 10, 2] < _enlarged(image, factor)[r, c - 10, 2].float()  # less blue
    # the mask covers (15..35, 25..45) of the small image: (60..140, 100..180) drawn
    changed = (_pixels(drawings["instances"]) - _enlarged(image, factor)).abs().sum(-1) > 0
    assert changed[100:180, 60:140].float().mean() > 0.9
    # a wide image: enlarged until its longer side reaches the size, by a whole factor
    wide = draw_detections(torch.rand(3, 64, 200), boxes)
    assert wide.size == (600, 192)
    # a large image is drawn as it is, and min_size=None draws any image as it is
    assert draw_detections(torch.rand(3, 300, 600), boxes).size == (600, 300)
    assert draw_semantic(image, semantic, legend=False, min_size=None).size == (SMALL, SMALL)


def _glyphs(px: torch.Tensor) -> torch.Tensor:
    """[H, W] bool: the white text pixels (nothing else in these pictures is white)."""
    return (px == 255).all(-1)


@pytest.mark.parametrize(
    ("edge", "box"),
    [
        ("top", [40.0, 0.0, 70.0, 30.0]),  # no room above: the label goes inside the box
        ("right", [104.0, 50.0, 128.0, 80.0]),  # a label wider than the room: shifted left
        ("top right", [100.0, 0.0, 128.0, 30.0]),
    ],
)
def test_labels_at_the_edges_lie_fully_inside_the_picture(edge, box):
    image = torch.full((3, SMALL, SMALL), 0.5)
    label = torch.tensor([3])  # "triangle", in color_for(3), red: white text
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    reference = torch.tensor([[50.0, 60.0, 50.0 + w, 60.0 + h]])  # a box of the same size
    draw = lambda b: _pixels(  # noqa: E731
        draw_detections(image, b, label, torch.tensor([0.99]), CLASSES)
    )
    free, edged = _glyphs(draw(reference)), _glyphs(draw(torch.tensor([box])))
    assert free.sum() > 50  # the reference label is drawn
    # the whole text is drawn at the edge: as many white pixels, in a box of the same size
    assert edged.sum() == free.sum()
    gx1, gy1, gx2, gy2 = _bbox(edged)
    fx1, fy1, fx2, fy2 = _bbox(free)
    assert (gx2 - gx1, gy2 - gy1) == (fx2 - fx1, fy2 - fy1)
    # ... on its filled label box, with the label's padding inside the picture on every side
    px = draw(torch.tensor([box]))
    k = 4  # the scale factor of a 128 px image
    assert gx1 > 1 and gy1 > 1 and gx2 < SMALL * k - 2 and gy2 < SMALL * k - 2
    label_fill = _where(px, color_for(3))
    rows, cols = slice(gy1, gy2 + 1), slice(gx1, gx2 + 1)
    for strip in (
        label_fill[rows, gx1 - 2 : gx1],  # left of the text
        label_fill[rows, gx2 + 1 : gx2 + 3],  # right
        label_fill[gy1 - 2 : gy1, cols],  # above
        label_fill[gy2 + 1 : gy2 + 3, cols],  # below
    ):
        assert strip.float().mean() > 0.5
    if "top" in edge:  # inside the box, just under its top edge
        assert y1 * k <= gy1 and gy2 < y2 * k
    if "right" in edge:  # shifted left so that it ends inside the picture, over the box
        assert gx1 < x1 * k and gx2 < x2 * k


def test_legends_sit_beside_the_image_never_over_it():
    image = _small_image()
    factor = BIG // SMALL
    enlarged = _enlarged(image, factor)
    sem = torch.zeros(SMALL, SMALL, dtype=torch.int64)
    sem[60:100, 40:90] = 2  # "square", in VOC's green
    out = draw_semantic(image, sem, CLASSES)
    assert out.height == BIG and out.width > BIG  # a panel on the right
    px = _pixels(out)
    painted = (sem == 2).repeat_interleave(factor, 0).repeat_interleave(factor, 1)
    inside = px[:, :BIG]
    # every pixel of the image region outside the class region is the enlarged image's,
    # the top-left corner (where a legend used to sit) included
    assert inside[~painted].equal(enlarged[~painted])
    assert _where(px[:, BIG:], voc_palette()[2]).sum() > 50  # the swatch, in the panel
    # proposals: the count and the colour ranks are in the panel too
    props = torch.tensor([[60.0, 60.0, 100.0, 100.0]])
    drawn = draw_proposals(image, props)
    assert drawn.height == BIG and drawn.width > BIG
    corner = _pixels(drawn)[: BIG // 4, : BIG // 4]
    assert corner.equal(enlarged[: BIG // 4, : BIG // 4])
    # anchors: the shapes' legend is beside the canvas
    anchors = torch.tensor([[8.0, 8.0, 40.0, 40.0]])
    canvas = draw_anchors((SMALL, SMALL), anchors, image=image, margin=0)
    assert _pixels(canvas)[: BIG // 8, BIG // 2 : BIG].equal(enlarged[: BIG // 8, BIG // 2 :])
    assert canvas.width > BIG and _where(_pixels(canvas)[:, BIG:], color_for(0)).any()


def _strictly_between(pixel: torch.Tensor, a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Every channel where ``a`` and ``b`` differ lies strictly between them (a blend)."""
    return all(min(x, y) < int(p) < max(x, y) for p, x, y in zip(pixel, a, b) if x != y)


def test_masks_are_blended_over_the_image():
    image = torch.full((3, SMALL, SMALL), 0.4)
    grey = (102, 102, 102)  # differs from both mask colours in every channel
    masks = torch.zeros(1, SMALL, SMALL, dtype=torch.bool)
    masks[0, 30:90, 30:90] = True
    boxes = torch.tensor([[30.0, 30.0, 90.0, 90.0]])
    inst = _pixels(draw_detections(image, boxes, torch.tensor([3]), masks=masks))
    k = BIG // SMALL
    assert tuple(inst[0, 0].tolist()) == grey
    assert _strictly_between(inst[60 * k, 60 * k], grey, color_for(3))
    assert tuple(inst[60 * k, 30 * k].tolist()) == color_for(3)  # the outline: full colour
    sem = masks[0].long() * 3
    blended = _pixels(draw_semantic(image, sem, CLASSES))[60 * k, 60 * k]
    assert _strictly_between(blended, grey, voc_palette()[3])

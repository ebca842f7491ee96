"""AnchorGenerator gives exactly torchvision's anchors, in the same order."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from visionlab.ops import AnchorGenerator


def tv_anchors(sizes, ratios, image_size, grids, dtype=torch.float32):
    gen = TVAnchorGenerator(sizes, ratios)
    images = ImageList(torch.zeros(1, 3, *image_size, dtype=dtype), [image_size])
    feats = [torch.zeros(1, 1, h, w, dtype=dtype) for h, w in grids]
    return gen(images, feats)[0]


@pytest.mark.parametrize(
    ("sizes", "ratios", "image_size", "grids"),
    [
        (((32, 64, 128),), ((0.5, 1.0, 2.0),), (64, 96), [(8, 12)]),
        (  # FPN: five levels, one size each
            ((32,), (64,), (128,), (256,), (512,)),
            ((0.5, 1.0, 2.0),) * 5,
            (200, 264),
            [(50, 66), (25, 33), (13, 17), (7, 9), (4, 5)],
        ),
        (((16, 40),), ((0.3, 1.0, 3.7),), (97, 131), [(13, 17)]),  # odd sizes, uneven strides
        ((24, 48), (1.0, 2.0), (64, 64), [(16, 16), (8, 8)]),  # flat tuples, torchvision style
    ],
)
def test_same_anchors_and_order_as_torchvision(sizes, ratios, image_size, grids):
    ours = AnchorGenerator(sizes, ratios)
    levels = ours(image_size, grids)
    assert len(levels) == len(grids)
    for level, (h, w), a in zip(levels, grids, ours.num_anchors_per_location()):
        assert level.shape == (h * w * a, 4) and level.dtype == torch.float32
    assert torch.equal(torch.cat(levels), tv_anchors(sizes, ratios, image_size, grids))


def test_float64_and_explicit_strides():
    ours = AnchorGenerator(((32,), (64,)), ((1.0,),))
    got = ours((64, 64), [(8, 8), (4, 4)], dtype=torch.float64)
    assert got[0].dtype == torch.float64
    ratios = ((1.0,), (1.0,))  # torchvision needs one tuple per level
    expected = tv_anchors(((32,), (64,)), ratios, (64, 64), [(8, 8), (4, 4)], torch.float64)
    assert torch.equal(torch.cat(got), expected)
    # explicit strides that the image size would not give
    level = AnchorGenerator(((10,),), ((1.0,),))((100, 100), [(2, 3)], strides=[(7, 5)])[0]
    centres = (level[:, :2] + level[:, 2:]) / 2
    assert centres.tolist() == [[0, 0], [5, 0], [10, 0], [0, 7], [5, 7], [10, 7]]
    assert level[0].tolist() == [-5.0, -5.0, 5.0, 5.0]


def test_cell_anchor_shapes_and_count():
    gen = AnchorGenerator(((32, 64),), ((0.5, 1.0, 2.0),))
    assert gen.num_anchors_per_location() == [6]
    cell = gen((32, 32), [(1, 1)])[0]
    widths, heights = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
    # ratio-major, size-minor; ratio = height / width; area ~ size^2
    assert (heights / widths).tolist() == pytest.approx([0.5, 0.5, 1.0, 1.0, 2.0, 2.0], rel=0.05)
    assert (widths * heights).sqrt().tolist() == pytest.approx([32, 64] * 3, rel=0.05)


def test_cache_returns_fresh_copies():
    gen = AnchorGenerator()
    first = gen((64, 64), [(4, 4)])
    first[0].zero_()  # the caller may modify what it gets
    second = gen((64, 64), [(4, 4)])
    assert second[0].abs().sum() > 0
    assert torch.equal(second[0], AnchorGenerator(cache=False)((64, 64), [(4, 4)])[0])
    assert gen((64, 64), [(0, 0)], strides=[16])[0].shape == (0, 4)


def test_errors():
    with pytest.raises(ValueError, match="levels"):
        AnchorGenerator(((32,), (64,)), ((1.0,), (1.0,), (2.0,)))
    with pytest.raises(ValueError, match="feature maps"):
        AnchorGenerator()((64, 64), [(4, 4), (2, 2)])
    with pytest.raises(ValueError, match="> 0"):
        AnchorGenerator(((0,),))

"""`visionlab bench fcn`: the resolution ceilings of the output strides (pooled and fitted)
and naming by object size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from visionlab.bench.fcn import fitted_ceiling, naming_by_size, resolution_ceiling

pytestmark = pytest.mark.usefixtures("one_thread")


def test_resolution_ceiling_is_exact_for_grid_aligned_blocks_and_drops_for_thin_ones():
    class Blocks:
        def __init__(self, semantic):
            self.classes = ["a", "b"]
            self.semantic = semantic

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return torch.zeros(3, *self.semantic.shape), {"semantic": self.semantic}

    semantic = torch.zeros(32, 32, dtype=torch.int64)
    semantic[8:24, 8:16] = 1  # blocks on the 8 px grid
    semantic[8:24, 16:24] = 2
    ceiling = resolution_ceiling(Blocks(semantic), strides=(1, 8))
    assert ceiling[1] == 1.0
    assert ceiling[8] > 0.8
    thin = torch.zeros(32, 32, dtype=torch.int64)
    thin[4:28, 15:17] = 1  # a 2 px line: invisible at stride 8
    thin[0:2, 0:2] = 2
    low = resolution_ceiling(Blocks(thin), strides=(1, 8))
    assert low[1] == 1.0 and low[8] < 0.5


def test_fitted_ceiling_places_edges_inside_cells_beyond_the_pooled_yardstick():
    class Maps:
        classes = ("a", "b")

        def __init__(self, *maps):
            self.maps = maps

        def __len__(self):
            return len(self.maps)

        def __getitem__(self, i):
            return torch.zeros(3, *self.maps[i].shape), {"semantic": self.maps[i]}

    square = torch.zeros(32, 32, dtype=torch.int64)
    square[5:21, 9:27] = 1  # edges off the 8 px grid
    odd = torch.zeros(20, 36, dtype=torch.int64)  # not a multiple of 8: padded, cropped back
    odd[3:15, 2:30] = 2
    odd[:, 33:] = 255  # ignored: neither fitted nor scored
    pooled = resolution_ceiling(Maps(square), strides=(8,))[8]
    assert fitted_ceiling(Maps(square), strides=(8,), steps=100)[8] > 0.95 > pooled
    start = fitted_ceiling(Maps(square, odd), strides=(8, 32), steps=0)
    fitted = fitted_ceiling(Maps(square, odd), strides=(8, 32), steps=100)
    assert fitted[8] > 0.9 > start[8]  # the fit, not its start, reaches the ceiling
    assert fitted[32] < 0.5  # one or two cells: only a blur of the shapes


def test_naming_by_size_counts_objects_by_box_side_for_segmenter_and_classifier():
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, 2:12, 2:12] = True  # a 10 px "a"
    masks[1, 20:44, 20:44] = True  # a 24 px "b"
    target = {
        "masks": masks,
        "boxes": torch.tensor([[2.0, 2.0, 12.0, 12.0], [20.0, 20.0, 44.0, 44.0]]),
        "labels": torch.tensor([1, 2]),
    }

    class Data:
        classes = ("a", "b")

        def __len__(self):
            return 2

        def __getitem__(self, i):
            empty = {"masks": masks[:0], "boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}
            return torch.rand(3, 64, 64), target if i == 0 else empty

    labels = torch.zeros(64, 64, dtype=torch.int64)
    labels[2:12, 2:12] = 2  # the small "a" is called "b"
    labels[20:44, 20:38] = 2  # three quarters of the large "b" found, the rest background

    class Segmenter(nn.Module):
        def forward(self, x):
            return F.one_hot(labels, 3).permute(2, 0, 1)[None].float().expand(len(x), -1, -1, -1)

    class Classifier(nn.Module):
        classes = ("a", "b")

        def forward(self, x):
            assert x.shape[1:] == (3, 64, 64) and x.min() >= 0 and x.max() <= 1
            return torch.tensor([[0.0, 1.0]]).expand(len(x), 2)  # always "b"

    stats = naming_by_size(Segmenter(), Classifier(), Data(), count=2)
    assert stats["segmenter"] == [[1, 0, 100, 0], [0, 0, 0, 0], [1, 1, 576, 432], [0, 0, 0, 0]]
    assert stats["classifier"] == [[1, 0], [0, 0], [1, 1], [0, 0]]
    assert set(naming_by_size(None, Classifier(), Data(), count=2)) == {"classifier"}
    target["orig_size"] = (32, 32)  # stored at half the size: buckets in stored pixels
    halved = naming_by_size(Segmenter(), None, Data(), count=1)["segmenter"]
    assert [row[0] for row in halved] == [1, 1, 0, 0]  # 5 px and 12 px

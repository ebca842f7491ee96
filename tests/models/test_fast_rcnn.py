"""Fast R-CNN: selective-search regions (cached, mirrored for flips), the detector contract,
empty targets, and learning on a few images."""

from __future__ import annotations

import pytest
import torch

from visionlab.errors import VisionLabError
from visionlab.models.registry import build_model
from visionlab.models.two_stage import SelectiveSearchProposer
from visionlab.ops import selective_search
from visionlab.ops.proposals import resize_longer

SMALL = {"backbone_width": 8, "feature_stride": 8, "box_head": {"fc_width": 64}}


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONLAB_HOME", str(tmp_path / "home"))  # selective-search cache


def _scene(seed: int, size: int = 64) -> tuple[torch.Tensor, dict]:
    g = torch.Generator().manual_seed(seed)
    image = torch.full((3, size, size), 0.5)
    boxes = []
    for label, colour in ((1, (1.0, 0.1, 0.1)), (2, (0.1, 0.1, 1.0))):
        w, h = torch.randint(size // 5, size * 2 // 5, (2,), generator=g).tolist()
        x = (label - 1) * size // 2 + int(torch.randint(0, 4, (1,), generator=g))
        y = int(torch.randint(0, size - h, (1,), generator=g))
        image[:, y : y + h, x : x + w] = torch.tensor(colour)[:, None, None]
        boxes.append([x, y, x + w, y + h])
    target = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor([1, 2])}
    return image, target


def _proposer_search(image: torch.Tensor, search_size: int = 0) -> torch.Tensor:
    return SelectiveSearchProposer(search_size=search_size).search(image)


def test_flipped_image_reuses_mirrored_regions(tmp_path):
    image, _ = _scene(0)
    boxes = _proposer_search(image)
    assert torch.equal(boxes, selective_search(image, "fast", 2000))
    files = sorted((tmp_path / "home").rglob("*.npy"))
    mirrored = _proposer_search(image.flip(-1))
    assert sorted((tmp_path / "home").rglob("*.npy")) == files  # served from the cache
    width = image.shape[-1]
    expected = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
    assert torch.equal(mirrored, expected)


def test_search_size_searches_an_enlarged_copy_and_maps_boxes_back(tmp_path):
    image, _ = _scene(1, size=48)
    boxes = _proposer_search(image, search_size=96)
    search, factor = resize_longer(image, 96)
    assert factor == 2.0 and tuple(search.shape[-2:]) == (96, 96)
    expected = selective_search(search, "fast", 2000, cache=False) / 2
    assert torch.allclose(boxes, expected.clamp(0, 48))
    assert boxes.max() <= 48 and boxes.min() >= 0
    assert not torch.equal(boxes, _proposer_search(image))  # a different search
    files = sorted((tmp_path / "home").rglob("*.npy"))
    mirrored = _proposer_search(image.flip(-1), search_size=96)
    assert sorted((tmp_path / "home").rglob("*.npy")) == files  # served from the cache
    flipped_back = torch.stack([48 - boxes[:, 2], boxes[:, 1], 48 - boxes[:, 0], boxes[:, 3]], 1)
    assert torch.allclose(mirrored, flipped_back)
    with pytest.raises(VisionLabError, match="search_size"):
        build_model("fast_rcnn", num_classes=3, search_size=-1, **SMALL)


class _Images(torch.utils.data.Dataset):
    transforms = None

    def __init__(self, n: int) -> None:
        self.items = [_scene(10 + i, size=48) for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def test_prepare_data_in_worker_processes_fills_the_cache(tmp_path):
    model = build_model("fast_rcnn", num_classes=3, search_size=64, **SMALL)
    model.proposer.prepare_data([_Images(5)], workers=2)
    assert len(list((tmp_path / "home").rglob("*.npy"))) == 5  # one search per image
    for image, _ in _Images(5).items:  # the same boxes a search in this process finds
        search, factor = resize_longer(image, 64)
        expected = selective_search(search, "fast", 2000, cache=False) / factor
        assert torch.allclose(model.proposer.search(image), expected.clamp(0, 48))


def test_train_eval_contract_and_empty_targets():
    torch.manual_seed(0)
    model = build_model("fast_rcnn", num_classes=3, **SMALL)
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)}
    images, targets = zip(_scene(0), (torch.rand(3, 48, 56), empty))
    losses = model(list(images), list(targets))
    assert set(losses) == {"loss_classifier", "loss_box_reg"}
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    losses = model([images[1]], [empty])  # negatives only
    assert losses["loss_box_reg"].item() == 0.0 and losses["loss_classifier"] > 0
    model.eval()
    with torch.no_grad():
        out = model(list(images), extras=("proposals",))
    assert set(out[0]) == {"boxes", "labels", "scores", "proposals"}
    assert torch.equal(out[0]["proposals"], _proposer_search(images[0]))


@pytest.mark.slow
def test_learns_a_few_images():
    torch.manual_seed(0)
    data = [_scene(i) for i in range(2)]
    images, targets = [d[0] for d in data], [d[1] for d in data]
    model = build_model("fast_rcnn", num_classes=3, **SMALL)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    first = None
    for _ in range(60):
        loss = sum(model(images, targets).values())
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3 * first
    model.eval()
    with torch.no_grad():
        out = model(images)
    for pred, target in zip(out, targets):  # the best detection is a true object's class
        assert len(pred["labels"]) and pred["labels"][0].item() in target["labels"].tolist()

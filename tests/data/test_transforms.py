"""Joint transforms: boxes, masks, semantic masks and relations follow the image."""

from __future__ import annotations

import pickle

import pytest
import torch
from PIL import Image

from visionlab.constants import IGNORE_INDEX, TASKS
from visionlab.data.transforms import (
    PAD_VALUE,
    build_transforms,
    drop_degenerate,
    flip_predicate_pairs,
)
from visionlab.errors import DataError

H, W = 100, 150
# (x1, y1, x2, y2) boxes drawn as rectangles in the masks, so each mask's box is its box.
BOXES = [[20, 10, 60, 30], [100, 50, 140, 90], [0, 0, 6, 10], [70, 60, 95, 100]]


def _sample(semantic: bool = False) -> tuple[torch.Tensor, dict]:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, H, W, generator=g)
    boxes = torch.tensor(BOXES, dtype=torch.float32)
    masks = torch.zeros(len(BOXES), H, W, dtype=torch.bool)
    for m, (x1, y1, x2, y2) in zip(masks, BOXES):
        m[y1:y2, x1:x2] = True
    target = {
        "boxes": boxes,
        "labels": torch.tensor([1, 2, 3, 1]),
        "masks": masks,
        "iscrowd": torch.zeros(4, dtype=torch.int64),
        "difficult": torch.tensor([False, True, False, False]),
        "relations": torch.tensor([[0, 0, 1], [2, 1, 0], [1, 2, 3], [3, 0, 2]]),
        "image_id": 7,
        "file_name": "img7.png",
        "orig_size": (H, W),
    }
    if semantic:
        sem = torch.zeros(H, W, dtype=torch.int64)
        for (x1, y1, x2, y2), c in zip(BOXES, [1, 2, 3, 1]):
            sem[y1:y2, x1:x2] = c
        target = {"semantic": sem, "image_id": 7, "file_name": "img7.png"}
    return image, target


def _mask_box(mask: torch.Tensor) -> torch.Tensor:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()


def test_hflip_moves_boxes_masks_and_image_exactly():
    image, target = _sample()
    t = build_transforms("instance", train=True, hflip=1.0, scale_jitter=None)
    out_image, out = t(image, target)
    b = target["boxes"]
    expected = torch.stack([W - b[:, 2], b[:, 1], W - b[:, 0], b[:, 3]], dim=1)
    torch.testing.assert_close(out["boxes"], expected)
    torch.testing.assert_close(out_image, image.flip(-1))
    assert torch.equal(out["masks"], target["masks"].flip(-1))
    assert torch.equal(out["relations"], target["relations"])  # no predicate_flip given


def test_hflip_swaps_left_right_predicates():
    pairs = flip_predicate_pairs(["left of", "Right of", "on", "left_of_x"])
    assert pairs == {0: 1, 1: 0}
    image, target = _sample()
    t = build_transforms("detection", True, hflip=1.0, scale_jitter=None, predicate_flip=pairs)
    _, out = t(image, target)
    assert out["relations"][:, 1].tolist() == [1, 0, 2, 1]


def test_resize_scales_boxes_and_masks_consistently():
    image, target = _sample()
    out_image, out = build_transforms("instance", train=False, size=64)(image, target)
    assert out_image.shape == (3, 64, 64)
    scale = torch.tensor([64 / W, 64 / H, 64 / W, 64 / H])
    torch.testing.assert_close(out["boxes"], target["boxes"] * scale)
    for mask, box in zip(out["masks"], out["boxes"]):
        assert (_mask_box(mask) - box).abs().max() <= 1.0


def test_keep_ratio_resizes_longer_side():
    image, target = _sample()
    out_image, out = build_transforms("detection", False, 75, keep_ratio=True)(image, target)
    assert out_image.shape == (3, 50, 75)
    torch.testing.assert_close(out["boxes"], target["boxes"] / 2)


@pytest.mark.parametrize("seed", range(6))
def test_random_train_geometry_keeps_masks_on_boxes(seed):
    image, target = _sample()
    torch.manual_seed(seed)
    t = build_transforms("instance", True, 96, crop=True, translate=0.2, color_jitter=0.5)
    out_image, out = t(image, target)
    n = len(out["boxes"])
    assert out_image.shape == (3, 96, 96)
    assert out["masks"].shape == (n, 96, 96)
    assert len(out["labels"]) == len(out["iscrowd"]) == len(out["difficult"]) == n
    assert ((out["boxes"] >= 0) & (out["boxes"] <= 96)).all()
    rel = out["relations"]
    assert rel.shape[1] == 3 and ((rel[:, [0, 2]] >= 0) & (rel[:, [0, 2]] < n)).all()
    for mask, box in zip(out["masks"], out["boxes"]):
        if mask.any():
            assert (_mask_box(mask) - box).abs().max() <= 1.5


def test_drop_degenerate_drops_fields_and_reindexes_relations():
    _, target = _sample()
    target["boxes"] = target["boxes"].clone()
    target["boxes"][1] = torch.tensor([200.0, 10.0, 240.0, 30.0])  # fully right of the image
    target["boxes"][2] = torch.tensor([5.0, 5.0, 5.5, 20.0])  # 0.5 px wide
    out = drop_degenerate(target, min_size=1.0, image_size=(H, W))
    assert out["boxes"].tolist() == [BOXES[0], BOXES[3]]
    assert out["labels"].tolist() == [1, 1]
    assert out["difficult"].tolist() == [False, False]
    assert out["masks"].shape == (2, H, W) and torch.equal(out["masks"][1], target["masks"][3])
    # only relation [3, 0, 2] -> boxes 3 and 2; 2 is gone. [0, 0, 1]: 1 is gone. Nothing left
    # but check renumbering with a relation between survivors:
    target["relations"] = torch.tensor([[3, 2, 0], [0, 1, 2], [0, 0, 3]])
    out = drop_degenerate(target, image_size=(H, W))
    assert out["relations"].tolist() == [[1, 2, 0], [0, 0, 1]]
    assert target["boxes"].shape == (4, 4)  # input untouched


def test_crop_drops_boxes_outside_and_reindexes_relations():
    image, target = _sample()
    target["labels"] = torch.tensor([1, 2, 3, 4])  # unique: a label tells the original box
    dropped = 0
    t = build_transforms("detection", True, 64, crop=True, hflip=0.0, scale_jitter=None)
    for seed in range(8):
        torch.manual_seed(seed)
        _, out = t(image, target)
        original = [label - 1 for label in out["labels"].tolist()]  # new index -> old index
        dropped += len(original) < 4
        new = {old: i for i, old in enumerate(original)}
        expected = [
            [new[s], p, new[o]] for s, p, o in target["relations"].tolist() if s in new and o in new
        ]
        assert out["relations"].tolist() == expected
    assert dropped > 0  # the IoU crop did cut boxes away in some draws


def test_crop_size_takes_a_window_of_the_resized_image():
    image, target = _sample()
    target = {**target, "labels": torch.tensor([1, 2, 3, 4])}  # a label tells the box
    t = build_transforms("instance", True, None, crop_size=48, hflip=0.0, scale_jitter=None)
    for seed in range(6):
        torch.manual_seed(seed)
        out_image, out = t(image, target)
        assert out_image.shape == (3, 48, 48)
        # the window is a translate of the input: find it from the image itself
        match = [
            (y, x)
            for y in range(H - 48 + 1)
            for x in range(W - 48 + 1)
            if torch.equal(image[:, y, x : x + 48], out_image[:, 0])
            and torch.equal(image[:, y + 47, x : x + 48], out_image[:, 47])
        ]
        assert len(match) == 1
        y, x = match[0]
        for box, mask, label in zip(out["boxes"], out["masks"], out["labels"]):
            x1, y1, x2, y2 = BOXES[int(label) - 1]
            clipped = [max(x1 - x, 0), max(y1 - y, 0), min(x2 - x, 48), min(y2 - y, 48)]
            assert box.tolist() == clipped  # cut by the window, clipped to it
            assert torch.equal(_mask_box(mask), box)
        kept = {int(label) - 1 for label in out["labels"]}
        for k, (x1, y1, x2, y2) in enumerate(BOXES):  # dropped = (almost) outside the window
            inside_w = min(x2 - x, 48) - max(x1 - x, 0)
            inside_h = min(y2 - y, 48) - max(y1 - y, 0)
            assert (k in kept) == (inside_w >= 1 and inside_h >= 1)
    # segmentation: a canvas smaller than the crop is padded with the ignore label
    image, target = _sample(semantic=True)
    t = build_transforms("segmentation", True, 40, crop_size=64, hflip=0.0, scale_jitter=None)
    out_image, out = t(image, target)
    assert out_image.shape == (3, 64, 64) and out["semantic"].shape == (64, 64)
    assert (out["semantic"][40:] == IGNORE_INDEX).all()
    assert (out["semantic"][:, 40:] == IGNORE_INDEX).all()
    assert not (out["semantic"][:40, :40] == IGNORE_INDEX).any()
    assert "crop_size=64" in repr(t)
    with pytest.raises(ValueError, match="crop_size"):
        build_transforms("segmentation", True, 40, crop_size=0)
    # evaluation never crops
    assert build_transforms("segmentation", False, 40, crop_size=16)(image, target)[0].shape == (
        3,
        40,
        40,
    )


def test_semantic_padding_is_ignore():
    image, target = _sample(semantic=True)
    out_image, out = build_transforms("segmentation", False, 60, keep_ratio=True)(image, target)
    assert out_image.shape == (3, 60, 60) and out["semantic"].shape == (60, 60)
    assert out["semantic"].dtype == torch.int64
    assert (out["semantic"][40:] == IGNORE_INDEX).all()  # 100x150 -> 40x60, padded below
    assert set(out["semantic"][:40].unique().tolist()) <= {0, 1, 2, 3}
    torch.testing.assert_close(out_image[:, 40:], torch.full((3, 20, 60), PAD_VALUE))
    # a zoom-out on the fixed canvas uncovers border: ignore label there, classes kept inside
    t = build_transforms("segmentation", True, 64, hflip=0.0, scale_jitter=(0.5, 0.5))
    _, out = t(image, target)
    sem = out["semantic"]
    assert (sem[:10] == IGNORE_INDEX).all() and (sem[:, :10] == IGNORE_INDEX).all()
    assert set(sem[16:48, 16:48].unique().tolist()) <= {0, 1, 2, 3}


def test_eval_is_deterministic_and_leaves_input_alone():
    image, target = _sample()
    before = {k: v.clone() for k, v in target.items() if isinstance(v, torch.Tensor)}
    t = build_transforms("detection", train=False, size=80)
    torch.manual_seed(1)
    a = t(image, target)
    torch.manual_seed(2)
    b = t(image, target)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    for k, v in before.items():
        assert torch.equal(target[k], v)
    same_image, same = build_transforms("detection", train=False)(image, target)
    assert torch.equal(same_image, image) and torch.equal(same["boxes"], target["boxes"])


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("train", [False, True])
def test_dtype_and_shape_contract(task, train):
    image, target = _sample(semantic=task == "segmentation")
    if task == "classification":
        target = {"labels": torch.tensor(2), "image_id": 1}
    if task == "detection":
        del target["masks"]
    out_image, out = build_transforms(task, train, 48, color_jitter=0.3)(image, target)
    assert out_image.dtype == torch.float32 and out_image.shape == (3, 48, 48)
    assert out_image.min() >= 0.0 and out_image.max() <= 1.0
    assert type(out_image) is torch.Tensor
    if task in ("detection", "instance"):
        assert out["boxes"].dtype == torch.float32 and out["boxes"].shape[1] == 4
        assert out["labels"].dtype == torch.int64 and out["relations"].dtype == torch.int64
        assert out["orig_size"] == (H, W) and out["image_id"] == 7
    if task == "instance":
        assert out["masks"].dtype == torch.bool and out["masks"].shape[1:] == (48, 48)
    if task == "segmentation":
        assert out["semantic"].dtype == torch.int64 and out["semantic"].shape == (48, 48)
    if task == "classification":
        assert out["labels"].item() == 2
    assert set(out) == set(target)  # nothing added, nothing lost


def test_images_without_boxes_and_other_inputs():
    image, target = _sample()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    empty["masks"] = torch.zeros(0, H, W, dtype=torch.bool)
    empty["relations"] = torch.zeros(0, 3, dtype=torch.int64)
    out_image, out = build_transforms("instance", True, 32, crop=True, translate=0.2)(image, empty)
    assert out_image.shape == (3, 32, 32) and out["boxes"].shape == (0, 4)
    assert out["masks"].shape == (0, 32, 32)
    t = build_transforms("detection", False, 32)
    from_uint8, _ = t((image * 255).to(torch.uint8), target)
    pil = Image.fromarray((image * 255).to(torch.uint8).permute(1, 2, 0).numpy())
    from_pil, _ = t(pil, target)
    assert from_uint8.dtype == from_pil.dtype == torch.float32
    assert (from_uint8 - from_pil).abs().max() < 1e-5


def test_transform_pickles_for_spawned_workers():
    image, target = _sample()
    t = build_transforms("instance", True, 32, crop=True, translate=0.1, color_jitter=0.2)
    clone = pickle.loads(pickle.dumps(t))
    torch.manual_seed(3)
    a_image, a = t(image, target)
    torch.manual_seed(3)
    b_image, b = clone(image, target)
    assert torch.equal(a_image, b_image) and torch.equal(a["boxes"], b["boxes"])


def test_bad_input_names_file_and_field():
    image, target = _sample()
    target["masks"] = target["masks"][:, :50]
    with pytest.raises(DataError, match=r"img7\.png \[masks\]"):
        build_transforms("instance", False, 32)(image, target)
    with pytest.raises(DataError, match=r"\[3, H, W\]"):
        build_transforms("detection", False, 32)(image[0], {"file_name": "x.png"})
    with pytest.raises(ValueError, match="unknown task"):
        build_transforms("keypoints", False, 32)

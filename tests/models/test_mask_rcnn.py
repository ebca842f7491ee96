"""Mask R-CNN: mask targets, pasting, the loss on the ground-truth class only, empty images,
and learning the masks of a few images."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from visionlab.errors import VisionLabError
from visionlab.models.heads import RoIBatch, RoIPooler
from visionlab.models.mask_rcnn import MaskHead, MaskHeadSettings, mask_targets, paste_masks
from visionlab.models.registry import build_model

SMALL = {
    "backbone_width": 8,
    "feature_stride": 8,
    "rpn": {"anchor_sizes": [16, 32]},
    "box_head": {"fc_width": 64},
    "mask_head": {"width": 32},
}


def test_mask_targets_crop_and_resize_a_hand_made_case():
    # a 16 x 16 image whose instance is the left half of the box (4..12, 4..12)
    mask = torch.zeros(1, 16, 16)
    mask[0, 4:12, 4:8] = 1
    out = mask_targets(mask, torch.tensor([[4.0, 4.0, 12.0, 12.0]]), 4)
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0]]).expand(4, 4)
    assert torch.equal(out[0], expected)
    # the box's right half holds nothing; a box twice as large sees the half in its middle
    assert mask_targets(mask, torch.tensor([[8.0, 4.0, 12.0, 12.0]]), 4).sum() == 0
    wide = mask_targets(mask, torch.tensor([[0.0, 0.0, 16.0, 16.0]]), 4)[0]
    middle = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0.0]])
    assert torch.equal(wide, middle)
    assert mask_targets(mask, torch.zeros(0, 4), 4).shape == (0, 4, 4)


def test_paste_fills_the_box_and_cuts_at_the_image_border():
    full = torch.ones(2, 28, 28)
    boxes = torch.tensor([[10.0, 5.0, 30.0, 25.0], [-10.0, 30.0, 20.0, 60.0]])
    out = paste_masks(full, boxes, (40, 50))
    assert out.shape == (2, 40, 50) and out.dtype == torch.bool
    inside = torch.zeros(40, 50, dtype=torch.bool)
    inside[5:25, 10:30] = True
    assert torch.equal(out[0], inside)  # the padded border falls below 0.5 off the box
    # a box partly outside: only its part in the image, nothing wraps around
    part = torch.zeros(40, 50, dtype=torch.bool)
    part[30:40, 0:20] = True
    assert torch.equal(out[1], part)
    # a half mask lands in the box's left half
    half = torch.zeros(1, 28, 28)
    half[:, :, :14] = 1
    left = paste_masks(half, boxes[:1], (40, 50))[0]
    assert left[5:25, 10:20].all() and not left[:, 20:].any()
    outside = torch.tensor([[60.0, 60, 70, 70]])
    assert paste_masks(torch.ones(1, 28, 28), outside, (40, 50)).sum() == 0
    assert paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), (8, 8)).shape == (0, 8, 8)


def test_loss_reads_the_ground_truth_class_mask_only():
    torch.manual_seed(0)
    head = MaskHead(in_channels=4, num_classes=4, settings=MaskHeadSettings(width=8, pool_size=4))
    features = [torch.randn(1, 4, 8, 8)]
    masks = torch.zeros(1, 32, 32, dtype=torch.bool)
    masks[0, 4:20, 4:20] = True
    box = torch.tensor([[4.0, 4, 20, 20]])
    target = {"boxes": box, "labels": torch.tensor([2]), "masks": masks}
    rois = [torch.tensor([[4.0, 4, 20, 20], [0.0, 0, 30, 30]])]
    batch = RoIBatch(features, rois, [(32, 32)], RoIPooler((0.25,)), [target])
    batch.shared.update(rois=rois, labels=torch.tensor([2, 0]), matched_gt=[torch.tensor([0, 0])])
    loss = head.loss(batch)
    loss.backward()
    grad = head.predictor.weight.grad[:, :, 0, 0].abs().sum(dim=1)  # per class channel
    assert grad[1] > 0 and grad[0] == 0 and grad[2] == 0  # class 2 is channel 1
    # the same value by hand: BCE of the fg RoI's class-2 logits against its target
    with torch.no_grad():
        logits = head.logits(batch, [rois[0][:1]], torch.tensor([2]))
        expected = mask_targets(masks.float(), rois[0][:1], 8)
        want = F.binary_cross_entropy_with_logits(logits, expected)
    assert loss.item() == pytest.approx(want.item(), abs=1e-6)


def test_training_needs_masks_and_images_without_objects_train():
    model = build_model("mask_rcnn", num_classes=3, **SMALL).train()
    image = torch.rand(3, 48, 48)
    box = {"boxes": torch.tensor([[4.0, 4, 30, 30]]), "labels": torch.tensor([1])}
    with pytest.raises(VisionLabError, match="masks"):
        model([image], [box])
    empty = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, 48, 48, dtype=torch.bool),
    }
    losses = model([image], [empty])
    assert losses["loss_mask"].item() == 0.0 and losses["loss_classifier"] > 0
    with pytest.raises(VisionLabError, match="pooler"):
        build_model("mask_rcnn", num_classes=3, mask_head={"pooler": "max"})


def _scene(seed: int) -> tuple[torch.Tensor, dict]:
    """A 64 px image with a red disc and a blue triangle: masks that are not their boxes."""
    g = torch.Generator().manual_seed(seed)
    image = torch.full((3, 64, 64), 0.5)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    cx, cy = (torch.randint(15, 19, (2,), generator=g).float() + 0.5).tolist()
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= 13**2
    tx, ty = torch.randint(32, 36, (2,), generator=g).tolist()
    tri = (xx >= tx) & (yy >= ty) & (xx - tx <= yy - ty) & (yy < ty + 27)
    masks, boxes = [], []
    for mask, colour in ((disc, (1.0, 0.1, 0.1)), (tri, (0.1, 0.1, 1.0))):
        image[:, mask] = torch.tensor(colour)[:, None]
        ys, xs = torch.where(mask)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        masks.append(mask)
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "labels": torch.tensor([1, 2]),
        "masks": torch.stack(masks),
    }
    return image, target


@pytest.mark.slow
def test_learns_the_masks_of_a_few_images(one_thread):
    torch.manual_seed(0)
    data = [_scene(i) for i in range(3)]
    images, targets = [d[0] for d in data], [d[1] for d in data]
    model = build_model("mask_rcnn", num_classes=3, **SMALL)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    steps = 150
    decay = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1 - k / steps)
    model.train()
    for _ in range(steps):
        losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        decay.step()
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    for out, target in zip(outputs, targets):
        for gt_mask, label in zip(target["masks"], target["labels"]):
            hits = torch.where((out["labels"] == label) & (out["scores"] > 0.5))[0]
            assert len(hits), f"class {label.item()} not detected"
            pred = out["masks"][hits[0]]
            iou = (pred & gt_mask).sum() / (pred | gt_mask).sum()
            assert iou > 0.9, (label.item(), iou.item())

"""The R-CNN family's shared parts: RPN anchor labelling, proposal sampling, the multi-task
losses (seeded pins against hand computations), decoding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from visionlab.models.heads import (
    BoxHeadSettings,
    RoIBatch,
    RoIBoxPredictor,
    RoIPooler,
    decode_detections,
    fast_rcnn_loss,
    sample_proposals,
)
from visionlab.models.postprocess import DetectionSettings
from visionlab.models.rpn import RPN, RPNSettings, label_anchors
from visionlab.ops import BalancedSampler, BoxCoder, Matcher, box_iou


def test_rpn_anchor_labels_hand_made_case():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 9.0],  # IoU 0.9  -> positive
            [0.0, 0.0, 10.0, 5.0],  # IoU 0.5  -> between 0.3 and 0.7: ignored
            [0.0, 0.0, 10.0, 2.0],  # IoU 0.2  -> negative
            [20.0, 20.0, 30.0, 30.0],  # IoU 0  -> negative
        ]
    )
    labels, matched = label_anchors(anchors, [gt], Matcher(0.7, 0.3, True))
    assert labels.tolist() == [[1, -1, 0, 0]]
    assert torch.equal(matched[0, 0], gt[0])
    # a gt whose best anchor is below 0.7 still gets that anchor (sec. 3.1.2, condition i)
    labels, _ = label_anchors(anchors[1:], [gt], Matcher(0.7, 0.3, True))
    assert labels.tolist() == [[1, 0, 0]]
    # an image without objects: every anchor negative
    labels, _ = label_anchors(anchors, [torch.zeros((0, 4))], Matcher(0.7, 0.3, True))
    assert labels.tolist() == [[0, 0, 0, 0]]


def _random_boxes(n: int, size: float, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * size * 0.8
    wh = torch.rand(n, 2, generator=generator) * size * 0.4 + 4
    return torch.cat([xy, xy + wh], dim=1)


def test_sample_proposals_fractions_and_iou_ranges():
    g = torch.Generator().manual_seed(0)
    gt = torch.tensor([[10.0, 10.0, 50.0, 50.0], [60.0, 60.0, 100.0, 110.0]])
    # many jittered copies of the gt (foreground) plus random boxes (mostly background)
    jitter = (gt.repeat(100, 1) + torch.randn(200, 4, generator=g) * 2).clamp(min=0)
    proposals = torch.cat([jitter, _random_boxes(800, 128, g)])
    target = {"boxes": gt, "labels": torch.tensor([3, 5])}
    sampled, labels, reg, _ = sample_proposals(
        [proposals, proposals],
        [target, target],
        matcher=Matcher(0.5, 0.1),
        sampler=BalancedSampler(64, 0.25),
        box_coder=BoxCoder(),
        generator=torch.Generator().manual_seed(1),
    )
    assert [len(s) for s in sampled] == [64, 64]
    assert (labels > 0).sum().item() == 2 * 16  # 25% foreground, exactly (plenty available)
    assert set(labels[labels > 0].tolist()) <= {3, 5}
    best_iou = box_iou(gt, torch.cat(sampled)).max(dim=0).values
    assert (best_iou[labels > 0] >= 0.5).all()
    bg = best_iou[labels == 0]
    assert ((bg >= 0.1) & (bg < 0.5)).all()  # Fast R-CNN's background range
    assert reg.shape == (128, 4)
    assert torch.isfinite(reg).all()
    # a foreground RoI's target decodes back onto the gt box it overlaps most, of that class
    rois, fg = torch.cat(sampled), labels > 0
    best_gt = box_iou(gt, rois).argmax(dim=0)
    assert torch.equal(labels[fg], target["labels"][best_gt[fg]])
    decoded = BoxCoder().decode(reg[fg], rois[fg])
    assert torch.allclose(decoded, gt[best_gt[fg]], atol=1e-3)
    # background rows' targets are unused: the box loss ignores whatever they hold
    g = torch.Generator().manual_seed(2)
    logits, deltas = torch.randn(128, 6, generator=g), torch.randn(128, 24, generator=g)
    loss = fast_rcnn_loss(logits, deltas, labels, reg)["loss_box_reg"]
    garbage = reg.masked_fill((labels == 0)[:, None], 1e3)
    assert loss > 0 and fast_rcnn_loss(logits, deltas, labels, garbage)["loss_box_reg"] == loss


def test_sample_proposals_few_positives_and_no_objects():
    g = torch.Generator().manual_seed(0)
    proposals = _random_boxes(300, 128, g)
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)}
    one = {"boxes": torch.tensor([[0.0, 0.0, 30.0, 30.0]]), "labels": torch.tensor([2])}
    sampled, labels, _, _ = sample_proposals(
        [proposals, proposals],
        [empty, one],
        matcher=Matcher(0.5, 0.1),
        sampler=BalancedSampler(64, 0.25),
        box_coder=BoxCoder(),
    )
    # the image without objects samples 64 background RoIs
    assert len(sampled[0]) == 64 and (labels[:64] == 0).all()
    # the gt box is added as a proposal, so at least one foreground RoI exists
    assert (labels[64:] == 2).sum() >= 1
    assert (labels[64:] > 0).sum() <= 16


def test_fast_rcnn_loss_seeded_pin():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g)
    deltas = torch.randn(6, 16, generator=g)
    labels = torch.tensor([0, 1, 3, 0, 2, 0])
    targets = torch.randn(6, 4, generator=g)
    losses = fast_rcnn_loss(logits, deltas, labels, targets, smooth_l1_beta=1.0)
    # by hand: mean negative log-softmax; smooth L1 of the true class's deltas, / all RoIs
    nll = -(logits.log_softmax(1)[torch.arange(6), labels]).mean()
    fg = labels > 0
    diff = (deltas.view(6, 4, 4)[torch.arange(6), labels] - targets)[fg].abs()
    smooth = torch.where(diff < 1, 0.5 * diff**2, diff - 0.5).sum() / 6
    assert torch.allclose(losses["loss_classifier"], nll)
    assert torch.allclose(losses["loss_box_reg"], smooth)
    assert losses["loss_classifier"].item() == pytest.approx(1.215755, abs=1e-5)
    assert losses["loss_box_reg"].item() == pytest.approx(0.894434, abs=1e-5)


def test_rpn_loss_seeded_pin_and_empty_image():
    torch.manual_seed(0)
    rpn = RPN(
        in_channels=8,
        strides=(8,),
        settings=RPNSettings(anchor_sizes=(16.0,), aspect_ratios=(1.0,)),
    )
    anchors = torch.tensor([[0.0, 0.0, 16.0, 16.0], [16.0, 0.0, 32.0, 16.0]])
    objectness = torch.tensor([[2.0, -1.0]])
    deltas = torch.tensor([[[0.1, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    gt = {"boxes": torch.tensor([[0.0, 0.0, 16.0, 16.0]])}
    losses = rpn.losses(anchors, objectness, deltas, [gt])
    # anchor 0 positive (target deltas 0), anchor 1 negative; 2 sampled
    bce = (F.softplus(-torch.tensor(2.0)) + F.softplus(torch.tensor(-1.0))) / 2
    assert losses["loss_objectness"].item() == pytest.approx(bce.item(), abs=1e-6)
    # smooth L1 with beta 1/9 of |0.1| < beta: 0.5 * 0.1^2 / beta, over 2 sampled anchors
    assert losses["loss_rpn_box_reg"].item() == pytest.approx(0.5 * 0.01 * 9 / 2, abs=1e-6)
    empty = {"boxes": torch.zeros((0, 4))}
    losses = rpn.losses(anchors, objectness, deltas.requires_grad_(), [empty])
    assert losses["loss_rpn_box_reg"].item() == 0.0
    assert losses["loss_objectness"].item() == pytest.approx(
        ((F.softplus(torch.tensor(2.0)) + F.softplus(torch.tensor(-1.0))) / 2).item(), abs=1e-6
    )


def test_postprocess_decodes_thresholds_and_suppresses_per_class():
    proposals = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [50, 50, 60, 60.0]])]
    probs = torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.7, 0.1], [0.97, 0.01, 0.02]])
    out = decode_detections(
        probs.log(),
        torch.zeros(3, 12),
        proposals,
        [(40, 40)],
        box_coder=BoxCoder(),
        settings=DetectionSettings(score_thresh=0.05, nms_thresh=0.5),
    )[0]
    # box 1 (class 1) is suppressed by box 0; box 1's class 2 (0.1) survives; box 2 is
    # clipped to nothing (outside the 40 x 40 image) and dropped
    assert out["labels"].tolist() == [1, 2]
    assert torch.allclose(out["scores"], torch.tensor([0.9, 0.1]))
    assert torch.equal(out["boxes"], torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0]]))


def test_box_predictor_train_and_eval_contract():
    torch.manual_seed(0)
    head = RoIBoxPredictor(in_channels=4, num_classes=3, settings=BoxHeadSettings(fc_width=16))
    features = torch.randn(2, 4, 4, 4)
    proposals = [torch.tensor([[0.0, 0.0, 16.0, 16.0]]), torch.zeros((0, 4))]
    targets = [
        {"boxes": torch.tensor([[0.0, 0.0, 15.0, 15.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    pooler = RoIPooler(scales=(1 / 8,))
    batch = RoIBatch([features], proposals, [(32, 32)] * 2, pooler, targets)
    detections, losses = head(batch)
    assert detections == [] and set(losses) == {"loss_classifier", "loss_box_reg"}
    assert len(batch.shared["rois"]) == len(batch.shared["labels"]) > 0  # left for later heads
    head.eval()
    detections, losses = head(RoIBatch([features], proposals, [(32, 32)] * 2, pooler))
    assert losses == {} and len(detections) == 2 and len(detections[1]["boxes"]) == 0

"""Proposal recall and average recall against a hand case and a naive loop."""

from __future__ import annotations

import pytest
import torch

from visionlab.eval.proposals import ProposalEvaluator, proposal_recall


def test_hand_case():
    gt = [torch.tensor([[0.0, 0.0, 10.0, 10.0]])]
    props = [torch.tensor([[0.0, 0.0, 10.0, 8.0], [50.0, 50, 60, 60], [0.0, 0, 10, 10]])]
    r = proposal_recall(props, gt, iou_thresholds=(0.7, 0.9), max_proposals=(1, 3))
    assert r["R@1@0.7"] == 1.0 and r["R@1@0.9"] == 0.0  # IoU 0.8 at rank 1
    assert r["AR@1"] == pytest.approx(0.7)  # thresholds 0.5 .. 0.8: 7 of 10
    assert r["R@3@0.9"] == 1.0 and r["AR@3"] == pytest.approx(1.0)


def _naive_best(props, gts, n):
    best = []
    for p, g in zip(props, gts):
        for box in g:
            ious = [0.0]
            for q in p[:n]:
                iw = max(0.0, min(box[2], q[2]) - max(box[0], q[0]))
                ih = max(0.0, min(box[3], q[3]) - max(box[1], q[1]))
                inter = iw * ih
                union = (box[2] - box[0]) * (box[3] - box[1]) + (q[2] - q[0]) * (q[3] - q[1])
                ious.append(float(inter / (union - inter)))
            best.append(max(ious))
    return torch.tensor(best)


def test_matches_naive_loop_and_streaming():
    g = torch.Generator().manual_seed(0)
    props, gts = [], []
    for i in range(5):
        k, m = 30 + 10 * i, i  # image 0 has no ground truth
        xy = torch.rand(k, 2, generator=g) * 50
        props.append(torch.cat([xy, xy + 5 + torch.rand(k, 2, generator=g) * 30], 1))
        xy = torch.rand(m, 2, generator=g) * 50
        gts.append(torch.cat([xy, xy + 5 + torch.rand(m, 2, generator=g) * 30], 1))
    r = proposal_recall(props, gts, iou_thresholds=(0.5, 0.7), max_proposals=(10, 40))
    for n in (10, 40):
        best = _naive_best(props, gts, n)
        assert r[f"R@{n}@0.5"] == pytest.approx((best >= 0.5 - 1e-6).float().mean().item())
        ar = sum((best >= t - 1e-6).float().mean().item() for t in torch.arange(0.5, 0.96, 0.05))
        assert r[f"AR@{n}"] == pytest.approx(ar / 10, abs=0.02)
    ev = ProposalEvaluator(iou_thresholds=(0.5, 0.7), max_proposals=(10, 40))
    ev.update([{"proposal_boxes": p} for p in props[:2]], [{"boxes": t} for t in gts[:2]])
    ev.update(props[2:], gts[2:])
    assert ev.compute() == r and ev.primary == "AR@40"

"""Matcher and BalancedSampler against naive references and torchvision's helpers."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import _utils as tv_utils

from visionlab.ops import BalancedSampler, Matcher


def quality_matrix(m: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(m, n, generator=g)
    overlaps = torch.rand(m, n, generator=g) < 0.25  # mostly zero overlaps, like real IoU
    return torch.where(overlaps, q, torch.zeros(()))


def reference_match(q: torch.Tensor, high: float, low: float, allow_low: bool) -> list[int]:
    m, n = q.shape
    rows = q.tolist()
    out = []
    for j in range(n):
        col = [rows[i][j] for i in range(m)]
        best = max(col)
        idx = col.index(best)
        out.append(-1 if best < low else -2 if best < high else idx)
    if allow_low:
        for i in range(m):
            best = max(rows[i])
            if best <= 0:
                continue
            for j in range(n):
                if rows[i][j] == best:
                    col = [rows[k][j] for k in range(m)]
                    out[j] = col.index(max(col))
    return out


@pytest.mark.parametrize("allow_low", [False, True])
def test_matcher_against_reference_and_torchvision(allow_low):
    q = quality_matrix(6, 200, seed=1)
    q[2, 17] = q[2].max()  # a tie for gt 2's best prediction
    ours = Matcher(0.7, 0.3, allow_low)(q)
    assert ours.dtype == torch.int64 and ours.shape == (200,)
    assert ours.tolist() == reference_match(q, 0.7, 0.3, allow_low)
    tv = tv_utils.Matcher(0.7, 0.3, allow_low)(q)
    assert torch.equal(ours, tv)
    assert {-1, -2} <= set(ours.tolist())
    assert Matcher.BELOW_LOW_THRESHOLD == -1 and Matcher.BETWEEN_THRESHOLDS == -2


def test_matcher_low_quality_promotes_best_prediction_only_when_it_overlaps():
    q = torch.tensor([[0.9, 0.2, 0.0, 0.0], [0.0, 0.0, 0.4, 0.1], [0.0, 0.0, 0.0, 0.0]])
    assert Matcher(0.7, 0.3)(q).tolist() == [0, -1, -2, -1]
    # gt 1's best (pred 2, 0.4) is kept; gt 2 overlaps nothing and promotes nothing
    # (torchvision's matcher would turn every zero-overlap prediction into a match)
    assert Matcher(0.7, 0.3, allow_low_quality_matches=True)(q).tolist() == [0, -1, 1, -1]


def test_matcher_no_gt_and_no_predictions():
    assert Matcher(0.5, 0.4)(torch.zeros(0, 5)).tolist() == [-1] * 5
    assert Matcher(0.5, 0.4, True)(torch.zeros(3, 0)).shape == (0,)
    assert Matcher(0.5, 0.5)(torch.tensor([[0.5, 0.49]])).tolist() == [0, -1]
    with pytest.raises(ValueError, match="low_threshold"):
        Matcher(0.3, 0.7)
    with pytest.raises(ValueError, match="M gt, N predictions"):
        Matcher(0.5, 0.4)(torch.zeros(5))


def labels_with(pos: int, neg: int, ignore: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat(
        [torch.randint(1, 5, (pos,), generator=g), torch.zeros(neg), -torch.ones(ignore)]
    )
    return labels[torch.randperm(labels.numel(), generator=g)].long()


def test_sampler_counts_fractions_and_disjoint():
    sampler = BalancedSampler(64, 0.25)
    many_pos = labels_with(100, 300, 20, seed=1)
    few_pos = labels_with(5, 300, 20, seed=2)
    few_neg = labels_with(100, 10, 20, seed=3)
    pos, neg = sampler([many_pos, few_pos, few_neg])
    assert [int(p.sum()) for p in pos] == [16, 5, 16]
    assert [int(n.sum()) for n in neg] == [48, 59, 10]  # negatives fill in for missing positives
    for p, n, labels in zip(pos, neg, [many_pos, few_pos, few_neg]):
        assert p.dtype == torch.bool and not (p & n).any()
        assert (labels[p] >= 1).all() and (labels[n] == 0).all()
    # same counts as torchvision's sampler
    tv_pos, tv_neg = tv_utils.BalancedPositiveNegativeSampler(64, 0.25)(
        [many_pos, few_pos, few_neg]
    )
    assert [int(p.sum()) for p in tv_pos] == [int(p.sum()) for p in pos]
    assert [int(n.sum()) for n in tv_neg] == [int(n.sum()) for n in neg]


def test_sampler_generator_reproducible_and_single_tensor():
    sampler = BalancedSampler(32, 0.5)
    labels = labels_with(100, 100, 0, seed=4)
    a = sampler(labels, generator=torch.Generator().manual_seed(7))
    b = sampler(labels, generator=torch.Generator().manual_seed(7))
    c = sampler(labels, generator=torch.Generator().manual_seed(8))
    assert isinstance(a[0], torch.Tensor) and int(a[0].sum()) == 16
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    empty_pos, empty_neg = sampler(torch.zeros(0, dtype=torch.long))
    assert empty_pos.shape == (0,) and empty_neg.shape == (0,)
    with pytest.raises(ValueError, match="positive_fraction"):
        BalancedSampler(10, 1.5)

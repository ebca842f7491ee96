"""Spatial pyramid pooling against a per-bin Python reference; RoI wrappers and RoI Align as
matrix products against torchvision."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from visionlab import ops


def spp_reference(window: torch.Tensor, levels, mode="max") -> torch.Tensor:
    """Pyramid pooling of one ``[C, h, w]`` window, one bin at a time (SPPNet's bins)."""
    c, h, w = window.shape
    out = []
    for n in levels:
        for ch in range(c):
            for i in range(n):
                for j in range(n):
                    y0, y1 = (i * h) // n, math.ceil((i + 1) * h / n)
                    x0, x1 = (j * w) // n, math.ceil((j + 1) * w / n)
                    cell = window[ch, y0:y1, x0:x1]
                    out.append(cell.max() if mode == "max" else cell.mean())
    return torch.stack(out)


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("hw", [(7, 9), (3, 2), (1, 1)])  # includes maps smaller than a level
def test_spatial_pyramid_pool_matches_reference(mode, hw):
    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = ops.spatial_pyramid_pool(x, levels=(4, 2, 1), mode=mode)
    assert out.shape == (2, 3 * (16 + 4 + 1))
    for b in range(2):
        torch.testing.assert_close(out[b], spp_reference(x[b], (4, 2, 1), mode))


def test_spatial_pyramid_pool_windows_of_any_size():
    g = torch.Generator().manual_seed(1)
    windows = [torch.randn(4, h, w, generator=g) for h, w in [(10, 3), (1, 2), (6, 6)]]
    out = ops.spatial_pyramid_pool(windows, levels=(3, 1))
    assert out.shape == (3, 4 * 10)
    for k, w in enumerate(windows):
        torch.testing.assert_close(out[k], spp_reference(w, (3, 1)))
    with pytest.raises(ValueError, match="empty"):
        ops.spatial_pyramid_pool(torch.zeros(1, 2, 0, 4))
    with pytest.raises(ValueError, match="mode"):
        ops.spatial_pyramid_pool(torch.zeros(1, 2, 4, 4), mode="median")


def test_spp_rois_equals_pooling_the_projected_window():
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(2, 3, 20, 24, generator=g)
    levels = (6, 3, 2, 1)
    # (batch, x1, y1, x2, y2) in image pixels at stride 4; includes a 1x2-cell window
    rois = torch.tensor(
        [[0, 0, 0, 92, 76], [1, 8, 12, 40, 36], [1, 16, 16, 20, 16], [0, 40, 4, 92, 76]],
        dtype=torch.float32,
    )
    out = ops.spp_rois(feats, rois, spatial_scale=0.25, levels=levels)
    assert out.shape == (4, 3 * 50)
    for k, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        c0, r0, c1, r1 = (round(v * 0.25) for v in (x1, y1, x2, y2))
        window = feats[int(b), :, r0 : r1 + 1, c0 : c1 + 1]
        torch.testing.assert_close(out[k], spp_reference(window, levels))
    # the whole-map window is the whole-image pyramid
    whole = ops.spp_rois(feats, [torch.tensor([[0.0, 0.0, 23.0, 19.0]])], 1.0, levels)
    torch.testing.assert_close(whole[0], ops.spatial_pyramid_pool(feats[:1], levels)[0])


def test_spp_rois_random_windows_fixed_length():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(1, 2, 9, 11, generator=g)
    for _ in range(30):
        x1, y1 = (
            int(torch.randint(0, 11, (1,), generator=g)),
            int(torch.randint(0, 9, (1,), generator=g)),
        )
        x2 = int(torch.randint(x1, 11, (1,), generator=g))
        y2 = int(torch.randint(y1, 9, (1,), generator=g))
        out = ops.spp_rois(feats, torch.tensor([[0.0, x1, y1, x2, y2]]), 1.0, (4, 2, 1))
        assert out.shape == (1, 2 * 21)
        torch.testing.assert_close(
            out[0], spp_reference(feats[0, :, y1 : y2 + 1, x1 : x2 + 1], (4, 2, 1))
        )
    outside = ops.spp_rois(feats, torch.tensor([[0.0, 50, 50, 60, 60]]), 1.0, (2, 1))
    assert torch.equal(outside, torch.zeros(1, 2 * 5))
    assert ops.spp_rois(feats, torch.zeros(0, 5), 1.0).shape == (0, 2 * 50)


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_and_pool_wrap_torchvision(aligned):
    g = torch.Generator().manual_seed(4)
    feats = torch.randn(2, 3, 16, 16, generator=g)
    per_image = [
        torch.tensor([[4.0, 4.0, 40.0, 30.0]]),
        torch.tensor([[0.0, 8, 60, 60], [10, 10, 12, 12]]),
    ]
    as_tensor = torch.tensor([[0, 4.0, 4, 40, 30], [1, 0, 8, 60, 60], [1, 10, 10, 12, 12]])
    ours = ops.roi_align(feats, per_image, 5, 0.25, 2, aligned)
    assert ours.shape == (3, 3, 5, 5)
    assert torch.equal(ours, ops.roi_align(feats, as_tensor, (5, 5), 0.25, 2, aligned))
    assert torch.equal(ours, torchvision.ops.roi_align(feats, as_tensor, 5, 0.25, 2, aligned))
    pooled = ops.roi_pool(feats, per_image, 4, 0.25)
    assert torch.equal(pooled, torchvision.ops.roi_pool(feats, as_tensor, 4, 0.25))
    assert ops.roi_align(feats, [torch.zeros(0, 4), torch.zeros(0, 4)], 7).shape == (0, 3, 7, 7)
    assert ops.roi_pool(feats, torch.zeros(0, 5), 7).shape == (0, 3, 7, 7)


def test_roi_align_gradient_and_errors():
    feats = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[0.0, 0.5, 0.5, 3.5, 4.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: ops.roi_align(f, boxes, 2, 1.0, 2, True), (feats,))
    with pytest.raises(ValueError, match=r"Tensor\[K, 5\]"):
        ops.roi_align(feats, torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match=r"boxes\[0\]"):
        ops.roi_pool(feats, [torch.zeros(3, 5)], 2)
    with pytest.raises(ValueError, match=r"Tensor\[B, C, H, W\]"):
        ops.spp_rois(torch.zeros(2, 5, 5), torch.zeros(0, 5))


@pytest.mark.parametrize("size", [8, 13])
def test_roi_align_separable_matches_torchvision(size):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(3, 5, size, size, generator=g, requires_grad=True)
    xy = torch.rand(40, 2, generator=g) * 200 - 20
    wh = torch.rand(40, 2, generator=g) * 90 + 0.3
    rois = torch.cat([torch.randint(0, 3, (40, 1), generator=g).float(), xy, xy + wh], dim=1)
    ours = ops.roi_align_separable(features, rois, 7, 1 / 16, 2)
    theirs = ops.roi_align(features, rois, 7, 1 / 16, sampling_ratio=2)
    assert torch.allclose(ours, theirs, atol=1e-5)
    grad = torch.randn(ours.shape, generator=g)
    (g_ours,) = torch.autograd.grad((ours * grad).sum(), features)
    (g_theirs,) = torch.autograd.grad((theirs * grad).sum(), features)
    assert torch.allclose(g_ours, g_theirs, atol=1e-4)

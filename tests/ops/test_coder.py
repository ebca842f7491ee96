"""BoxCoder against the R-CNN formulas written out by hand and torchvision's BoxCoder."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection import _utils as tv_utils

from visionlab.ops import BoxCoder


def random_boxes(n: int, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 100
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 50 + 1
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


def encode_py(g, p, w):
    """Girshick et al. 2014, appendix C, for one pair of xyxy boxes."""
    pw, ph = p[2] - p[0], p[3] - p[1]
    gw, gh = g[2] - g[0], g[3] - g[1]
    pcx, pcy = p[0] + 0.5 * pw, p[1] + 0.5 * ph
    gcx, gcy = g[0] + 0.5 * gw, g[1] + 0.5 * gh
    return [
        w[0] * (gcx - pcx) / pw,
        w[1] * (gcy - pcy) / ph,
        w[2] * math.log(gw / pw),
        w[3] * math.log(gh / ph),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_encode_matches_formula_and_torchvision(dtype):
    gt, props = random_boxes(30, dtype, 1), random_boxes(30, dtype, 2)
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    codes = coder.encode(gt, props)
    assert codes.shape == (30, 4) and codes.dtype == dtype
    ref = [encode_py(g, p, coder.weights) for g, p in zip(gt.tolist(), props.tolist())]
    torch.testing.assert_close(codes, torch.tensor(ref, dtype=dtype))
    tv = tv_utils.BoxCoder((10.0, 10.0, 5.0, 5.0))
    assert torch.equal(codes, tv.encode_single(gt, props))


@pytest.mark.parametrize("num_classes", [1, 3])
def test_decode_matches_torchvision_and_inverts_encode(num_classes):
    props = random_boxes(25, seed=3)
    g = torch.Generator().manual_seed(4)
    codes = torch.randn(25, 4 * num_classes, generator=g)
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    boxes = coder.decode(codes, props)
    assert boxes.shape == (25, 4 * num_classes)
    tv = tv_utils.BoxCoder((10.0, 10.0, 5.0, 5.0))
    assert torch.equal(boxes.view(25, -1, 4), tv.decode_single(codes, props).view(25, -1, 4))
    # round trip, per class
    back = coder.encode(boxes, props)
    torch.testing.assert_close(back, codes, atol=1e-4, rtol=1e-4)


def test_round_trip_float64_and_weights():
    gt, props = random_boxes(10, torch.float64, 5), random_boxes(10, torch.float64, 6)
    for weights in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
        coder = BoxCoder(weights)
        torch.testing.assert_close(coder.decode(coder.encode(gt, props), props), gt)


def test_decode_clamps_size_deltas():
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0), bbox_xform_clip=math.log(4.0))
    props = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    out = coder.decode(torch.tensor([[0.0, 0.0, 50.0, -2.0]]), props)
    w, h = out[0, 2] - out[0, 0], out[0, 3] - out[0, 1]
    assert w.item() == pytest.approx(40.0)  # exp(50) clamped to 4x
    assert h.item() == pytest.approx(20.0 * math.exp(-2.0))  # only the maximum is clamped
    assert torch.isfinite(BoxCoder().decode(torch.full((1, 4), 1e4), props)).all()


def test_empty_and_bad_shapes():
    coder = BoxCoder()
    assert coder.encode(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)
    assert coder.decode(torch.zeros(0, 8), torch.zeros(0, 4)).shape == (0, 8)
    with pytest.raises(ValueError, match="rows"):
        coder.decode(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"rel_codes must be Tensor\[N, 4 \* K\]"):
        coder.decode(torch.zeros(3, 6), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="weights"):
        BoxCoder((1.0, 2.0))


def test_gradients():
    coder = BoxCoder()
    props = random_boxes(4, torch.float64, 7)
    gt = random_boxes(4, torch.float64, 8).requires_grad_()
    codes = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: coder.decode(c, props), (codes,))
    assert torch.autograd.gradcheck(lambda g: coder.encode(g, props), (gt,))

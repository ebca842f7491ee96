"""Folding batch norms into convolutions keeps the function and removes the batch norms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from visionlab.models.backbones import build_backbone
from visionlab.models.registry import build_model
from visionlab.ops.fuse import fold, fuse_conv_bn


def _randomise_batch_norms(model: nn.Module, seed: int = 0) -> None:
    """Running statistics and affine parameters far from the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))


def _count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_fold_matches_conv_then_batch_norm():
    torch.manual_seed(0)
    for bias, groups in ((False, 1), (True, 1), (False, 4)):
        conv = nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=bias, groups=groups)
        bn = nn.BatchNorm2d(12)
        _randomise_batch_norms(bn)
        bn.eval()
        x = torch.randn(2, 8, 9, 11)
        torch.testing.assert_close(fold(conv, bn)(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["tiny_cnn", "resnet18"])
def test_backbones_fuse_every_batch_norm(arch):
    torch.manual_seed(0)
    net = build_backbone(arch)
    _randomise_batch_norms(net)
    net.eval()
    x = torch.rand(1, 3, 64, 64)
    expected = net.feature_maps(x)
    assert _count_bn(net) > 0
    fuse_conv_bn(net)
    assert _count_bn(net) == 0 and net.fused
    for key, value in net.feature_maps(x).items():
        scale = expected[key].abs().max().item()  # float rounding grows with the activations
        torch.testing.assert_close(value, expected[key], rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize(
    "name, args",
    [
        # any score passes, so the comparison sees many boxes
        ("yolo", {"head": "conv", "input_size": 64, "feature_stride": 8, "score_thresh": 0.0}),
        ("faster_rcnn", {"feature_stride": 8, "score_thresh": 0.0}),
    ],
)
def test_detectors_predict_the_same_after_fusing(name, args):
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, **args)
    _randomise_batch_norms(model)
    model.eval()
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    with torch.no_grad():
        before = model(images)
        after = fuse_conv_bn(model)(images)
    assert _count_bn(model) == 0
    for b, a in zip(before, after):
        assert len(b["boxes"]) > 0
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(a["scores"], b["scores"], rtol=1e-3, atol=1e-4)
        assert torch.equal(a["labels"], b["labels"])


def test_training_mode_is_refused_and_other_layers_are_kept():
    net = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1), nn.ReLU(), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="eval"):
        fuse_conv_bn(net)
    fuse_conv_bn(net.eval())
    # BN before the conv, and a BN behind a ReLU, are not foldable: kept as they are
    assert [type(m) for m in net] == [nn.BatchNorm2d, nn.Conv2d, nn.ReLU, nn.BatchNorm2d]

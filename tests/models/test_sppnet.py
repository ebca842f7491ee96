"""SPPNet: pyramid pooling gives one length for any window; single and multi-scale."""

from __future__ import annotations

import pytest
import torch

from visionlab.models.sppnet import sppnet
from visionlab.ops import spp_rois


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize(
    "window",
    [
        [0.0, 0, 64, 64],  # the whole image
        [10.0, 12, 13, 14],  # smaller than one feature cell
        [5.0, 5, 40, 9],  # thin
        [-20.0, -20, 90, 90],  # past the image
    ],
)
def test_pyramid_pooling_length_for_any_window(window: list[float]) -> None:
    features = torch.randn(1, 8, 8, 8)  # a 64 px image at stride 8
    out = spp_rois(features, [torch.tensor([window])], 1 / 8, levels=(4, 2, 1))
    assert out.shape == (1, 8 * (16 + 4 + 1))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("scales", [[64], [48, 96]])
def test_sppnet_features_fixed_length(scales: list[int]) -> None:
    model = sppnet(
        num_classes=3,
        backbone_width=4,
        scales=scales,
        levels=[2, 1],
        feature_stride=8,
        target_size=24,
        fc_width=16,
    ).eval()
    boxes = torch.tensor([[0.0, 0, 64, 64], [3, 3, 9, 9], [10, 20, 60, 30]])
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    with torch.no_grad():
        pooled = model.pool_features(images, [boxes, boxes[:1]])
    assert pooled.shape == (4, model.pool_dim) == (4, 16 * 5)
    # a window's feature does not depend on the other windows pooled with it
    with torch.no_grad():
        alone = model.pool_features(images[:1], [boxes[1:2]])
    assert torch.allclose(alone, pooled[1:2], atol=1e-5)


def test_multiscale_picks_the_scale_nearest_the_target() -> None:
    model = sppnet(num_classes=3, backbone_width=4, scales=[64, 256], target_size=32, fc_width=16)
    boxes = torch.tensor([[0.0, 0, 8, 8], [0, 0, 32, 32]])
    choice = model.regions.scale_choice(boxes, image_min_side=64)
    assert choice.tolist() == [1, 0]  # small window: enlarged image; large one: as it is

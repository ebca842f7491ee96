"""YOLO's exposure / saturation jitter in HSV, against Python's colorsys."""

from __future__ import annotations

import colorsys

import torch

from visionlab.data.transforms import build_transforms
from visionlab.data.yolo_augment import scale_hsv


def test_scale_hsv_matches_colorsys():
    torch.manual_seed(0)
    image = torch.rand(3, 4, 5)
    image[:, 0, 0] = 0.4  # a grey pixel
    torch.testing.assert_close(scale_hsv(image, 1.0, 1.0), image, atol=1e-6, rtol=0)
    for exposure, saturation in ((1.3, 0.7), (0.6, 1.5)):
        got = scale_hsv(image, exposure, saturation)
        for y in range(4):
            for x in range(5):
                h, s, v = colorsys.rgb_to_hsv(*image[:, y, x].tolist())
                want = colorsys.hsv_to_rgb(h, min(1.0, s * saturation), min(1.0, v * exposure))
                torch.testing.assert_close(got[:, y, x], torch.tensor(want), atol=1e-5, rtol=0)


def test_hsv_jitter_option_keeps_boxes():
    tf = build_transforms("detection", True, 32, hflip=0.0, scale_jitter=None, hsv_jitter=0.5)
    boxes = torch.tensor([[2.0, 3.0, 20.0, 30.0]])
    image, target = tf(torch.rand(3, 32, 32), {"boxes": boxes, "labels": torch.tensor([1])})
    assert image.shape == (3, 32, 32) and image.min() >= 0 and image.max() <= 1
    torch.testing.assert_close(target["boxes"], boxes)

"""YOLO's colour augmentation: exposure and saturation scaled in the HSV colour space.

Redmon et al., CVPR 2016, Sec. 2.2: "we also randomly adjust the exposure and saturation of
the image by up to a factor of 1.5 in the HSV color space". As the reference code, a factor
``f`` is drawn from ``[1, 1 + jitter]`` and inverted with probability 1/2, so it lies in
``[1 / (1 + jitter), 1 + jitter]``; V (exposure) and S (saturation) are multiplied and clipped
to ``[0, 1]``, the hue is unchanged. Geometry (scaling and translation up to 20 %) is in
:func:`visionlab.data.transforms.build_transforms` (``scale_jitter``, ``translate``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors


def scale_hsv(image: Tensor, exposure: float, saturation: float) -> Tensor:
    """Multiply the V and S channels of an RGB image, keeping its hue.

    Computed in RGB: a channel value ``c`` of a pixel with maximum ``M`` and minimum ``m`` is
    ``V - V S (M - c) / (M - m)`` with ``V = M``, ``S = (M - m) / M``, so scaling V and S and
    applying the same formula is the HSV round trip without the hue's case analysis.

    Args:
        image: ``Tensor[3, H, W]`` float RGB in ``[0, 1]``.
        exposure, saturation: factors for V and S.

    Returns:
        ``Tensor[3, H, W]`` in ``[0, 1]``.
    """
    high = image.max(0).values
    low = image.min(0).values
    chroma = high - low
    sat = torch.where(high > 0, chroma / high.clamp(min=1e-12), torch.zeros_like(high))
    new_v = (high * exposure).clamp(0, 1)
    new_s = (sat * saturation).clamp(0, 1)
    below_max = torch.where(chroma > 0, (high - image) / chroma.clamp(min=1e-12), 0.0)
    return (new_v - new_v * new_s * below_max).clamp(0, 1)


def _factor(jitter: float) -> float:
    f = 1.0 + float(torch.rand(())) * jitter
    return f if torch.rand(()) < 0.5 else 1.0 / f


class RandomHSV:
    """A step of :class:`visionlab.data.transforms.JointTransform`: scale exposure and
    saturation by random factors up to ``1 + jitter`` (YOLO: ``jitter=0.5``); boxes and masks
    are unchanged."""

    def __init__(self, jitter: float) -> None:
        if jitter < 0:
            raise ValueError(f"hsv_jitter must be >= 0, got {jitter}")
        self.jitter = jitter

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        image = sample["image"]
        out = scale_hsv(image.as_subclass(Tensor), _factor(self.jitter), _factor(self.jitter))
        return {**sample, "image": tv_tensors.Image(out)}

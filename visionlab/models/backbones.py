"""Convolutional backbones with one interface for classifiers, FCN and detectors.

Every backbone takes float images ``Tensor[B, 3, H, W]`` RGB in ``[0, 1]`` and normalises
them itself with the ImageNet mean and std, so callers never normalise. The map at stride
``s`` is the deepest layer still at ``1/s`` (detectron2's C2..C5, e.g. VGG16's conv5_3 at
16, as Faster R-CNN sec. 4), exact for sizes divisible by 32 except in AlexNet (a pixel or
two smaller). Backbones: ``tiny_cnn`` (ours, fast on a CPU), and torchvision's ``alexnet``,
``vgg16``, ``resnet18``, ``resnet50``, ``mobilenet_v3_small`` built with ``weights=None``;
their module names are torchvision's, so its weights load (:mod:`visionlab.models.pretrained`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from visionlab.errors import VisionLabError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STRIDES = (4, 8, 16, 32)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; the statistics are buffers outside the state dict."""

    def __init__(self, mean: Iterable[float] = IMAGENET_MEAN, std: Iterable[float] = IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class Backbone(nn.Module):
    """Base class: images in ``[0, 1]`` to feature maps at strides 4, 8, 16 and 32.

    Subclasses set ``arch`` and implement :meth:`_stages`, a generator that yields
    ``(stride, feature_map)`` after each stage, in increasing stride order; the base class
    does the normalisation, the bookkeeping and the early stop.

    Attributes:
        arch: architecture name (``"resnet18"``, ...).
        feature_channels: ``{"stride4": C4, ..., "stride32": C32}``.
        out_channels: channels of the last map (``feature_channels["stride32"]``).
        out_stride: stride of the last map (32).
        frozen_stride: stages up to this stride are frozen (:meth:`freeze_to`; 0: none).
        used_stride: stages past this stride are unused (:meth:`use_up_to`; 32: none).
    """

    arch: str = ""

    def __init__(self, channels: dict[int, int]) -> None:
        super().__init__()
        self.normalize = Normalize()
        self.feature_channels = {f"stride{s}": int(channels[s]) for s in STRIDES}
        self.out_stride = STRIDES[-1]
        self.out_channels = int(channels[self.out_stride])
        self.frozen_stride = 0
        self.used_stride = self.out_stride

    def _stages(self, x: Tensor) -> Iterator[tuple[int, Tensor]]:
        raise NotImplementedError

    def stage_modules(self, stride: int) -> list[nn.Module]:
        """The modules that compute the stride-``stride`` map from the previous one (the
        stride-4 stage includes the stem)."""
        raise NotImplementedError

    def freeze_to(self, stride: int) -> None:
        """Freeze every layer up to the stride-``stride`` map (0: none; 4, 8, 16 or 32): no
        gradients, batch norms in eval mode, run without autograd. The other stages train
        again, except those past :attr:`used_stride`."""
        if stride != 0 and stride not in STRIDES:
            raise VisionLabError(
                f"{self.arch}: frozen_stride must be 0 or one of {list(STRIDES)}, got {stride!r}"
            )
        self.frozen_stride = int(stride)
        self._apply_trainable()

    def use_up_to(self, stride: int) -> None:
        """Declare the stride-``stride`` map the deepest one the model reads (4, 8, 16 or 32):
        the stages past it get ``requires_grad=False`` and eval-mode batch norms, and keep
        their state-dict keys; ``use_up_to(32)`` turns them back on."""
        if stride not in STRIDES:
            raise VisionLabError(
                f"{self.arch}: used_stride must be one of {list(STRIDES)}, got {stride!r}"
            )
        self.used_stride = int(stride)
        self._apply_trainable()

    def trains_stage(self, stride: int) -> bool:
        """Whether the stage ending at the stride-``stride`` map trains: not frozen by
        :meth:`freeze_to` and not past :attr:`used_stride`."""
        return self.frozen_stride < stride <= self.used_stride

    def _apply_trainable(self) -> None:
        for s in STRIDES:
            for module in self.stage_modules(s):
                for p in module.parameters():
                    p.requires_grad_(self.trains_stage(s))
        self.train(self.training)

    def frozen_modules(self) -> list[nn.Module]:
        """The modules of the stages that do not train (frozen, or past ``used_stride``)."""
        return [m for s in STRIDES if not self.trains_stage(s) for m in self.stage_modules(s)]

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    @staticmethod
    def _check_input(x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"expected images Tensor[B, 3, H, W] in [0, 1], got {shape}")

    def feature_maps(self, x: Tensor, strides: Iterable[int] | None = None) -> dict[str, Tensor]:
        """Intermediate feature maps of images ``x``.

        Args:
            x: ``Tensor[B, 3, H, W]``, float RGB in ``[0, 1]``.
            strides: which maps to return (subset of 4, 8, 16, 32); ``None`` = all.

        Returns:
            ``{"strideS": Tensor[B, feature_channels["strideS"], H / S, W / S]}`` in
            increasing stride order.
        """
        wanted = set(STRIDES if strides is None else strides)
        bad = wanted - set(STRIDES)
        if bad:
            raise ValueError(
                f"{self.arch}: no feature map at stride(s) {sorted(bad)}; "
                f"available: {list(STRIDES)}"
            )
        self._check_input(x)
        out: dict[str, Tensor] = {}
        if not wanted:
            return out
        last = max(wanted)
        stages = self._stages(self.normalize(x))
        grad = torch.is_grad_enabled()
        for expected in STRIDES:
            # frozen stages run without autograd: no graph kept, no backward through them
            with torch.set_grad_enabled(grad and expected > self.frozen_stride):
                stride, feature = next(stages)
            if stride in wanted:
                out[f"stride{stride}"] = feature
            if stride == last:
                break
        return out

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map: ``Tensor[B, out_channels, H / 32, W / 32]``."""
        return self.feature_maps(x, strides=(self.out_stride,))[f"stride{self.out_stride}"]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)


class SequentialBackbone(Backbone):
    """A backbone that is one ``nn.Sequential`` called ``features`` (AlexNet, VGG, MobileNet).

    ``stage_ends[i] = (stride, index)``: the map for ``stride`` is the output of
    ``features[index]``.
    """

    def __init__(
        self, features: nn.Sequential, stage_ends: list[tuple[int, int]], channels: dict[int, int]
    ) -> None:
        super().__init__(channels)
        self.features = features
        self.stage_ends = stage_ends

    def _stages(self, x: Tensor) -> Iterator[tuple[int, Tensor]]:
        start = 0
        for stride, end in self.stage_ends:
            for i in range(start, end + 1):
                x = self.features[i](x)
            start = end + 1
            yield stride, x

    def stage_modules(self, stride: int) -> list[nn.Module]:
        start = 0
        for s, end in self.stage_ends:
            if s == stride:
                return list(self.features[start : end + 1])
            start = end + 1
        return []


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution (no bias), batch norm, ReLU: the unit of :class:`TinyCNN`."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    """Two 3x3 conv-bn layers and an identity shortcut, then ReLU (ResNet's basic block,
    He et al. 2016, fig. 2), at a fixed width and resolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(out)))


class TinyCNN(Backbone):
    """A small residual CNN that trains in minutes on a CPU (ours, no paper): a stride-2
    conv-bn-relu stem, then four stages, each a stride-2 conv-bn-relu that changes the width
    and one :class:`ResidualBlock` (maps at strides 2, 4, 8, 16, 32).

    Args:
        width: channels of the stem; stages have ``width * (2, 4, 8, 12)``.
    """

    arch = "tiny_cnn"

    def __init__(self, *, width: int = 16) -> None:
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise VisionLabError(f"tiny_cnn: width must be a positive integer, got {width!r}")
        widths = [width, 2 * width, 4 * width, 8 * width, 12 * width]
        super().__init__(dict(zip(STRIDES, widths[1:])))
        self.stem = conv_bn_relu(3, widths[0], stride=2)
        self.stages = nn.ModuleList(
            nn.Sequential(conv_bn_relu(c_in, c_out, stride=2), ResidualBlock(c_out))
            for c_in, c_out in itertools.pairwise(widths)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _stages(self, x: Tensor) -> Iterator[tuple[int, Tensor]]:
        x = self.stem(x)
        for stride, stage in zip(STRIDES, self.stages):
            x = stage(x)
            yield stride, x

    def stage_modules(self, stride: int) -> list[nn.Module]:
        stage = self.stages[STRIDES.index(stride)]
        return [self.stem, stage] if stride == STRIDES[0] else [stage]


class ResNetBackbone(Backbone):
    """torchvision ResNet without ``avgpool``/``fc`` (He et al. 2016): C2..C5 are
    ``layer1``..``layer4`` at strides 4..32.

    Args:
        arch: ``resnet18`` | ``resnet50`` (any torchvision ResNet name works).
        net: the torchvision ResNet to take the layers from.
    """

    def __init__(self, arch: str, net: nn.Module) -> None:
        layers = (net.layer1, net.layer2, net.layer3, net.layer4)
        # the last block's last conv gives the stage width (BasicBlock: conv2, Bottleneck: conv3)
        channels = [getattr(layer[-1], "conv3", layer[-1].conv2).out_channels for layer in layers]
        super().__init__(dict(zip(STRIDES, channels)))
        self.arch = arch
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = layers

    def _stages(self, x: Tensor) -> Iterator[tuple[int, Tensor]]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stride, layer in zip(STRIDES, (self.layer1, self.layer2, self.layer3, self.layer4)):
            x = layer(x)
            yield stride, x

    def stage_modules(self, stride: int) -> list[nn.Module]:
        layer = (self.layer1, self.layer2, self.layer3, self.layer4)[STRIDES.index(stride)]
        return [self.conv1, self.bn1, layer] if stride == STRIDES[0] else [layer]


# torchvision networks whose ``features`` make a SequentialBackbone: its stage ends, (stride,
# index of the last layer at it), and the channels at each stride.
_SEQUENTIAL: dict[str, tuple[list[tuple[int, int]], dict[int, int]]] = {
    # features: 0 conv1 s4, 1 relu, 2 pool, 3 conv2, 4 relu, 5 pool, 6-11 conv3-5 + relu, 12 pool
    "alexnet": ([(4, 1), (8, 4), (16, 11), (32, 12)], {4: 64, 8: 192, 16: 256, 32: 256}),
    # relu3_3 (15), relu4_3 (22), relu5_3 (29), pool5 (30)
    "vgg16": ([(4, 15), (8, 22), (16, 29), (32, 30)], {4: 256, 8: 512, 16: 512, 32: 512}),
    # strides of features[i] outputs: 0:2, 1:4, 2-3:8, 4-8:16, 9-12:32 (12 = 1x1 conv, 576 ch)
    "mobilenet_v3_small": ([(4, 1), (8, 3), (16, 8), (32, 12)], {4: 16, 8: 24, 16: 48, 32: 576}),
}


def build_backbone_and_tv_net(arch: str) -> tuple[Backbone, nn.Module | None]:
    """The backbone ``arch`` and, for torchvision architectures, the whole torchvision
    network it was cut from (the classifier takes its head layers from it)."""
    if arch == "tiny_cnn":
        return TinyCNN(), None
    if arch not in ("resnet18", "resnet50") and arch not in _SEQUENTIAL:
        raise _unknown_backbone(arch)
    import torchvision

    net = torchvision.models.get_model(arch, weights=None)
    if arch not in _SEQUENTIAL:
        return ResNetBackbone(arch, net), net
    ends, channels = _SEQUENTIAL[arch]
    backbone = SequentialBackbone(net.features, list(ends), dict(channels))
    backbone.arch = arch
    return backbone, net


BACKBONES: tuple[str, ...] = (
    "tiny_cnn",
    "alexnet",
    "vgg16",
    "resnet18",
    "resnet50",
    "mobilenet_v3_small",
)


def _unknown_backbone(arch: str) -> VisionLabError:
    from visionlab.models.registry import did_you_mean

    hint = did_you_mean(arch, BACKBONES)
    return VisionLabError(f"unknown backbone {arch!r}{hint}; known: {', '.join(BACKBONES)}")


def list_backbones() -> list[str]:
    """Names accepted by :func:`build_backbone`."""
    return list(BACKBONES)


def build_backbone(
    arch: str,
    *,
    pretrained: bool | str | Path | None = None,
    width: int = 16,
    frozen_stride: int = 0,
) -> Backbone:
    """Build backbone ``arch`` for a detector or FCN.

    Args:
        arch: one of :func:`list_backbones`.
        pretrained: ``None`` (random), a weights file (:mod:`visionlab.models.pretrained`;
            of a visionlab classifier only ``backbone.*``), or ``True`` / ``"hub"``.
        width: ``tiny_cnn`` only, the stem width.
        frozen_stride: freeze the layers up to this stride's map (:meth:`Backbone.freeze_to`).
    """
    if arch == "tiny_cnn":
        backbone: Backbone = TinyCNN(width=width)
    else:
        if width != 16:
            raise VisionLabError(f"backbone {arch!r} has no `width` argument (tiny_cnn only)")
        backbone, _ = build_backbone_and_tv_net(arch)
    if pretrained not in (None, False, ""):
        from visionlab.models.pretrained import BACKBONE_PREFIX, load_pretrained

        load_pretrained(backbone, pretrained, prefix=BACKBONE_PREFIX)
    if frozen_stride:
        backbone.freeze_to(frozen_stride)
    return backbone

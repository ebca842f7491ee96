"""FCN-32s, FCN-16s and FCN-8s: fully convolutional networks for semantic segmentation.

Long, Shelhamer and Darrell, "Fully Convolutional Networks for Semantic Segmentation",
CVPR 2015: a classifier's fully connected layers become convolutions (Sec. 3.1), the coarse
score map is upsampled by learnable deconvolutions initialised to bilinear interpolation
(Sec. 3.3), and skips from pool4 (FCN-16s) and pool3 (FCN-8s) refine it (Sec. 4.2).

Differences from the reference Caffe nets: instead of padding conv1_1 by 100 pixels and
cropping with hand-computed offsets, the input is padded at the bottom and right to a
multiple of 32 with the normalisation mean and the scores cropped back to ``[:H, :W]``;
the final upsampling is learnable too (``upsample="bilinear"`` fixes every step); the skip
and scoring layers are zero-initialised (Sec. 4.3), and the at-once nets' pool4 / pool3
scaling is ``skip_scales`` (default 1: our backbones see normalised inputs).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionlab.errors import CheckpointError, VisionLabError
from visionlab.models.backbones import IMAGENET_MEAN, Backbone, build_backbone
from visionlab.models.batching import batch_images, pad_to_multiple
from visionlab.models.registry import register_model

VARIANT_STRIDES = {"fcn32s": 32, "fcn16s": 16, "fcn8s": 8}
FEATURE_STRIDES = (8, 16, 32)
# VGG16's pool3, pool4 and pool5 are these indices of torchvision's ``features``.
VGG16_POOL_TAPS = {8: (16, 256), 16: (23, 512), 32: (30, 512)}
UPSAMPLE_MODES = ("deconv", "bilinear")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FCNHeadConfig:
    """The classifier's fully connected layers as convolutions (fc6, fc7) before scoring.

    Attributes:
        kernel_size: fc6's spatial size; 7 for VGG16, whose fc6 saw a 7x7x512 pool5 map.
        width: channels of fc6 and fc7 (4096 in VGG16; smaller is the "reduced" option).
        dropout: dropout after fc6 and after fc7 (0.5 in the paper).
    """

    kernel_size: int = 7
    width: int = 4096
    dropout: float = 0.5


# fc6/fc7 per backbone: VGG16 is the paper's; the others replace global pooling + fc by a
# small convolutional head of the same shape (conv k x k -> 1x1 conv -> score).
DEFAULT_HEADS = {
    "vgg16": FCNHeadConfig(kernel_size=7, width=4096, dropout=0.5),
    "resnet18": FCNHeadConfig(kernel_size=3, width=512, dropout=0.1),
    "resnet50": FCNHeadConfig(kernel_size=3, width=512, dropout=0.1),
    "tiny_cnn": FCNHeadConfig(kernel_size=3, width=128, dropout=0.1),
}


def bilinear_kernel(channels: int, factor: int) -> Tensor:
    """Weights of a ``ConvTranspose2d(channels, channels, 2f, stride=f, padding=f // 2)``
    that upsample each channel by ``f`` with bilinear interpolation: per axis
    ``w(i) = 1 - |i - (f - 0.5)| / f``, equal to ``F.interpolate(..., mode="bilinear",
    align_corners=False)`` except on the outer ``f // 2`` rows and columns.

    Returns:
        Tensor[channels, channels, 2f, 2f], zero off the channel diagonal.
    """
    if factor < 2 or factor % 2:
        raise ValueError(f"bilinear upsampling kernels need an even factor >= 2, got {factor}")
    size = 2 * factor
    axis = 1.0 - (torch.arange(size, dtype=torch.float32) - (factor - 0.5)).abs() / factor
    kernel2d = axis[:, None] * axis[None, :]
    weight = torch.zeros(channels, channels, size, size)
    weight[range(channels), range(channels)] = kernel2d
    return weight


class Deconv(nn.ConvTranspose2d):
    """Learnable upsampling by an even ``factor``, initialised to bilinear interpolation.

    ``[B, C, h, w] -> [B, C, h * factor, w * factor]`` exactly.
    """

    def __init__(self, channels: int, factor: int) -> None:
        weight = bilinear_kernel(channels, factor)
        super().__init__(channels, channels, 2 * factor, stride=factor, padding=factor // 2,
                         bias=False)  # fmt: skip
        self.factor = factor
        with torch.no_grad():
            self.weight.copy_(weight)


class Bilinear(nn.Module):
    """Fixed bilinear upsampling by ``factor`` (``align_corners=False``), no parameters."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        size = (x.shape[-2] * self.factor, x.shape[-1] * self.factor)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


def make_upsample(mode: str, channels: int, factor: int) -> nn.Module:
    """``Deconv`` for ``mode="deconv"``, ``Bilinear`` for ``mode="bilinear"``."""
    if mode == "deconv":
        return Deconv(channels, factor)
    if mode == "bilinear":
        return Bilinear(factor)
    raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {mode!r}")


class FullyConvHead(nn.Module):
    """fc6 (k x k conv) -> ReLU -> dropout -> fc7 (1x1 conv) -> ReLU -> dropout -> score_fr.

    ``[B, in_channels, h, w] -> [B, num_classes, h, w]`` (fc6 is padded to keep h, w).
    """

    def __init__(self, in_channels: int, num_classes: int, config: FCNHeadConfig) -> None:
        super().__init__()
        k, width = config.kernel_size, config.width
        self.fc6 = nn.Conv2d(in_channels, width, k, padding=k // 2)
        self.fc7 = nn.Conv2d(width, width, 1)
        self.drop = nn.Dropout2d(config.dropout) if config.dropout > 0 else nn.Identity()
        self.score_fr = _zero_conv(width, num_classes)  # Sec. 4.3: zero-initialised

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(F.relu(self.fc6(x)))
        x = self.drop(F.relu(self.fc7(x)))
        return self.score_fr(x)


class FCNEncoder(nn.Module):
    """A backbone's feature maps at strides 8, 16 and 32, as the FCN skips take them: VGG16's
    pool3 / pool4 / pool5 (the paper's), the other backbones' ``feature_maps``.

    ``forward(Tensor[B, 3, H, W] in [0, 1], H and W multiples of 32) -> [c8, c16, c32]``,
    ``c_s: Tensor[B, channels[s], H / s, W / s]``; the backbone normalises the input.
    """

    pad_fill = IMAGENET_MEAN  # padding with the mean is padding with zeros after normalising

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.arch = backbone.arch
        if self.arch == "vgg16":
            self.channels = {s: c for s, (_, c) in VGG16_POOL_TAPS.items()}
        else:
            self.channels = {s: backbone.feature_channels[f"stride{s}"] for s in FEATURE_STRIDES}

    def forward(self, x: Tensor) -> list[Tensor]:
        if self.arch != "vgg16":
            maps = self.backbone.feature_maps(x, strides=FEATURE_STRIDES)
            return [maps[f"stride{s}"] for s in FEATURE_STRIDES]
        x = self.backbone.normalize(x)
        taps, start, out = [VGG16_POOL_TAPS[s][0] for s in FEATURE_STRIDES], 0, []
        for end in taps:
            for layer in self.backbone.features[start : end + 1]:
                x = layer(x)
            out.append(x)
            start = end + 1
        return out


class FCN(nn.Module):
    """FCN-32s / 16s / 8s over a backbone with feature maps at strides 8, 16 and 32.

    Args:
        encoder: an :class:`FCNEncoder` (``forward(x) -> [c8, c16, c32]``, ``channels``,
            ``pad_fill``); it normalises the [0, 1] input.
        num_classes: output channels, background included (class 0).
        output_stride: 32 (FCN-32s), 16 (FCN-16s, + pool4 skip) or 8 (FCN-8s, + pool3).
        upsample: ``"deconv"`` (learnable, bilinear-initialised) or ``"bilinear"`` (fixed).
        head: fc6/fc7 settings.
        skip_scales: multipliers on the pool4 and pool3 features before their score layers
            (the at-once reference uses (0.01, 0.0001)).

    ``forward(x: Tensor[B, 3, H, W] in [0, 1]) -> logits Tensor[B, num_classes, H, W]`` for
    any H, W; :meth:`forward_images` takes a list of images of different sizes.
    """

    task = "segmentation"

    def __init__(
        self,
        *,
        encoder: FCNEncoder,
        num_classes: int,
        output_stride: int = 8,
        upsample: str = "deconv",
        head: FCNHeadConfig,
        skip_scales: tuple[float, float] = (1.0, 1.0),
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background, so needs >= 2: {num_classes}")
        self.encoder = encoder
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.upsample_mode = upsample
        self.skip_scales = tuple(float(s) for s in skip_scales)
        c8, c16, c32 = (encoder.channels[s] for s in FEATURE_STRIDES)
        self.head = FullyConvHead(c32, num_classes, head)
        if output_stride <= 16:
            self.score_pool4 = _zero_conv(c16, num_classes)
            self.upscore2 = make_upsample(upsample, num_classes, 2)
        if output_stride == 8:
            self.score_pool3 = _zero_conv(c8, num_classes)
            self.upscore_pool4 = make_upsample(upsample, num_classes, 2)
        self.upscore_final = make_upsample(upsample, num_classes, output_stride)
        self.build_args: dict = {}  # filled by the registry
        self._unfrozen_stride: int | None = None  # set while freeze_backbone holds

    @property
    def size_divisor(self) -> int:
        """Inputs are padded internally to a multiple of this (the deepest stride)."""
        return FEATURE_STRIDES[-1]

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, 3, H, W]`` in [0, 1] -> logits ``Tensor[B, num_classes, H, W]``."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"FCN expects images [B, 3, H, W], got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        x = pad_to_multiple(x, self.size_divisor, fill=self.encoder.pad_fill)
        pool3, pool4, pool5 = self.encoder(x)
        score = self.head(pool5)  # [B, K, H'/32, W'/32]
        if self.output_stride <= 16:
            score = self.upscore2(score) + self.score_pool4(pool4 * self.skip_scales[0])
        if self.output_stride == 8:
            score = self.upscore_pool4(score) + self.score_pool3(pool3 * self.skip_scales[1])
        score = self.upscore_final(score)  # [B, K, H', W']
        return score[..., :height, :width]

    @torch.no_grad()
    def forward_images(self, images: Sequence[Tensor]) -> list[Tensor]:
        """Logits for images of different sizes, as one padded batch (no gradients).

        Args:
            images: list of ``Tensor[3, H_i, W_i]`` in [0, 1].

        Returns:
            list of ``Tensor[num_classes, H_i, W_i]`` (padding may shift scores near an
            image's bottom/right edge a little compared with predicting it alone).
        """
        batch, sizes = batch_images(images, self.size_divisor, fill=self.encoder.pad_fill)
        logits = self(batch)
        return [logit[:, :h, :w] for logit, (h, w) in zip(logits, sizes)]

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The encoder's parameters (a lower learning rate suits pretrained ones)."""
        return list(self.encoder.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        """Everything but the encoder: fc6/fc7, score and upsampling layers."""
        ids = {id(p) for p in self.encoder.parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def freeze_backbone(self) -> None:
        """Train everything but the encoder: :meth:`Backbone.freeze_to` of its last map (no
        gradients, batch norms in eval mode)."""
        backbone = self.encoder.backbone
        if self._unfrozen_stride is None:  # what unfreezing returns to: ``frozen_stride``
            self._unfrozen_stride = backbone.frozen_stride
        backbone.freeze_to(backbone.out_stride)

    def unfreeze_backbone(self) -> None:
        """Undo :meth:`freeze_backbone` (layers frozen by ``frozen_stride`` stay frozen)."""
        backbone = self.encoder.backbone
        if self._unfrozen_stride is not None:
            backbone.freeze_to(self._unfrozen_stride)
        self._unfrozen_stride = None


def _zero_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def build_fcn(
    variant: str,
    *,
    num_classes: int = 21,
    backbone: str = "tiny_cnn",
    upsample: str = "deconv",
    pretrained_backbone: str | None = None,
    fc_width: int | None = None,
    skip_scales: Sequence[float] = (1.0, 1.0),
    pretrained: str | None = None,
    frozen_stride: int = 0,
) -> FCN:
    """Build ``fcn32s`` / ``fcn16s`` / ``fcn8s`` (see the registered builders).

    Raises:
        VisionLabError: an argument a recipe got wrong (names the argument).
        CheckpointError: ``pretrained_backbone`` missing or of another architecture.
    """
    if variant not in VARIANT_STRIDES:
        raise VisionLabError(f"unknown FCN variant {variant!r}; known: {list(VARIANT_STRIDES)}")
    if backbone not in DEFAULT_HEADS:
        raise VisionLabError(
            f"{variant}: backbone={backbone!r} is not one of {', '.join(DEFAULT_HEADS)}"
        )
    if upsample not in UPSAMPLE_MODES:
        raise VisionLabError(f"{variant}: upsample={upsample!r} is not one of {UPSAMPLE_MODES}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise VisionLabError(
            f"{variant}: num_classes={num_classes!r} must be an integer >= 2 (background included)"
        )
    if fc_width is not None and (not isinstance(fc_width, int) or fc_width < 1):
        raise VisionLabError(f"{variant}: fc_width={fc_width!r} must be a positive integer")
    if pretrained not in (None, "") and pretrained_backbone not in (None, ""):
        raise VisionLabError(f"{variant}: give pretrained or pretrained_backbone, not both")
    if not isinstance(skip_scales, list | tuple) or len(skip_scales) != 2:
        raise VisionLabError(f"{variant}: skip_scales={skip_scales!r} needs two numbers")
    head = DEFAULT_HEADS[backbone]
    if fc_width is not None:
        head = FCNHeadConfig(head.kernel_size, fc_width, head.dropout)
    encoder = FCNEncoder(
        build_backbone(backbone, pretrained=pretrained_backbone, frozen_stride=frozen_stride)
    )
    model = FCN(
        encoder=encoder,
        num_classes=num_classes,
        output_stride=VARIANT_STRIDES[variant],
        upsample=upsample,
        head=head,
        skip_scales=(float(skip_scales[0]), float(skip_scales[1])),
    )
    if pretrained_backbone not in (None, False, "") and backbone == "vgg16":
        load_vgg_fc_as_conv(model.head, pretrained_backbone)
    if pretrained not in (None, ""):
        load_fcn_weights(model, pretrained)
    return model


def load_fcn_weights(model: FCN, source: str) -> list[str]:
    """Initialise ``model`` from an FCN checkpoint, or from a classifier's weights.

    An FCN checkpoint of the same backbone gives every tensor of the same name and shape
    (FCN-32s into FCN-16s is the paper's staged training, Sec. 4.2); any other file is a
    classifier's weights for the backbone, as ``pretrained_backbone``.

    Returns:
        The names of the tensors that kept their initialisation.

    Raises:
        CheckpointError: unreadable file, or an FCN of another backbone.
    """
    from visionlab.models.pretrained import read_state_dict, resolve_source

    path = resolve_source(source, model.encoder.arch)
    state, meta = read_state_dict(path)
    is_fcn = meta.get("model_name") in VARIANT_STRIDES or any(
        k.startswith("encoder.") for k in state
    )
    if not is_fcn:
        from visionlab.models.pretrained import BACKBONE_PREFIX, load_pretrained

        load_pretrained(model.encoder.backbone, path, prefix=BACKBONE_PREFIX)
        if model.encoder.arch == "vgg16":
            load_vgg_fc_as_conv(model.head, str(path))
        return [k for k in model.state_dict() if not k.startswith("encoder.")]
    target = model.state_dict()
    fits = {k: v for k, v in state.items() if k in target and v.shape == target[k].shape}
    lacking = [
        k
        for k in target
        if k.startswith("encoder.") and k not in fits and not k.endswith("num_batches_tracked")
    ]
    if lacking:
        other = (meta.get("model_args") or {}).get("backbone", "another backbone")
        raise CheckpointError(
            f"{path}: an FCN with {other}, whose encoder does not fit this "
            f"{model.encoder.arch} FCN ({len(lacking)} tensors, e.g. {lacking[0]})"
        )
    model.load_state_dict(fits, strict=False)
    fresh = [k for k in target if k not in fits]
    log.info("%s: loaded %d FCN tensors; fresh: %s", path, len(fits), ", ".join(fresh) or "none")
    return fresh


def linear_to_conv(weight: Tensor, in_channels: int, kernel_size: int) -> Tensor:
    """A ``Linear(in_channels * k * k, out)`` weight (C-order flattening, as torchvision's
    VGG) as the equivalent ``Conv2d(in_channels, out, k)`` weight ``Tensor[out,
    in_channels, k, k]`` (Sec. 3.1)."""
    return weight.reshape(weight.shape[0], in_channels, kernel_size, kernel_size)


def load_vgg_fc_as_conv(head: FullyConvHead, source: str) -> bool:
    """Load a VGG16 classifier's fc6 / fc7 into ``head`` as 7x7 and 1x1 convolutions.

    ``source``: what :func:`visionlab.models.pretrained.load_pretrained` reads. Returns
    False, leaving fc6/fc7 as initialised, when the file has none or of another width.
    """
    from visionlab.models.pretrained import convert_keys, read_state_dict, resolve_source

    path = resolve_source(source, "vgg16")
    state = convert_keys(read_state_dict(path)[0], "vgg16")
    names = {"fc6": "pre_logits.0", "fc7": "pre_logits.3"}
    if not all(f"{n}.weight" in state and f"{n}.bias" in state for n in names.values()):
        log.info("%s: no fc6/fc7 in the file; FCN fc6/fc7 start from scratch", path)
        return False
    new = {}
    for ours, theirs in names.items():
        conv = getattr(head, ours)
        weight, bias = state[f"{theirs}.weight"], state[f"{theirs}.bias"]
        if weight.numel() != conv.weight.numel() or bias.shape != conv.bias.shape:
            log.info(
                "%s: %s has %d outputs, the FCN head %d (fc_width); fc6/fc7 start from scratch",
                path, theirs, bias.numel(), conv.bias.numel(),
            )  # fmt: skip
            return False
        new[f"{ours}.weight"] = linear_to_conv(weight, conv.in_channels, conv.kernel_size[0])
        new[f"{ours}.bias"] = bias
    missing = head.load_state_dict(new, strict=False)
    if missing.unexpected_keys:  # pragma: no cover - the names above are the head's own
        raise CheckpointError(f"{path}: fc6/fc7 did not load ({missing.unexpected_keys})")
    log.info("%s: fc6/fc7 loaded as convolutions (7x7x512 -> 4096, 1x1 4096 -> 4096)", path)
    return True


_BUILDER_DOC = """{title}: fully convolutional segmentation (Long et al., CVPR 2015){detail}

    Args:
        num_classes: output classes, background (0) included.
        backbone: ``tiny_cnn`` | ``vgg16`` | ``resnet18`` | ``resnet50``.
        upsample: ``deconv`` (learnable, bilinear-initialised) | ``bilinear`` (fixed).
        pretrained_backbone: a classifier checkpoint or state dict initialising the backbone
            (and, for VGG16 with ``fc_width=None``, fc6/fc7, reshaped into convolutions).
        fc_width: channels of fc6/fc7 (None = the backbone's default, 4096 for VGG16).
        skip_scales: multipliers on pool4 / pool3 features (at-once reference: 0.01, 1e-4).
        pretrained: an FCN checkpoint to start from (e.g. FCN-32s for FCN-16s, the paper's
            staged training; tensors that do not fit stay fresh) or, like
            ``pretrained_backbone``, a classifier's weights. ``transfer.pretrained`` of a
            recipe sets it.
        frozen_stride: freeze the pretrained backbone up to this stride's map (0: nothing;
            4: the stem and stride-4 stage; :meth:`Backbone.freeze_to`).

    Returns:
        :class:`FCN`: ``forward(Tensor[B, 3, H, W] in [0, 1]) -> Tensor[B, K, H, W]``.
    """


def _build_fcn_arguments(builder: Callable[..., FCN]) -> Callable[..., FCN]:
    """Give ``builder(**kwargs)`` the keyword arguments of :func:`build_fcn` but ``variant``:
    the signature the registry reads."""
    own = list(inspect.signature(build_fcn).parameters.values())[1:]
    builder.__signature__ = inspect.Signature(own, return_annotation=FCN)  # type: ignore[attr-defined]
    return builder


def _register_variant(variant: str, title: str, detail: str, summary: str) -> Callable[..., FCN]:
    """Register the builder of ``variant``: :func:`build_fcn` with its keyword arguments."""

    @register_model(variant, task="segmentation", summary=summary)
    @_build_fcn_arguments
    def builder(**kwargs: Any) -> FCN:
        return build_fcn(variant, **kwargs)

    builder.__name__ = builder.__qualname__ = variant
    builder.__doc__ = _BUILDER_DOC.format(title=title, detail=detail)
    return builder


fcn32s = _register_variant(
    "fcn32s", "FCN-32s", ": one 32x upsampling.", "FCN-32s: stride-32 scores, 32x upsampling"
)
fcn16s = _register_variant(
    "fcn16s", "FCN-16s", ": + pool4 skip, 16x.", "FCN-16s: FCN-32s + pool4 skip"
)
fcn8s = _register_variant(
    "fcn8s", "FCN-8s", ": + pool4 and pool3 skips, 8x.", "FCN-8s: FCN-16s + pool3 skip"
)

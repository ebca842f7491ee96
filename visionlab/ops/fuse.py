"""Fold batch normalisation into the convolution before it, for inference.

In eval mode a batch norm is a fixed per-channel affine map, ``y = (x - mean) / sqrt(var +
eps) * gamma + beta``; after a convolution it folds into the convolution's weights and bias
(``w' = w * s``, ``b' = (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``), which
saves one pass over every feature map. Deployment toolchains do this as a rule (ultralytics'
``model.fuse()`` before prediction, TensorRT, ``torch.ao.quantization.fuse_modules``); here
it is :func:`fuse_conv_bn`, used by ``visionlab predict`` and the inference timings of the
benchmarks. The fused model computes the same function up to float rounding; it has no
batch norms left, so it is for inference only (:func:`fuse_conv_bn` refuses a model in
training mode, and a fused model must not be trained or saved as a checkpoint).

Pairs that are folded: a ``Conv2d`` directly followed by a ``BatchNorm2d`` inside an
``nn.Sequential``, and the named pairs of the blocks listed in :data:`NAMED_PAIRS`
(ours and torchvision's ResNet blocks, where ``bnK`` is applied to ``convK``'s output and
to nothing else). Anything else is left as it is.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

# Module class (module.qualname) -> (conv attribute, batch-norm attribute) pairs whose
# forward applies the batch norm directly to the convolution's output.
NAMED_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "visionlab.models.backbones.ResidualBlock": (("conv1", "bn1"), ("conv2", "bn2")),
    "torchvision.models.resnet.BasicBlock": (("conv1", "bn1"), ("conv2", "bn2")),
    "torchvision.models.resnet.Bottleneck": (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    "torchvision.models.resnet.ResNet": (("conv1", "bn1"),),
    "visionlab.models.backbones.ResNetBackbone": (("conv1", "bn1"),),
}


@torch.no_grad()
def fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new ``Conv2d`` computing ``bn(conv(x))`` with ``bn``'s running statistics."""
    if not bn.track_running_stats or bn.running_var is None or bn.running_mean is None:
        raise ValueError("fold: the batch norm keeps no running statistics")
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    shift = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + shift)
    return fused


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and type(bn) is nn.BatchNorm2d
        and bn.num_features == conv.out_channels
        and bn.track_running_stats
    )


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Fold every foldable batch norm of ``model`` into its convolution, in place.

    Returns:
        ``model``, with the folded batch norms replaced by ``nn.Identity`` and
        ``model.fused = True``.

    Raises:
        ValueError: ``model`` is in training mode (its batch norms still use batch
            statistics, so there is nothing fixed to fold).
    """
    if model.training:
        raise ValueError("fuse_conv_bn: call model.eval() first (inference only)")
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            children = list(module._modules.items())
            for (conv_name, conv), (bn_name, bn) in itertools.pairwise(children):
                if _foldable(conv, bn):
                    module._modules[conv_name] = fold(conv, bn)
                    module._modules[bn_name] = nn.Identity()
        kind = f"{type(module).__module__}.{type(module).__qualname__}"
        for conv_name, bn_name in NAMED_PAIRS.get(kind, ()):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if conv is not None and bn is not None and _foldable(conv, bn):
                setattr(module, conv_name, fold(conv, bn))
                setattr(module, bn_name, nn.Identity())
    model.fused = True
    return model

"""Image classifiers: a backbone, global pooling, optional fully connected layers, a head.

Registered models (task ``classification``): ``tiny_cnn``, ``alexnet``, ``vgg16``,
``resnet18``, ``resnet50``, ``mobilenet_v3_small``: images ``Tensor[B, 3, H, W]`` RGB in
``[0, 1]`` to logits ``Tensor[B, num_classes]``. Transfer learning is "load, reset head,
freeze" (timm's): ``pretrained=PATH | True`` (:mod:`visionlab.models.pretrained`),
``freeze="backbone"``, ``head_parameters()`` / ``backbone_parameters()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from torch import Tensor, nn

from visionlab.errors import VisionLabError
from visionlab.models.backbones import Backbone, TinyCNN, build_backbone_and_tv_net
from visionlab.models.registry import register_model

Pretrained = bool | str | Path | None


class ImageClassifier(nn.Module):
    """``backbone -> adaptive average pool -> pre_logits -> dropout -> fc``.

    Args:
        backbone: a :class:`~visionlab.models.backbones.Backbone`.
        num_classes: outputs of the head.
        num_features: width of what reaches the head (after ``pre_logits``).
        pool_size: side of the pooled grid (1 = global average pooling; 6 / 7 for the
            AlexNet / VGG fully connected layers).
        pre_logits: layers between pooling (flattened) and the head, e.g. VGG's fc6-fc7.
        dropout: dropout right before the head.
    """

    def __init__(
        self,
        *,
        backbone: Backbone,
        num_classes: int,
        num_features: int,
        pool_size: int = 1,
        pre_logits: nn.Module | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_num_classes(num_classes)
        self.arch = backbone.arch
        self.backbone = backbone
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.pre_logits = pre_logits if pre_logits is not None else nn.Identity()
        self.head_drop = nn.Dropout(dropout)
        self.num_features = num_features
        self.num_classes = num_classes
        self.fc = _new_head(num_features, num_classes)

    # -- forward ------------------------------------------------------------------------

    def forward_features(self, x: Tensor) -> Tensor:
        """Last feature map ``Tensor[B, backbone.out_channels, H / 32, W / 32]``."""
        return self.backbone.forward_features(x)

    def feature_maps(self, x: Tensor, strides: Iterable[int] | None = None) -> dict[str, Tensor]:
        """The backbone's maps by stride (``{"stride8": ..., ...}``), see
        :meth:`Backbone.feature_maps`."""
        return self.backbone.feature_maps(x, strides)

    def forward_head(self, features: Tensor, *, pre_logits: bool = False) -> Tensor:
        """Feature map ``[B, C, h, w]`` to logits ``[B, num_classes]`` (or, with
        ``pre_logits=True``, the ``[B, num_features]`` vector the head sees)."""
        x = self.pre_logits(self.pool(features).flatten(1))
        if pre_logits:
            return x
        return self.fc(self.head_drop(x))

    def forward(self, x: Tensor) -> Tensor:
        """Images ``Tensor[B, 3, H, W]`` in ``[0, 1]`` to logits ``Tensor[B, num_classes]``."""
        return self.forward_head(self.forward_features(x))

    # -- transfer learning --------------------------------------------------------------

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a new one with ``num_classes`` outputs (N(0, 0.01) weights).

        ``build_args["num_classes"]`` follows, so a checkpoint rebuilds the new shape.
        """
        _check_num_classes(num_classes)
        old = self.fc
        self.fc = _new_head(self.num_features, num_classes).to(old.weight.device, old.weight.dtype)
        self.num_classes = num_classes
        build_args = getattr(self, "build_args", None)
        if isinstance(build_args, dict) and "num_classes" in build_args:
            build_args["num_classes"] = num_classes

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the head (``fc``)."""
        return self.fc.parameters()

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter but the head's (backbone and ``pre_logits``)."""
        head = {id(p) for p in self.fc.parameters()}
        return (p for p in self.parameters() if id(p) not in head)

    def freeze_backbone(self) -> None:
        """Train the head only: the backbone is frozen through its one freeze mechanism
        (:meth:`Backbone.freeze_to` of its last map: no gradients, batch norms in eval
        mode), and ``pre_logits`` (AlexNet / VGG fc6-fc7, MobileNet's first linear layer)
        stops requiring gradients too; its dropout keeps training mode."""
        self.backbone.freeze_to(self.backbone.out_stride)
        self.pre_logits.requires_grad_(False)

    def unfreeze_backbone(self) -> None:
        """Undo :meth:`freeze_backbone`: everything trains again."""
        self.backbone.freeze_to(0)
        self.pre_logits.requires_grad_(True)


def _check_num_classes(num_classes: object) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise VisionLabError(f"num_classes must be a positive integer, got {num_classes!r}")


def _new_head(num_features: int, num_classes: int) -> nn.Linear:
    fc = nn.Linear(num_features, num_classes)
    nn.init.normal_(fc.weight, std=0.01)
    nn.init.zeros_(fc.bias)
    return fc


def _set_dropout(module: nn.Module, p: float) -> None:
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = p


def _finish(model: ImageClassifier, pretrained: Pretrained, freeze: str | None) -> ImageClassifier:
    """Load pretrained weights and freeze, the two steps every builder shares."""
    if freeze not in (None, "none", "backbone"):
        raise VisionLabError(f"freeze must be None or 'backbone', got {freeze!r}")
    if pretrained not in (None, False, ""):
        from visionlab.models.pretrained import load_pretrained

        load_pretrained(model, pretrained)
    if freeze == "backbone":
        model.freeze_backbone()
    return model


def _check_dropout(dropout: object) -> float:
    if not isinstance(dropout, int | float) or not 0.0 <= float(dropout) < 1.0:
        raise VisionLabError(f"dropout must be in [0, 1), got {dropout!r}")
    return float(dropout)


def _torchvision_classifier(
    arch: str, *, num_classes: int, dropout: float, pretrained: Pretrained, freeze: str | None
) -> ImageClassifier:
    dropout = _check_dropout(dropout)
    backbone, net = build_backbone_and_tv_net(arch)
    if arch in ("alexnet", "vgg16"):
        # torchvision classifier = [fc6 block, fc7 block, fc8]; fc8 becomes our head
        features, pre_logits = net.classifier[6].in_features, net.classifier[:6]
        _set_dropout(pre_logits, dropout)
        head = dict(pre_logits=pre_logits, pool_size=net.avgpool.output_size[0])
    elif arch == "mobilenet_v3_small":
        # torchvision classifier = Linear(576, 1024), Hardswish, Dropout, Linear(1024, C)
        features = net.classifier[0].out_features
        head = dict(pre_logits=net.classifier[:2], dropout=dropout)
    else:  # ResNet
        features = net.fc.in_features
        head = dict(dropout=dropout)
    model = ImageClassifier(
        backbone=backbone, num_classes=num_classes, num_features=features, **head
    )
    return _finish(model, pretrained, freeze)


@register_model(
    "tiny_cnn", task="classification", summary="small residual CNN (1.4M params), CPU-fast"
)
def tiny_cnn(
    *,
    num_classes: int = 1000,
    width: int = 16,
    dropout: float = 0.0,
    pretrained: Pretrained = None,
    freeze: str | None = None,
) -> ImageClassifier:
    """:class:`~visionlab.models.backbones.TinyCNN` + global average pooling + linear head.

    Args:
        num_classes: classes of the head.
        width: stem channels (stages: ``width * (2, 4, 8, 12)``).
        dropout: before the head.
        pretrained: a visionlab checkpoint or state dict of the same ``width``.
        freeze: ``"backbone"`` trains the head only.
    """
    model = ImageClassifier(
        backbone=TinyCNN(width=width),
        num_classes=num_classes,
        num_features=12 * width,
        dropout=_check_dropout(dropout),
    )
    return _finish(model, pretrained, freeze)


_DOC = """{title}, torchvision's layout (weights=None: nothing downloads).

    Args:
        num_classes: classes of the head.
        dropout: {dropout_doc}
        pretrained: a torchvision / timm / visionlab weights file, or ``True`` / ``"hub"``
            for torchvision's ImageNet file in the torch hub cache. The head is dropped
            when its shape differs from ``num_classes``.
        freeze: ``"backbone"`` trains the head only.
    """


def _register_torchvision(arch: str, title: str, summary: str, dropout: float, dropout_doc: str):
    def builder(
        *,
        num_classes: int = 1000,
        dropout: float = dropout,
        pretrained: Pretrained = None,
        freeze: str | None = None,
    ) -> ImageClassifier:
        return _torchvision_classifier(
            arch, num_classes=num_classes, dropout=dropout, pretrained=pretrained, freeze=freeze
        )

    builder.__name__ = builder.__qualname__ = arch
    builder.__doc__ = _DOC.format(title=title, dropout_doc=dropout_doc)
    return register_model(arch, task="classification", summary=summary)(builder)


alexnet = _register_torchvision(
    "alexnet",
    "AlexNet (Krizhevsky et al. 2012)",
    "AlexNet (Krizhevsky et al. 2012), 61M params",
    0.5,
    "of the fc6 and fc7 dropout layers (0.5 in the paper).",
)
vgg16 = _register_torchvision(
    "vgg16",
    "VGG-16 (Simonyan & Zisserman 2015)",
    "VGG-16 (Simonyan & Zisserman 2015), 138M params",
    0.5,
    "of the fc6 and fc7 dropout layers (0.5 in the paper).",
)
resnet18 = _register_torchvision(
    "resnet18",
    "ResNet-18 (He et al. 2016)",
    "ResNet-18 (He et al. 2016), 11.7M params",
    0.0,
    "before the head (none in the paper).",
)
resnet50 = _register_torchvision(
    "resnet50",
    "ResNet-50 (He et al. 2016)",
    "ResNet-50 (He et al. 2016), 25.6M params",
    0.0,
    "before the head (none in the paper).",
)
mobilenet_v3_small = _register_torchvision(
    "mobilenet_v3_small",
    "MobileNetV3-Small (Howard et al. 2019)",
    "MobileNetV3-Small (Howard et al. 2019), 2.5M params",
    0.2,
    "before the head (0.2 as torchvision).",
)

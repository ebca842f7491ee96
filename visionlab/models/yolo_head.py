"""YOLO's head: the layers between a backbone feature map and the S x S output grid.

The fully connected head of YOLO v1 (Redmon et al., CVPR 2016, Sec. 2.1: convolutions, then
two fully connected layers, leaky ReLU 0.1, dropout 0.5) and the convolutional head of
YOLO9000 (Redmon and Farhadi, CVPR 2017, Sec. 2), used by :mod:`visionlab.models.yolo`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

HEAD_KINDS = ("fc", "conv")


@dataclass(frozen=True)
class YoloHeadConfig:
    """The layers between the backbone and the output grid.

    Attributes:
        kind: ``"fc"`` (v1: convolutions, then two fully connected layers) or ``"conv"``
            (YOLO9000: convolutions only, the grid is the feature map).
        feature_stride: which backbone map feeds the head (8, 16 or 32).
        convs: extra 3x3 conv-BN-leaky layers on that map (the paper adds four, Sec. 2.2).
        channels: their width.
        fc_hidden: units of the first fully connected layer (4096 in the paper).
        dropout: after the first fully connected layer (0.5 in the paper).
    """

    kind: str = "fc"
    feature_stride: int = 32
    convs: int = 2
    channels: int = 256
    fc_hidden: int = 512
    dropout: float = 0.5


def _conv_bn_leaky(c_in: int, c_out: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.1, inplace=True),
    )


class YoloHead(nn.Module):
    """Backbone map ``[N, C_in, h, w]`` -> output grid ``[N, S, S, D]``.

    ``fc``: convs, flatten, ``Linear(fc_hidden)``, leaky ReLU, dropout, ``Linear(S * S * D)``
    (any S; the input size must be the one given at construction). ``conv``: convs, then a
    1x1 convolution to D channels; ``S = h = w``.
    """

    def __init__(
        self, *, in_channels: int, map_size: int, S: int, depth: int, config: YoloHeadConfig
    ) -> None:
        super().__init__()
        self.kind, self.S, self.depth = config.kind, S, depth
        layers, c = [], in_channels
        for _ in range(config.convs):
            layers.append(_conv_bn_leaky(c, config.channels))
            c = config.channels
        self.convs = nn.Sequential(*layers)
        if config.kind == "fc":
            self.fc = nn.Sequential(
                nn.Flatten(),
                nn.Linear(c * map_size * map_size, config.fc_hidden),
                nn.LeakyReLU(0.1, inplace=True),
                nn.Dropout(config.dropout),
            )
            self.out = nn.Linear(config.fc_hidden, S * S * depth)
        else:
            self.out = nn.Conv2d(c, depth, 1)
        nn.init.normal_(self.out.weight, std=0.01)
        nn.init.zeros_(self.out.bias)

    def forward(self, features: Tensor) -> Tensor:
        x = self.convs(features)
        if self.kind == "fc":
            return self.out(self.fc(x)).view(-1, self.S, self.S, self.depth)
        return self.out(x).permute(0, 2, 3, 1)  # [N, S, S, D]

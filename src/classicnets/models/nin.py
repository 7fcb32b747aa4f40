"""Network in Network: Lin, Chen, Yan, "Network In Network", ICLR 2014, as Dive into Deep Learning builds it.

Four "mlpconv" blocks (a conv then two 1x1 convs, each with ReLU), 3/2 max-pools between the first three,
dropout 0.5, and global average pooling over the last block's ``num_classes`` maps instead of fully connected
layers. Deviations (d2l's): AlexNet-sized first convs (96 11x11/4, 256 5x5, 384 3x3) rather than the paper's
CIFAR or ImageNet configurations; a ReLU on the class maps before the average; xavier-uniform init (d2l's
train_ch6); 1 input channel by default (Fashion-MNIST resized to 224).

``forward_features`` returns the 384-channel maps after the third pool; ``forward_head`` is dropout, the
class-map block and the global average.
"""

from __future__ import annotations

import torch.nn as nn

from ..registry import ModelInfo, register_model
from .base import ClassicNet, check_dropout, init_xavier, scaled

MIN_SIZE = 67  # 11x11/4 conv and three 3/2 pools: 67 -> 15 -> 7 -> 3 -> 1


def nin_block(in_channels: int, out_channels: int, kernel_size: int, stride: int,
              padding: int) -> nn.Sequential:
    """A conv followed by two 1x1 convs, each with ReLU: the "mlpconv" layer (a small MLP at every pixel)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
    )


class NiN(ClassicNet):
    def __init__(self, num_classes: int, in_channels: int, width_mult: float, dropout: float):
        super().__init__()
        self.in_channels = in_channels
        self.input_sizes = (MIN_SIZE, None)
        c1, c2, c3 = (scaled(c, width_mult) for c in (96, 256, 384))
        self.features = nn.Sequential(
            nin_block(in_channels, c1, kernel_size=11, stride=4, padding=0),  # 224 -> 54
            nn.MaxPool2d(3, stride=2),  # -> 26
            nin_block(c1, c2, kernel_size=5, stride=1, padding=2),
            nn.MaxPool2d(3, stride=2),  # -> 12
            nin_block(c2, c3, kernel_size=3, stride=1, padding=1),
            nn.MaxPool2d(3, stride=2),  # -> 5
        )
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nin_block(c3, num_classes, kernel_size=3, stride=1, padding=1),  # one map per class
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        init_xavier(self)



@register_model(ModelInfo(
    paper="Lin, Chen, Yan: Network In Network (as in Dive into Deep Learning 8.3)", year=2014,
    default_input=(1, 224, 224), min_input=(1, MIN_SIZE, MIN_SIZE), mean=(0.0,), std=(1.0,), family="nin",
    deviations=(
        "d2l's layout: AlexNet-sized convs 96-256-384 then a class-map block, not the paper's configurations",
        "ReLU on the class maps before global average pooling (d2l's)",
        "xavier-uniform init (d2l's train_ch6)",
    ),
))
def nin(num_classes: int = 10, in_channels: int = 1, width_mult: float = 1.0, dropout: float = 0.5) -> NiN:
    return NiN(num_classes, in_channels, width_mult, check_dropout(dropout))

"""The four-layer net of the AlexNet paper's Fig. 1: cuda-convnet's CIFAR-10 example net.

Krizhevsky et al. 2012, section 3.1: "A four-layer convolutional neural network with ReLUs (solid line)
reaches a 25% training error rate on CIFAR-10 six times faster than an equivalent network with tanh neurons".
The paper does not print the net; it is the example that shipped with Krizhevsky's cuda-convnet
(``example-layers/layers-80sec.cfg``): three 5x5 convolutions of 32, 32 and 64 maps with padding 2, a 3/2 max
pool after the first and 3/2 average pools after the others, and one fully connected layer to the classes.

    32x32 -> conv1 32x32x32 -> max-pool 16x16 -> conv2 32x16x16 -> avg-pool 8x8 -> conv3 64x8x8
          -> avg-pool 4x4 -> fc 1024 -> classes

Deviations: cuda-convnet's pools round their output size up, so do these (``ceil_mode``); its per-layer
learning rates and weight decays belong to the training settings here; the init follows its file (weights
N(0, 1e-4) in conv1 and N(0, 1e-2) elsewhere, biases 0). ``activation`` is the figure's switch ("relu"
solid, "tanh" dashed); layers-18pct's response normalisation is left out, as in layers-80sec.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from ..registry import ModelInfo, register_model
from .base import ClassicNet, make_activation, scaled, valid_input_sizes

FINAL_SIZE = 4  # three ceil-mode 3/2 pools: 32 -> 16 -> 8 -> 4


class CudaConvnet(ClassicNet):
    def __init__(self, num_classes: int, in_channels: int, width_mult: float, activation: str):
        super().__init__()
        self.in_channels = in_channels
        c1, c2, c3 = (scaled(c, width_mult) for c in (32, 32, 64))
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(in_channels, c1, 5, padding=2)),  # N x 32 x 32 x 32
            ("act1", make_activation(activation)),
            ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)),  # N x 32 x 16 x 16
            ("conv2", nn.Conv2d(c1, c2, 5, padding=2)),
            ("act2", make_activation(activation)),
            ("pool2", nn.AvgPool2d(3, 2, ceil_mode=True, count_include_pad=False)),  # N x 32 x 8 x 8
            ("conv3", nn.Conv2d(c2, c3, 5, padding=2)),
            ("act3", make_activation(activation)),
            ("pool3", nn.AvgPool2d(3, 2, ceil_mode=True, count_include_pad=False)),  # N x 64 x 4 x 4
        ]))
        self.input_sizes = valid_input_sizes(self.features, FINAL_SIZE)
        self.fc = nn.Linear(c3 * FINAL_SIZE ** 2, num_classes)
        for name, m in [*self.features.named_children(), ("fc", self.fc)]:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, std=1e-4 if name == "conv1" else 1e-2)
                nn.init.zeros_(m.bias)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(features, 1))


@register_model(ModelInfo(
    paper="Krizhevsky et al. 2012, Fig. 1: cuda-convnet's CIFAR-10 example net (layers-80sec)", year=2012,
    default_input=(3, 32, 32), min_input=(3, 32, 32), mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616), family="cuda-convnet",
    deviations=(
        "the paper does not print the net; this is cuda-convnet's layers-80sec example it refers to",
        "learning rates and weight decay are training settings, not per-layer ones as in cuda-convnet",
        "valid inputs are 29..32 px: fc reads 4x4 maps",
    ),
))
def cuda_convnet(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
                 activation: str = "relu") -> CudaConvnet:
    """Fig. 1's net: ``activation="relu"`` is the solid line, ``"tanh"`` the dashed one."""
    return CudaConvnet(num_classes, in_channels, width_mult, activation)

"""VGG: Simonyan, Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015.

Stacks of 3x3 convs (padding 1) with 2x2 max-pools between the stages, then fc 4096-4096-classes with dropout
0.5. The configurations are the paper's Table 1 columns, as data: A (VGG-11), A-LRN (``vgg11_lrn``: A with
AlexNet's LRN after the first conv, the ablation that found LRN does not help), B (VGG-13), C (``vgg16_c``:
16 layers whose last conv in stages 3-5 is 1x1), D (VGG-16), E (VGG-19); each builder is one line. ``_bn``
variants put a BatchNorm after every conv.

Keys and shapes equal torchvision's (``features.<i>``, ``classifier.0/3/6``), so its weights load with
``strict=True``. Deviations (all torchvision's):

- an ``AdaptiveAvgPool2d(7)`` before the classifier (the identity at 224; any input >= 32 then works, where
  the paper's net needs exactly 224 or the fully convolutional test-time form);
- the ``_bn`` variants (BatchNorm came after the paper);
- kaiming-normal conv init instead of the paper's N(0, 0.01) with deeper nets started from a trained A.

torchvision has no A-LRN or C, so those two follow the same layout (keys ``features.<i>``) with the LRN or
the 1x1 convs where the table puts them.

``width_mult`` scales the convs only; the fc layers stay 4096 wide, so ``vgg11`` with ``width_mult=0.25`` is
d2l's Fashion-MNIST VGG-11 ("channels / 4") with the pool added.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import ModelInfo, register_model
from .base import ClassicNet, check_dropout, scaled
from .lrn import paper_lrn

# The paper's Table 1: conv3 output channels, "M" = 2x2 max-pool, "LRN" = local response normalisation
# (AlexNet's constants), (channels, 1) = a 1x1 conv ("conv1-256" in the table).
CONFIGS: dict[str, list[int | str | tuple[int, int]]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A-LRN": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "C": [64, 64, "M", 128, 128, "M", 256, 256, (256, 1), "M", 512, 512, (512, 1), "M",
          512, 512, (512, 1), "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
          512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
MIN_SIZE = 32  # five 2x2 pools: 32 -> 1


def make_layers(config: list[int | str | tuple[int, int]], in_channels: int, batch_norm: bool,
                width_mult: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for v in config:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        if v == "LRN":
            layers.append(paper_lrn())  # after conv1's ReLU, as in AlexNet
            continue
        channels, kernel = v if isinstance(v, tuple) else (v, 3)
        out_channels = scaled(int(channels), width_mult)
        layers.append(nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU())
        in_channels = out_channels
    return nn.Sequential(*layers)


class VGG(ClassicNet):
    def __init__(self, features: nn.Sequential, in_channels: int, num_classes: int, dropout: float = 0.5):
        super().__init__()
        self.in_channels = in_channels
        self.input_sizes = (MIN_SIZE, None)
        self.features = features
        last_channels = [m for m in features if isinstance(m, nn.Conv2d)][-1].out_channels
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(last_channels * 7 * 7, 4096), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:  # features: N x 512 x H/32 x W/32
        return self.classifier(torch.flatten(self.avgpool(features), 1))  # N x 512*7*7 -> N x classes


def _vgg(config: str, batch_norm: bool, num_classes: int, in_channels: int, width_mult: float,
         dropout: float) -> VGG:
    features = make_layers(CONFIGS[config], in_channels, batch_norm, width_mult)
    return VGG(features, in_channels, num_classes, check_dropout(dropout))


PAPER = "Simonyan, Zisserman: Very Deep Convolutional Networks for Large-Scale Image Recognition"
DEVIATIONS = (
    "AdaptiveAvgPool2d(7) before the classifier (torchvision's; the identity at 224), so inputs >= 32 work",
    "kaiming-normal conv init instead of N(0, 0.01) and starting deep nets from a trained VGG-11",
)
BN_DEVIATIONS = ("BatchNorm after every conv (not in the paper; torchvision's _bn variant)", *DEVIATIONS)


def _info(batch_norm: bool) -> ModelInfo:
    return ModelInfo(paper=PAPER, year=2014, min_input=(3, MIN_SIZE, MIN_SIZE), family="vgg",
                     deviations=BN_DEVIATIONS if batch_norm else DEVIATIONS)


@register_model(_info(batch_norm=False))
def vgg11(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
          dropout: float = 0.5) -> VGG:
    return _vgg("A", False, num_classes, in_channels, width_mult, dropout)


@register_model(_info(batch_norm=True))
def vgg11_bn(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
             dropout: float = 0.5) -> VGG:
    return _vgg("A", True, num_classes, in_channels, width_mult, dropout)


@register_model(_info(batch_norm=False))
def vgg11_lrn(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
              dropout: float = 0.5) -> VGG:
    return _vgg("A-LRN", False, num_classes, in_channels, width_mult, dropout)


@register_model(_info(batch_norm=False))
def vgg13(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
          dropout: float = 0.5) -> VGG:
    return _vgg("B", False, num_classes, in_channels, width_mult, dropout)


@register_model(_info(batch_norm=True))
def vgg13_bn(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
             dropout: float = 0.5) -> VGG:
    return _vgg("B", True, num_classes, in_channels, width_mult, dropout)


@register_model(_info(batch_norm=False))
def vgg16_c(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
            dropout: float = 0.5) -> VGG:
    return _vgg("C", False, num_classes, in_channels, width_mult, dropout)


@register_model(_info(batch_norm=False))
def vgg16(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
          dropout: float = 0.5) -> VGG:
    return _vgg("D", False, num_classes, in_channels, width_mult, dropout)


@register_model(_info(batch_norm=True))
def vgg16_bn(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
             dropout: float = 0.5) -> VGG:
    return _vgg("D", True, num_classes, in_channels, width_mult, dropout)


@register_model(_info(batch_norm=False))
def vgg19(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
          dropout: float = 0.5) -> VGG:
    return _vgg("E", False, num_classes, in_channels, width_mult, dropout)


@register_model(_info(batch_norm=True))
def vgg19_bn(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
             dropout: float = 0.5) -> VGG:
    return _vgg("E", True, num_classes, in_channels, width_mult, dropout)

"""ResNet: He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (arXiv 2015).

A 7x7/2 conv and a 3/2 max-pool, four stages of residual blocks (64, 128, 256, 512 planes; stages 2-4 halve
the resolution in their first block), global average pooling, one fc layer. ResNet-18/34 use basic blocks
(two 3x3 convs), ResNet-50/101/152 bottleneck blocks (1x1, 3x3, 1x1 x4). Shortcuts are the paper's option B:
a projection (strided 1x1 conv + BN, the "dashed" block) where the shape changes and the identity (the "solid"
block) elsewhere. The stage depths are the paper's Table 1, as data.

Keys and shapes equal torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``,
``fc``), so its weights load with ``strict=True``. Deviations (torchvision's): the bottleneck's stride sits on
its 3x3 conv ("ResNet v1.5"), the paper's on the first 1x1; kaiming-normal init with fan_out; optional
``zero_init_residual`` (the last BN of each block starts at 0, Goyal et al. 2017).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import ModelInfo, register_model
from .base import ClassicNet, scaled


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def projection(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """The paper's option B shortcut: a strided 1x1 conv + BN where the shape changes (the "dashed" block),
    ``None`` (identity, the "solid" block) where it does not."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN and a shortcut (ResNet-18/34). Keys as torchvision's."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = projection(in_channels, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand (x4), BN, a shortcut (ResNet-50/101/152). Keys as torchvision's.

    The stride sits on the 3x3 conv (torchvision's "ResNet v1.5"); the paper puts it on the first 1x1.
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = conv1x1(in_channels, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.downsample = projection(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


# The paper's Table 1: (block, blocks per stage).
DEPTHS: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
PLANES = (64, 128, 256, 512)
MIN_SIZE = 1  # every strided conv and pool pads, so even a 1x1 input stays 1x1 (in eval mode)


class ResNet(ClassicNet):
    def __init__(self, block: type[nn.Module], depths: tuple[int, ...], num_classes: int, in_channels: int,
                 width_mult: float, zero_init_residual: bool):
        super().__init__()
        self.in_channels = in_channels
        self.input_sizes = (MIN_SIZE, None)
        stem = scaled(64, width_mult)
        self.conv1 = nn.Conv2d(in_channels, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = stem
        for i, (planes, depth) in enumerate(zip(PLANES, depths, strict=True)):
            stride = 1 if i == 0 else 2  # stages 2-4 halve the resolution
            stage, channels = _stage(block, channels, scaled(planes, width_mult), depth, stride)
            setattr(self, f"layer{i + 1}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # each block then starts as the identity
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # N x 64 x 56 x 56 (at 224)
        x = self.layer2(self.layer1(x))  # N x 128*e x 28 x 28 (e = block expansion)
        return self.layer4(self.layer3(x))  # N x 512*e x 7 x 7

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(features), 1))


def _stage(block, in_channels: int, planes: int, depth: int, stride: int) -> tuple[nn.Sequential, int]:
    """``depth`` blocks, the first one strided and projected (the "dashed" shortcut); and the out channels."""
    blocks = []
    for i in range(depth):
        blocks.append(block(in_channels, planes, stride if i == 0 else 1))
        in_channels = planes * block.expansion
    return nn.Sequential(*blocks), in_channels


def _resnet(depth: int, num_classes: int, in_channels: int, width_mult: float,
            zero_init_residual: bool) -> ResNet:
    block, depths = DEPTHS[depth]
    return ResNet(block, depths, num_classes, in_channels, width_mult, zero_init_residual)


def _info() -> ModelInfo:
    return ModelInfo(
        paper="He, Zhang, Ren, Sun: Deep Residual Learning for Image Recognition", year=2015,
        min_input=(3, MIN_SIZE, MIN_SIZE), family="resnet",
        deviations=(
            "bottleneck stride on the 3x3 conv (torchvision's v1.5), the paper's on the first 1x1",
            "kaiming-normal (fan_out) init; optional zero_init_residual",
        ),
    )


@register_model(_info())
def resnet18(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
             zero_init_residual: bool = False) -> ResNet:
    return _resnet(18, num_classes, in_channels, width_mult, zero_init_residual)


@register_model(_info())
def resnet34(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
             zero_init_residual: bool = False) -> ResNet:
    return _resnet(34, num_classes, in_channels, width_mult, zero_init_residual)


@register_model(_info())
def resnet50(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
             zero_init_residual: bool = False) -> ResNet:
    return _resnet(50, num_classes, in_channels, width_mult, zero_init_residual)


@register_model(_info())
def resnet101(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
              zero_init_residual: bool = False) -> ResNet:
    return _resnet(101, num_classes, in_channels, width_mult, zero_init_residual)


@register_model(_info())
def resnet152(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
              zero_init_residual: bool = False) -> ResNet:
    return _resnet(152, num_classes, in_channels, width_mult, zero_init_residual)

"""GoogLeNet (Inception v1): Szegedy et al., "Going Deeper with Convolutions", CVPR 2015 (arXiv 2014).

Two builders:

- ``googlenet``: torchvision's GoogLeNet; keys and shapes equal torchvision's, so its weights load with
  ``strict=True`` (with ``aux_logits=True`` for the file it publishes, which holds the auxiliary heads).
  Stem (7x7/2 conv, pool, 1x1 and 3x3 convs, pool), nine Inception blocks (3a-b, 4a-e, 5a-b) with 3/2 pools
  between the stages, global average pooling, dropout, one fc layer. ``aux_logits=True`` adds the paper's two
  auxiliary classifiers on 4a and 4d; in training mode ``forward`` then returns
  ``GoogLeNetOutputs(logits, aux_logits2, aux_logits1)`` as torchvision does (the paper weights their losses
  by 0.3); in eval mode, or without them, it returns the logits.
  Deviations (torchvision's): BatchNorm (eps 1e-3) after every conv, which came after the paper; the "5x5"
  branch uses 3x3 convs (``branch3_kernel=3``, vision#906; pass 5 for the paper's net, whose weights then
  no longer fit torchvision's); ceil-mode pools; auxiliary heads pool adaptively to 4x4 (the paper: 5x5/3
  average pool, which gives 4x4 at 224); truncated-normal init (std 0.01). Dropout before the fc is the
  paper's 0.4 (torchvision: 0.2). The LRN layers of the paper's stem are left out, as torchvision does.
- ``googlenet_d2l``: the BN-free net that Dive into Deep Learning trains on Fashion-MNIST at 96x96: conv+ReLU
  units with biases, 5x5 branches, 3/2 pools with padding 1, no dropout, no auxiliary heads, xavier init.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable
from functools import partial

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..registry import ModelInfo, register_model
from .base import ClassicNet, check_dropout, init_xavier, scaled

GoogLeNetOutputs = namedtuple("GoogLeNetOutputs", ["logits", "aux_logits2", "aux_logits1"])

# The paper's Table 1, one row per Inception block:
# (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj); the input channels follow from the row before.
INCEPTION_ROWS: dict[str, tuple[int, int, int, int, int, int]] = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}
MIN_SIZE = 15  # 7x7/2 conv then three ceil-mode 3/2 pools must each see at least 2 pixels
D2L_MIN_SIZE = 1  # padded pools never shrink below 1x1


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm(eps=1e-3) -> ReLU: torchvision's GoogLeNet unit (keys ``conv``, ``bn``).

    The BatchNorm is not in the 2014 paper (it came in 2015); torchvision's weights were trained with it.
    """

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class ConvReLU(nn.Module):
    """Conv (with bias) -> ReLU: the paper's GoogLeNet unit, as d2l builds it."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, **conv_kwargs)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x))


class Inception(nn.Module):
    """Four parallel branches concatenated on channels: 1x1 | 1x1->3x3 | 1x1->5x5 | 3x3 max-pool->1x1.

    Keys follow torchvision (``branch1``, ``branch2.0/1``, ``branch3.0/1``, ``branch4.1``). ``branch3_kernel``
    is 5 in the paper; torchvision's GoogLeNet uses 3 (a bug kept for its weights, vision#906).
    """

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int, conv_block: Callable[..., nn.Module] = BasicConv2d, branch3_kernel: int = 5):
        super().__init__()
        self.branch1 = conv_block(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            conv_block(in_channels, ch3x3red, kernel_size=1),
            conv_block(ch3x3red, ch3x3, kernel_size=3, padding=1),
        )
        self.branch3 = nn.Sequential(
            conv_block(in_channels, ch5x5red, kernel_size=1),
            conv_block(ch5x5red, ch5x5, kernel_size=branch3_kernel, padding=branch3_kernel // 2),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            conv_block(in_channels, pool_proj, kernel_size=1),
        )
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


def _inception_blocks(in_channels: int, width_mult: float, conv_block, branch3_kernel: int) -> dict:
    """The nine Inception blocks by name, channels scaled; returns {name: Inception}."""
    blocks = {}
    for name, row in INCEPTION_ROWS.items():
        block = Inception(in_channels, *(scaled(c, width_mult) for c in row), conv_block=conv_block,
                          branch3_kernel=branch3_kernel)
        blocks[name] = block
        in_channels = block.out_channels
    return blocks


class InceptionAux(nn.Module):
    """Auxiliary classifier: pool to 4x4, 1x1 conv 128, fc 1024, dropout 0.7, fc (torchvision's keys)."""

    def __init__(self, in_channels: int, num_classes: int, width_mult: float):
        super().__init__()
        c, width = scaled(128, width_mult), scaled(1024, width_mult)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.conv = BasicConv2d(in_channels, c, kernel_size=1)
        self.fc1 = nn.Linear(c * 4 * 4, width)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(0.7)
        self.fc2 = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.conv(self.pool(x)), 1)  # N x 128*4*4
        return self.fc2(self.dropout(self.relu(self.fc1(x))))


class GoogLeNet(ClassicNet):
    def __init__(self, num_classes: int, in_channels: int, width_mult: float, aux_logits: bool,
                 dropout: float, branch3_kernel: int):
        super().__init__()
        self.in_channels = in_channels
        self.input_sizes = (MIN_SIZE, None)
        c64, c192 = scaled(64, width_mult), scaled(192, width_mult)
        self.conv1 = BasicConv2d(in_channels, c64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(c64, c64, kernel_size=1)
        self.conv3 = BasicConv2d(c64, c192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        blocks = _inception_blocks(c192, width_mult, BasicConv2d, branch3_kernel)
        self.inception3a, self.inception3b = blocks["3a"], blocks["3b"]
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a, self.inception4b, self.inception4c = blocks["4a"], blocks["4b"], blocks["4c"]
        self.inception4d, self.inception4e = blocks["4d"], blocks["4e"]
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a, self.inception5b = blocks["5a"], blocks["5b"]
        if aux_logits:
            self.aux1 = InceptionAux(blocks["4a"].out_channels, num_classes, width_mult)
            self.aux2 = InceptionAux(blocks["4d"].out_channels, num_classes, width_mult)
        else:
            self.aux1 = self.aux2 = None
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(blocks["5b"].out_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _stages(self, x: torch.Tensor, with_aux: bool):
        self.check_input(x)
        x = self.maxpool1(self.conv1(x))  # N x 64 x 56 x 56 (at 224)
        x = self.maxpool2(self.conv3(self.conv2(x)))  # N x 192 x 28 x 28
        x = self.maxpool3(self.inception3b(self.inception3a(x)))  # N x 480 x 14 x 14
        x = self.inception4a(x)  # N x 512 x 14 x 14
        aux1 = self.aux1(x) if with_aux else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))  # N x 528 x 14 x 14
        aux2 = self.aux2(x) if with_aux else None
        x = self.maxpool4(self.inception4e(x))  # N x 832 x 7 x 7
        x = self.inception5b(self.inception5a(x))  # N x 1024 x 7 x 7
        return x, aux1, aux2

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._stages(x, with_aux=False)[0]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.avgpool(features), 1)))

    def forward(self, x: torch.Tensor):
        with_aux = self.training and self.aux1 is not None
        features, aux1, aux2 = self._stages(x, with_aux)
        logits = self.forward_head(features)
        return GoogLeNetOutputs(logits, aux2, aux1) if with_aux else logits


class GoogLeNetD2L(ClassicNet):
    """d2l's GoogLeNet: ``features`` = b1..b5 (b5 without its pool), ``head`` = average pool, flatten, fc."""

    def __init__(self, num_classes: int, in_channels: int, width_mult: float):
        super().__init__()
        self.in_channels = in_channels
        self.input_sizes = (D2L_MIN_SIZE, None)
        c64, c192 = scaled(64, width_mult), scaled(192, width_mult)
        blocks = _inception_blocks(c192, width_mult, ConvReLU, branch3_kernel=5)
        pool = partial(nn.MaxPool2d, kernel_size=3, stride=2, padding=1)
        self.features = nn.Sequential(
            nn.Sequential(ConvReLU(in_channels, c64, kernel_size=7, stride=2, padding=3), pool()),  # b1
            nn.Sequential(ConvReLU(c64, c64, kernel_size=1), ConvReLU(c64, c192, kernel_size=3, padding=1),
                          pool()),  # b2
            nn.Sequential(blocks["3a"], blocks["3b"], pool()),  # b3
            nn.Sequential(*(blocks[n] for n in ("4a", "4b", "4c", "4d", "4e")), pool()),  # b4
            nn.Sequential(blocks["5a"], blocks["5b"]),  # b5: N x 1024 x 3 x 3 at 96
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(blocks["5b"].out_channels, num_classes))
        init_xavier(self)



PAPER = "Szegedy et al.: Going Deeper with Convolutions"


@register_model(ModelInfo(
    paper=PAPER, year=2014, min_input=(3, MIN_SIZE, MIN_SIZE), family="googlenet",
    deviations=(
        "BatchNorm (eps 1e-3) after every conv, as torchvision's (not in the paper)",
        "3x3 convs in the '5x5' branch (torchvision's, vision#906); branch3_kernel=5 is the paper's",
        "no LRN in the stem; ceil-mode pools; aux heads pool adaptively to 4x4",
        "truncated-normal init, std 0.01",
    ),
))
def googlenet(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
              aux_logits: bool = False, dropout: float = 0.4, branch3_kernel: int = 3) -> GoogLeNet:
    if branch3_kernel not in (3, 5):
        raise ConfigError(
            f"branch3_kernel must be 3 (torchvision's) or 5 (the paper's); got {branch3_kernel!r}")
    dropout = check_dropout(dropout)
    return GoogLeNet(num_classes, in_channels, width_mult, aux_logits, dropout, branch3_kernel)


@register_model(ModelInfo(
    paper="Szegedy et al.: Going Deeper with Convolutions (as in Dive into Deep Learning 8.4)", year=2014,
    default_input=(1, 96, 96), min_input=(1, D2L_MIN_SIZE, D2L_MIN_SIZE), mean=(0.0,), std=(1.0,),
    family="googlenet",
    deviations=(
        "d2l's layout: no LRN, no auxiliary heads, no dropout, padded 3/2 pools",
        "trained at 96x96 on Fashion-MNIST (1 channel) instead of 224x224 ImageNet",
        "xavier-uniform init (d2l's train_ch6)",
    ),
))
def googlenet_d2l(num_classes: int = 10, in_channels: int = 1, width_mult: float = 1.0) -> GoogLeNetD2L:
    return GoogLeNetD2L(num_classes, in_channels, width_mult)

"""AlexNet: Krizhevsky, Sutskever, Hinton, "ImageNet Classification with Deep Convolutional Neural
Networks", NIPS 2012.

Four builders:

- ``alexnet``: the paper's net. 96-256-384-384-256 convs, ReLU, LRN (paper constants) after ReLU of conv1
  and conv2, overlapping 3/2 max-pools, conv2/conv4/conv5 split into two towers, fc6/fc7 of 4096 with
  dropout 0.5, N(0, 0.01) init with bias 1 in conv2, conv4, conv5, fc6, fc7. The LRN runs within each
  tower's maps (:func:`tower_lrn`, 48 + 48 in conv1), as on the paper's two GPUs.
  Deviations: 227x227 input (the text's 224 only works with padding 2-3 in conv1); the towers are grouped
  convolutions on one device (``groups=towers``), not two GPUs; the PCA colour augmentation and the 10-crop
  test belong to the data and evaluation code, not the net.
  Options for the paper's ablations: ``lrn``, ``overlap_pool`` (off = 2/2 pools), ``dropout``,
  ``activation`` ("relu" or "tanh"), ``towers`` (1 = the one-GPU net of the same width), ``conv_widths``
  (the five conv widths, e.g. the paper's one-GPU net of section 3.2 with half the kernels in conv1-4),
  ``unit_bias`` (the bias of conv2/4/5 and fc6/7: 1 in the paper, 0.1 in Caffe's reference net) and
  ``stem`` ("small": conv1 5x5 stride 1 for 31x31 images, so the ablations run on Fashion-MNIST on a CPU;
  every pool then still halves 31 -> 15 -> 7 -> 3 for 3/2 and 2/2 pooling alike, as 55 -> 27 -> 13 -> 6
  does in the paper's net).

  Model-parallel layout: ``features`` is an ``nn.Sequential`` with named children ``conv1, relu1, norm1,
  pool1, conv2, ..., conv5, relu5, pool5`` (``norm*`` absent when ``lrn=False``) and ``classifier`` holds
  ``fc6, relu6, drop6, fc7, relu7, drop7, fc8``. ``features.conv2``, ``conv4`` and ``conv5`` (listed in
  ``AlexNet.TOWER_CONVS``) have ``groups=towers``: tower ``t`` owns output channels
  ``[t*out/towers, (t+1)*out/towers)`` and reads only input channels ``[t*in/towers, (t+1)*in/towers)``,
  i.e. the weight slice ``weight[t*out/towers:(t+1)*out/towers]``. conv1, conv3 and the fc layers see both
  towers' maps (in the paper each GPU holds half of their output units and they exchange activations there).
- ``alexnet_owt``: Krizhevsky 2014, "One weird trick for parallelizing convolutional neural networks", the
  net torchvision calls ``alexnet``: 64-192-384-256-256, no LRN, no towers, AdaptiveAvgPool2d(6), Dropout
  before each hidden Linear. Its ``state_dict`` keys and shapes equal torchvision's (``strict=True`` loads).
- ``alexnet_d2l``: the Fashion-MNIST AlexNet of Dive into Deep Learning: 1 channel, conv1 padding 1, no LRN,
  no towers, flatten 6400, xavier-uniform init (as d2l's train_ch6 applies to Linear and Conv2d).
- ``alexnet_28``: d2l's exercise for 28x28 input: conv1 5x5 stride 1 padding 2, first pool 3/1.

``width_mult`` scales every conv and the fc6/fc7 widths, so a narrow net is small enough for quick CPU runs.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..registry import ModelInfo, register_model
from .base import ClassicNet, check_dropout, init_xavier, make_activation, scaled, valid_input_sizes
from .lrn import PaperLRN, paper_lrn

D2L_MEAN, D2L_STD = (0.0,), (1.0,)  # d2l feeds pixels in [0, 1] with no normalisation

# Output channels of conv1..conv5: the paper's (two towers of 48-128-192-192-128) and 2014's "weird trick".
PAPER_CHANNELS = (96, 256, 384, 384, 256)
OWT_CHANNELS = (64, 192, 384, 256, 256)
FC_WIDTH = 4096


class AlexNet(ClassicNet):
    """Five convs (``features``) then three fully connected layers (``classifier``).

    ``final_size`` is the side of the last feature map that fc6 expects (flattened); with ``adaptive_pool``
    the maps are average-pooled to it first, so any input at least ``min_size`` works.
    """

    TOWER_CONVS = ("conv2", "conv4", "conv5")

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential, in_channels: int,
                 final_size: int, adaptive_pool: bool = False, min_size: int = 1):
        super().__init__()
        self.in_channels = in_channels
        self.features = features
        if adaptive_pool:
            self.avgpool = nn.AdaptiveAvgPool2d(final_size)
            self.input_sizes = (min_size, None)
        else:
            self.avgpool = None
            self.input_sizes = valid_input_sizes(features, final_size)
        self.classifier = classifier

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        if self.avgpool is not None:
            features = self.avgpool(features)
        return self.classifier(torch.flatten(features, 1))


def tower_lrn(towers: int) -> PaperLRN:
    """The paper's LRN within each tower's maps: with two towers, 96 maps normalise as 48 + 48.

    In the paper each GPU normalises the kernel maps it holds, so a map's window of n=5 neighbours stops
    at its tower's edge. One window over all channels would mix the maps on either side of the boundary
    (47/48 in conv1), which neither the paper's net nor the two-device
    :class:`~classicnets.models.alexnet_towers.AlexNetTowers` does.
    """
    return paper_lrn(groups=towers)


def _check_options(towers: int, dropout: float) -> None:
    if isinstance(towers, bool) or not isinstance(towers, int) or towers < 1:
        raise ConfigError(f"towers must be a positive integer (2 = the paper, 1 = one tower); got {towers!r}")
    check_dropout(dropout)


# conv1 of each stem and the side of pool5's maps that fc6 reads
STEMS = {
    "paper": (dict(kernel_size=11, stride=4), 6),  # 227 -> 55 -> 27 -> 13 -> 6
    # Deviation for small images (Fashion-MNIST, CIFAR): 31 -> 31 -> 15 -> 7 -> 3, odd sides throughout,
    # so 2/2 pools give the same map sizes as 3/2 pools, as they do in the paper's net
    "small": (dict(kernel_size=5, stride=1, padding=2), 3),
}


def _paper_features(in_channels: int, channels: tuple[int, ...], towers: int, lrn: bool,
                    pool: tuple[int, int], activation: str, stem: str = "paper") -> nn.Sequential:
    c1, c2, c3, c4, c5 = channels
    layers: list[tuple[str, nn.Module]] = [
        ("conv1", nn.Conv2d(in_channels, c1, **STEMS[stem][0])),  # 227 -> 55 (small: 31 -> 31)
        ("relu1", make_activation(activation)),
        ("norm1", tower_lrn(towers)),  # within each tower's maps, as each GPU did
        ("pool1", nn.MaxPool2d(*pool)),  # 55 -> 27
        ("conv2", nn.Conv2d(c1, c2, 5, padding=2, groups=towers)),  # each tower sees its own 48 maps
        ("relu2", make_activation(activation)),
        ("norm2", tower_lrn(towers)),
        ("pool2", nn.MaxPool2d(*pool)),  # 27 -> 13
        ("conv3", nn.Conv2d(c2, c3, 3, padding=1)),  # crosses the towers
        ("relu3", make_activation(activation)),
        ("conv4", nn.Conv2d(c3, c4, 3, padding=1, groups=towers)),
        ("relu4", make_activation(activation)),
        ("conv5", nn.Conv2d(c4, c5, 3, padding=1, groups=towers)),
        ("relu5", make_activation(activation)),
        ("pool5", nn.MaxPool2d(*pool)),  # 13 -> 6
    ]
    if not lrn:
        layers = [(name, m) for name, m in layers if not name.startswith("norm")]
    return nn.Sequential(OrderedDict(layers))


def _classifier(in_features: int, width: int, num_classes: int, dropout: float,
                activation: str = "relu") -> nn.Sequential:
    """fc6 -> fc7 -> fc8, dropout on the outputs of fc6 and fc7 as the paper describes."""
    return nn.Sequential(OrderedDict([
        ("fc6", nn.Linear(in_features, width)),
        ("relu6", make_activation(activation)),
        ("drop6", nn.Dropout(dropout)),
        ("fc7", nn.Linear(width, width)),
        ("relu7", make_activation(activation)),
        ("drop7", nn.Dropout(dropout)),
        ("fc8", nn.Linear(width, num_classes)),
    ]))


UNIT_BIAS_LAYERS = ("conv2", "conv4", "conv5", "fc6", "fc7")


def _init_paper(model: AlexNet, unit_bias: float = 1.0) -> None:
    """Weights N(0, 0.01^2); biases ``unit_bias`` (the paper: 1, so the ReLUs start active) in conv2, conv4,
    conv5, fc6, fc7, else 0."""
    for name, m in [*model.features.named_children(), *model.classifier.named_children()]:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, mean=0.0, std=0.01)
            nn.init.constant_(m.bias, unit_bias if name in UNIT_BIAS_LAYERS else 0.0)


def _paper_channels(width_mult: float, towers: int, conv_widths) -> tuple[int, ...]:
    if conv_widths is None:
        return tuple(scaled(c, width_mult, towers) for c in PAPER_CHANNELS)
    widths = tuple(conv_widths)
    if len(widths) != 5 or not all(isinstance(c, int) and c > 0 and c % towers == 0 for c in widths):
        raise ConfigError(f"conv_widths must be five positive integers divisible by towers={towers}, such "
                          f"as [48, 128, 192, 192, 128]; got {conv_widths!r}")
    return widths


# ----------------------------------------------------------------------------------------------------
# Registered builders

PAPER = "Krizhevsky, Sutskever, Hinton: ImageNet Classification with Deep Convolutional Neural Networks"


@register_model(ModelInfo(
    paper=PAPER, year=2012, default_input=(3, 227, 227), min_input=(3, 227, 227), family="alexnet",
    deviations=(
        "227x227 input instead of the text's 224 (224 only works with padding 2-3 in conv1)",
        "the two towers are grouped convolutions (groups=2) on one device, not two GPUs",
        "PCA colour augmentation and 10-crop testing live in the data and evaluation code",
        "valid inputs are 227..258 px: fc6 needs 6x6 maps and the net has no adaptive pooling",
    ),
))
def alexnet(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0, towers: int = 2,
            lrn: bool = True, overlap_pool: bool = True, dropout: float = 0.5,
            activation: str = "relu", conv_widths: list[int] | None = None, unit_bias: float = 1.0,
            stem: str = "paper") -> AlexNet:
    """The 2012 paper's AlexNet; ``towers=1`` is the one-GPU net, the other options the paper's ablations."""
    _check_options(towers, dropout)
    if stem not in STEMS:
        raise ConfigError(f"stem must be one of {', '.join(STEMS)}; got {stem!r}")
    channels = _paper_channels(width_mult, towers, conv_widths)
    pool = (3, 2) if overlap_pool else (2, 2)
    features = _paper_features(in_channels, channels, towers, lrn, pool, activation, stem)
    width = scaled(FC_WIDTH, width_mult)
    final_size = STEMS[stem][1]
    classifier = _classifier(channels[-1] * final_size ** 2, width, num_classes, dropout, activation)
    model = AlexNet(features, classifier, in_channels, final_size=final_size)
    _init_paper(model, float(unit_bias))
    return model


@register_model(ModelInfo(
    paper="Krizhevsky: One weird trick for parallelizing convolutional neural networks", year=2014,
    default_input=(3, 224, 224), min_input=(3, 63, 63), family="alexnet",
    deviations=(
        "torchvision's layout: 64-192-384-256-256, no LRN, no towers, AdaptiveAvgPool2d(6)",
        "Dropout before each hidden Linear (kept for torchvision weight compatibility, vision#549)",
        "PyTorch's default init, as torchvision",
    ),
))
def alexnet_owt(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                dropout: float = 0.5) -> AlexNet:
    """torchvision's ``alexnet``; keys ``features.0/3/6/8/10``, ``classifier.1/4/6`` as there."""
    _check_options(1, dropout)
    c1, c2, c3, c4, c5 = (scaled(c, width_mult) for c in OWT_CHANNELS)
    width = scaled(FC_WIDTH, width_mult)
    features = nn.Sequential(
        nn.Conv2d(in_channels, c1, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c3, c4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c4, c5, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
    )
    classifier = nn.Sequential(
        nn.Dropout(dropout), nn.Linear(c5 * 6 * 6, width), nn.ReLU(),
        nn.Dropout(dropout), nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, num_classes),
    )
    return AlexNet(features, classifier, in_channels, final_size=6, adaptive_pool=True, min_size=63)


def _d2l_alexnet(num_classes: int, in_channels: int, width_mult: float, dropout: float, first_conv: nn.Conv2d,
                 first_pool: nn.MaxPool2d) -> AlexNet:
    _check_options(1, dropout)
    c1, c2, c3, c4, c5 = (scaled(c, width_mult) for c in PAPER_CHANNELS)
    features = nn.Sequential(OrderedDict([
        ("conv1", first_conv), ("relu1", nn.ReLU()), ("pool1", first_pool),
        ("conv2", nn.Conv2d(c1, c2, 5, padding=2)), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(3, 2)),
        ("conv3", nn.Conv2d(c2, c3, 3, padding=1)), ("relu3", nn.ReLU()),
        ("conv4", nn.Conv2d(c3, c4, 3, padding=1)), ("relu4", nn.ReLU()),
        ("conv5", nn.Conv2d(c4, c5, 3, padding=1)), ("relu5", nn.ReLU()), ("pool5", nn.MaxPool2d(3, 2)),
    ]))
    classifier = _classifier(c5 * 5 * 5, scaled(FC_WIDTH, width_mult), num_classes, dropout)
    model = AlexNet(features, classifier, in_channels, final_size=5)
    init_xavier(model)
    return model


D2L_DEVIATIONS = (
    "conv1 padding 1 and no LRN, no towers (d2l's simplification of the paper)",
    "1 input channel (Fashion-MNIST resized to 224), no normalisation",
    "xavier-uniform init (d2l's train_ch6) instead of N(0, 0.01) with unit biases",
    "flatten 6400 (256x5x5): valid inputs are 193..224 px",
)


@register_model(ModelInfo(
    paper="Zhang et al.: Dive into Deep Learning, 8.1 (after Krizhevsky et al. 2012)", year=2012,
    default_input=(1, 224, 224), min_input=(1, 193, 193), mean=D2L_MEAN, std=D2L_STD, family="alexnet",
    deviations=D2L_DEVIATIONS,
))
def alexnet_d2l(num_classes: int = 10, in_channels: int = 1, width_mult: float = 1.0,
                dropout: float = 0.5) -> AlexNet:
    """d2l's AlexNet for Fashion-MNIST at 224: conv1 96x54x54 ... pool5 256x5x5, 6400-4096-4096-classes."""
    c1 = scaled(PAPER_CHANNELS[0], width_mult)
    return _d2l_alexnet(num_classes, in_channels, width_mult, dropout,
                        nn.Conv2d(in_channels, c1, 11, stride=4, padding=1), nn.MaxPool2d(3, 2))


@register_model(ModelInfo(
    paper="Zhang et al.: Dive into Deep Learning, 8.1 exercise (28x28 input)", year=2012,
    default_input=(1, 28, 28), min_input=(1, 25, 25), mean=D2L_MEAN, std=D2L_STD, family="alexnet",
    deviations=(
        *D2L_DEVIATIONS[:3],
        "conv1 5x5 stride 1 padding 2 and a 3/1 first pool, for 28x28 input; valid inputs are 25..28 px",
    ),
))
def alexnet_28(num_classes: int = 10, in_channels: int = 1, width_mult: float = 1.0,
               dropout: float = 0.5) -> AlexNet:
    """d2l's AlexNet on raw 28x28 Fashion-MNIST: conv1 96x28x28, pool1 96x26x26, then as alexnet_d2l."""
    c1 = scaled(PAPER_CHANNELS[0], width_mult)
    return _d2l_alexnet(num_classes, in_channels, width_mult, dropout,
                        nn.Conv2d(in_channels, c1, 5, stride=1, padding=2), nn.MaxPool2d(3, 1))

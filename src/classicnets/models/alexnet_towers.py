"""The paper's model parallelism: AlexNet's two towers, each on its own device.

Krizhevsky et al. (2012, section 3.2) split the net over two GTX 580s: each GPU holds half of every
layer's kernels, and "the GPUs communicate only in certain layers": conv2, conv4 and conv5 read only
the maps on their own GPU, while conv3 and the fully connected layers read the maps of both.
:func:`split_towers` turns a grouped single-device ``alexnet`` (``towers=2``, where the towers are
``groups=2`` convolutions) into that layout:

    tower t on devices[t]:  conv1[t] relu norm pool  conv2[t] relu norm pool  | conv3[t] relu conv4[t] ...
                            (reads the image)        (its own maps)           | (reads both towers' maps)
    fc6[t], fc7[t], fc8[t]: each tower computes its share of the units from both towers' activations

Activations cross devices only into conv3, fc6, fc7 and fc8 (and the logits gather on ``devices[0]``).
Every layer's weight is a slice of the grouped model's: tower t gets output channels (units)
``[t*out/towers, (t+1)*out/towers)``. The LRN runs within each tower's maps (48 + 48 in conv1), which
is what the paper's GPUs did and what the grouped model's LRN (:func:`~classicnets.models.alexnet.tower_lrn`)
does, so both give the same outputs and gradients. Dropout draws its own masks per tower, so the two
agree in training mode only without dropout (or in eval mode).

On two GPUs, ``split_towers(model, ("cuda:0", "cuda:1"))`` runs the towers concurrently: each stage
launches tower 0's kernels then tower 1's, and CUDA runs them asynchronously on their own devices.
``grouped_state_dict()`` gives the weights back in the grouped model's layout for checkpoints.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn as nn

from ..errors import ConfigError
from .alexnet import AlexNet
from .base import ClassicNet
from .lrn import PaperLRN


class AlexNetTowers(ClassicNet):
    """AlexNet with tower ``t`` on ``devices[t]``; build it with :func:`split_towers`.

    ``feature_stages[s][t]`` is tower t's part of feature stage s (a new stage starts at each conv that
    reads every tower's maps); ``head_stages[s][t]`` likewise for the fully connected layers.
    """

    def __init__(self, feature_stages: nn.ModuleList, head_stages: nn.ModuleList,
                 devices: list[torch.device], in_channels: int, input_sizes: tuple[int, int | None]):
        super().__init__()
        self.feature_stages = feature_stages
        self.head_stages = head_stages
        self.devices = devices
        self.in_channels = in_channels
        self.input_sizes = input_sizes

    def _gather(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every tower's activations concatenated on every device: the paper's inter-GPU exchange."""
        return [torch.cat([p.to(d, non_blocking=True) for p in parts], dim=1) for d in self.devices]

    def _tower_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(x)
        parts = [x.to(d, non_blocking=True) for d in self.devices]  # both towers see the whole image
        for index, stage in enumerate(self.feature_stages):
            if index > 0:
                parts = self._gather(parts)
            parts = [tower(p) for tower, p in zip(stage, parts, strict=True)]
        return parts

    def _tower_head(self, parts: list[torch.Tensor]) -> torch.Tensor:
        parts = [torch.flatten(p, 1) for p in parts]  # flatten then concatenate = concatenate then flatten
        for stage in self.head_stages:
            parts = [tower(p) for tower, p in zip(stage, self._gather(parts), strict=True)]
        return torch.cat([p.to(self.devices[0], non_blocking=True) for p in parts], dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """pool5's maps of both towers on ``devices[0]``, in the grouped model's channel order."""
        return torch.cat([p.to(self.devices[0]) for p in self._tower_features(x)], dim=1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        parts = features.chunk(len(self.devices), dim=1)
        return self._tower_head([p.to(d) for p, d in zip(parts, self.devices, strict=True)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits on ``devices[0]``; activations leave their tower only where the paper exchanges them."""
        return self._tower_head(self._tower_features(x))

    def grouped_state_dict(self) -> OrderedDict[str, torch.Tensor]:
        """The weights in the grouped ``alexnet``'s layout (``features.conv1.weight``, ...), on the CPU."""
        merged: OrderedDict[str, torch.Tensor] = OrderedDict()
        for prefix, stages in (("features", self.feature_stages), ("classifier", self.head_stages)):
            for stage in stages:
                per_tower = [tower.state_dict() for tower in stage]
                for key in per_tower[0]:
                    merged[f"{prefix}.{key}"] = torch.cat([sd[key].cpu() for sd in per_tower], dim=0)
        return merged


def split_towers(model: AlexNet, devices=("cuda:0", "cuda:1")) -> AlexNetTowers:
    """A model-parallel copy of a grouped ``alexnet``: tower t's slices of every layer on ``devices[t]``.

    ``model`` is left untouched. It must have ``towers == len(devices)`` (the default ``alexnet`` has 2).
    Pass ``("cpu", "cpu")`` to run both towers on the CPU, e.g. to check the split against ``model``.
    """
    devices = [torch.device(d) for d in devices]
    towers = len(devices)
    tower_convs = [getattr(model.features, name, None) for name in getattr(model, "TOWER_CONVS", ())]
    if not isinstance(model, AlexNet) or not tower_convs or any(c is None for c in tower_convs):
        raise ConfigError(
            f"split_towers needs the paper's alexnet (create_model('alexnet')); got {type(model).__name__}"
        )
    if tower_convs[0].groups == 1:
        raise ConfigError(
            "split_towers needs an alexnet with two towers (create_model('alexnet'), towers=2); this one has "
            "a single tower (towers=1, or the d2l / one-weird-trick variants), so there is nothing to split"
        )
    if any(c.groups != towers for c in tower_convs):
        raise ConfigError(
            f"split_towers got {towers} device(s) for an alexnet with towers={tower_convs[0].groups}; "
            "pass one device per tower (alexnet's default is towers=2: devices=('cuda:0', 'cuda:1'))"
        )
    feature_stages = _split_sequence(model.features, towers, devices, first_reads_input=True)
    head_stages = _split_sequence(model.classifier, towers, devices, first_reads_input=False)
    return AlexNetTowers(feature_stages, head_stages, devices, model.in_channels, model.input_sizes)


def _split_sequence(sequence: nn.Sequential, towers: int, devices: list[torch.device],
                    first_reads_input: bool) -> nn.ModuleList:
    """Per-tower copies of ``sequence``'s layers, cut into stages at each layer that reads every tower.

    A conv with ``groups == 1`` or a Linear reads all of its input channels; except for the net's first
    conv (whose input, the image, every device already holds) each one starts a stage with an exchange.
    """
    stages: list[list[OrderedDict]] = []
    for position, (name, layer) in enumerate(sequence.named_children()):
        reads_all = isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and layer.groups == 1)
        if not stages or (reads_all and not (first_reads_input and position == 0)):
            stages.append([OrderedDict() for _ in range(towers)])
        for t in range(towers):
            stages[-1][t][name] = _tower_part(layer, t, towers)
    return nn.ModuleList(
        nn.ModuleList(nn.Sequential(layers).to(devices[t]) for t, layers in enumerate(stage))
        for stage in stages
    )


def _tower_part(layer: nn.Module, t: int, towers: int) -> nn.Module:
    """Tower t's share of ``layer``: its slice of output channels / units, or a copy of a stateless layer."""
    if isinstance(layer, nn.Conv2d):
        return _conv_part(layer, t, towers)
    if isinstance(layer, nn.Linear):
        return _linear_part(layer, t, towers)
    if isinstance(layer, nn.LocalResponseNorm):
        groups = layer.groups if isinstance(layer, PaperLRN) else 1
        if groups != towers:  # a window across the towers' maps: no tower holds all of them
            raise ConfigError(f"split_towers needs each LRN to normalise within the {towers} towers' maps "
                              f"(PaperLRN with groups={towers}); {layer} spans them")
        # within this tower's maps, as the grouped model does
        return PaperLRN(layer.size, alpha=layer.alpha, beta=layer.beta, k=layer.k)
    if any(True for _ in layer.parameters()) or any(True for _ in layer.buffers()):
        raise ConfigError(f"split_towers cannot split a {type(layer).__name__} that holds weights")
    return copy.deepcopy(layer)  # ReLU, max-pool, dropout


def _conv_part(conv: nn.Conv2d, t: int, towers: int) -> nn.Conv2d:
    out = conv.out_channels // towers
    part = nn.Conv2d(
        conv.in_channels // conv.groups, out, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode,
        dtype=conv.weight.dtype,
    )
    rows = slice(t * out, (t + 1) * out)  # a grouped conv's group t = these output channels
    with torch.no_grad():
        part.weight.copy_(conv.weight[rows])
        if conv.bias is not None:
            part.bias.copy_(conv.bias[rows])
    return part


def _linear_part(linear: nn.Linear, t: int, towers: int) -> nn.Linear:
    rows = torch.arange(linear.out_features).tensor_split(towers)[t]  # uneven class counts split too
    part = nn.Linear(linear.in_features, len(rows), bias=linear.bias is not None, dtype=linear.weight.dtype)
    with torch.no_grad():
        part.weight.copy_(linear.weight[rows])
        if linear.bias is not None:
            part.bias.copy_(linear.bias[rows])
    return part

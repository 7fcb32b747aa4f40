"""What every zoo model shares: the :class:`ClassicNet` base and the small helpers the model files use.

- :class:`ClassicNet`: ``forward = forward_head(forward_features(x))`` after a shape check that reads only
  ``x.dim()`` and ``x.shape`` (no host sync, compile-friendly). By default ``forward_features`` is
  ``features(x)`` and ``forward_head`` is ``head(features)``; a family overrides what differs.
- :func:`scaled`: channel counts under ``width_mult``; :func:`check_dropout`; :func:`make_activation`.
- :func:`valid_input_sizes`: the input sizes a net with a fixed-size first Linear accepts.
- :func:`init_xavier`: d2l's train_ch6 init (the d2l nets build with it; ``TrainConfig(init="xavier")``
  applies it to any net).

Family blocks live with their family (Inception in googlenet.py, residual blocks in resnet.py, mlpconv in
nin.py) and the paper's LRN in lrn.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from ..errors import ConfigError, InputShapeError
from ..registry import check_width_mult


class ClassicNet(nn.Module):
    """A zoo model: ``forward_features`` (checks the input, returns feature maps) then ``forward_head``.

    Subclasses set ``in_channels`` and ``input_sizes`` (smallest, largest H=W they take; largest ``None``
    when a global pool makes any size above the smallest valid), and either hold ``features`` and ``head``
    modules or override the two methods (calling :meth:`check_input` first in ``forward_features``).
    """

    in_channels: int
    input_sizes: tuple[int, int | None]

    features: nn.Module
    head: nn.Module

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature maps: the input checked, then ``self.features``."""
        self.check_input(x)
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """The logits from the feature maps: ``self.head``."""
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`InputShapeError` unless ``x`` is (N, in_channels, H, W) with H and W in range.

        Reads only the shape (Python ints), so it costs nothing on any device and traces under torch.compile.
        """
        lo, hi = self.input_sizes
        if x.dim() == 4 and x.shape[1] == self.in_channels and all(
            lo <= s and (hi is None or s <= hi) for s in x.shape[-2:]
        ):
            return
        raise InputShapeError(self._input_message(tuple(x.shape)))

    def _input_message(self, found: tuple[int, ...]) -> str:
        info = getattr(self, "info", None)
        name = info.name if info is not None else type(self).__name__
        lo, hi = self.input_sizes
        if hi is None:
            sizes = f"H, W >= {lo}"
        elif hi == lo:
            sizes = f"H = W = {lo}"
        else:
            sizes = f"{lo} <= H, W <= {hi}"
        hint = _input_hint(found, self.in_channels)
        default = f"; default {info.default_input[1]}x{info.default_input[2]}" if info is not None else ""
        return (
            f"{name} expects input of shape (N, {self.in_channels}, H, W) with {sizes}{default}; "
            f"got {found}: {hint}"
        )


def _input_hint(found: tuple[int, ...], in_channels: int) -> str:
    if len(found) == 3:
        return "add the batch dimension with x.unsqueeze(0)"
    if len(found) != 4:
        return "pass a 4-D batch (N, C, H, W)"
    if found[1] != in_channels:
        return f"build the model with in_channels={found[1]} or convert the images"
    return "resize the images into that range (when training: --image-size, or leave it unset)"


def scaled(channels: int, width_mult: float, divisor: int = 1) -> int:
    """``channels * width_mult`` rounded to a multiple of ``divisor`` (grouped convs' tower count)."""
    width_mult = check_width_mult(width_mult)
    return max(divisor, int(round(channels * width_mult / divisor)) * divisor)


def check_dropout(p: float) -> float:
    """A dropout probability in [0, 1), or :class:`ConfigError`."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ConfigError(f"dropout must be a probability in [0, 1) (0.5 in the paper); got {p!r}")
    return float(p)


def spatial_out(modules: Iterable[nn.Module], size: int) -> int:
    """The side length after a flat sequence of convs and pools (others keep it), or 0 if it collapses.

    Pure integer arithmetic with PyTorch's formulas (floor and ceil modes), used to find the input sizes a net
    with a fixed-width first Linear layer accepts.
    """
    for m in modules:
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, s, p = (_first(v) for v in (m.kernel_size, m.stride, m.padding))
            d = _first(getattr(m, "dilation", 1))
            span = size + 2 * p - d * (k - 1) - 1
            ceil = getattr(m, "ceil_mode", False)
            out = (span + (s - 1 if ceil else 0)) // s + 1
            if ceil and (out - 1) * s >= size + p:  # the last window must start inside the input
                out -= 1
            size = out
            if size < 1:
                return 0
    return size


def valid_input_sizes(features: nn.Sequential, final_size: int, search_to: int = 1024) -> tuple[int, int]:
    """The contiguous range of input sizes for which ``features`` ends at ``final_size`` x ``final_size``."""
    sizes = [h for h in range(1, search_to) if spatial_out(features, h) == final_size]
    if not sizes:
        raise ConfigError(f"no input size up to {search_to} gives {final_size}x{final_size} features")
    return sizes[0], sizes[-1]


def _first(value) -> int:
    return value[0] if isinstance(value, tuple) else value



ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name ("relu" or "tanh", the two the AlexNet paper compares)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ConfigError(
            f"activation {name!r} is not known; expected one of {', '.join(sorted(ACTIVATIONS))}"
        ) from None


def init_xavier(model: nn.Module) -> None:
    """d2l's train_ch6 init: xavier-uniform weights of every Linear and Conv2d, PyTorch's default biases."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)

"""Building blocks shared by the model families.

- :class:`ClassicNet`: the base every zoo model derives from: ``forward = forward_head(forward_features(x))``
  after a shape check that reads only ``x.dim()`` and ``x.shape`` (no host sync, compile-friendly).
- :func:`scaled`: channel counts under ``width_mult``.
- :func:`paper_lrn`: local response normalisation with the AlexNet paper's constants, written as the paper
  means them (``torch.nn.LocalResponseNorm`` divides alpha by the window size; the paper does not).
- :class:`BasicConv2d`, :class:`ConvReLU`, :class:`Inception`: GoogLeNet's blocks (torchvision's key names).
- :class:`BasicBlock`, :class:`Bottleneck`: ResNet's residual blocks (torchvision's key names).
- :func:`nin_block`: Network in Network's conv + two 1x1 convs ("mlpconv").

Imports only torch and the standard library (see docs/design.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from .errors import ConfigError, InputShapeError

# ----------------------------------------------------------------------------------------------------
# Base class and input checks


class ClassicNet(nn.Module):
    """A zoo model: ``forward_features`` (checks the input, returns feature maps) then ``forward_head``.

    Subclasses set ``in_channels`` and ``input_sizes`` (smallest, largest H=W they take; largest ``None``
    when a global pool makes any size above the smallest valid) and call :meth:`check_input` first in
    ``forward_features``.
    """

    in_channels: int
    input_sizes: tuple[int, int | None]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

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


# 8x the channels is 64x the weights of most layers (AlexNet: 3.7 billion parameters, 15 GB): any wider
# is a typo, and a checkpoint header asking for more would make a reader allocate before any check.
MAX_WIDTH_MULT = 8.0


def check_width_mult(width_mult: object) -> float:
    """A width multiplier in (0, MAX_WIDTH_MULT], or :class:`ConfigError`."""
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not (
            0 < width_mult <= MAX_WIDTH_MULT):
        raise ConfigError(f"width_mult must be a number in (0, {MAX_WIDTH_MULT:g}]; got {width_mult!r}: "
                          "use e.g. 0.25 (quarter width) or 1 (the paper's width)")
    return float(width_mult)


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


# ----------------------------------------------------------------------------------------------------
# Activations and normalisation


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name ("relu" or "tanh", the two the AlexNet paper compares)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ConfigError(
            f"activation {name!r} is not known; expected one of {', '.join(sorted(ACTIVATIONS))}"
        ) from None


def _channel_window_sum(x: torch.Tensor, size: int, groups: int) -> torch.Tensor:
    """Each map's sum over the ``size`` maps centred on it (odd ``size``), counting zeros beyond the edges
    of its group of ``groups`` equal groups of channels: LRN's window, by slices, in the input's layout."""
    grouped = x.unflatten(1, (groups, x.shape[1] // groups))  # a view in NCHW and channels_last alike
    out = grouped.clone()
    for offset in range(1, size // 2 + 1):
        out[:, :, offset:] += grouped[:, :, :-offset]
        out[:, :, :-offset] += grouped[:, :, offset:]
    return out.flatten(1, 2)


def _normaliser(a: torch.Tensor, size: int, alpha: float, beta: float, k: float,
                groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LRN's ``N = k + alpha / n * window(a^2)`` and ``s = N^-beta``."""
    norm = _channel_window_sum(a * a, size, groups).mul_(alpha / size).add_(k)
    return norm, norm.pow(-beta)


def _lrn(x: torch.Tensor, size: int, alpha: float, beta: float, k: float,
         groups: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LRN's output (in the input's dtype), N and s, computed in float32 (float64 stays float64)."""
    a = x.to(torch.promote_types(x.dtype, torch.float32))
    norm, scale = _normaliser(a, size, alpha, beta, k, groups)
    return (a * scale).to(x.dtype), norm, scale


class _LocalResponseNorm(torch.autograd.Function):
    """``b = a * s``, ``s = N^-beta``, ``N = k + alpha / n * window(a^2)``, with its gradient written out.

    ``torch.nn.functional.local_response_norm`` is a composite that sums the window with ``avg_pool3d``:
    on the CPU that pooling and its backward were half of the paper AlexNet's training step, and on CUDA
    its backward has no deterministic kernel. Here the window is slice additions and the backward is the
    closed form (the window is symmetric, so its transpose is itself):
    ``grad_a_j = g_j s_j - 2 alpha beta / n * a_j * sum_{i in window(j)} g_i a_i s_i / N_i``.
    Computed in float32 (float64 stays float64). N and s are extra outputs (not differentiable) so that
    the backward reuses them; with ``jvp`` and a generated vmap rule, torch.func's transforms (grad, vmap,
    jvp, jacfwd, hessian) work through it as through torch's LRN.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, size: int, alpha: float, beta: float, k: float, groups: int):
        return _lrn(x, size, alpha, beta, k, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, size, alpha, beta, k, groups = inputs
        _, norm, scale = output
        ctx.mark_non_differentiable(norm, scale)
        ctx.save_for_backward(x, norm, scale)
        ctx.save_for_forward(x, norm, scale)
        ctx.constants = (size, alpha, beta, k, groups)

    @staticmethod
    def backward(ctx, grad, _grad_norm, _grad_scale):
        x, norm, scale = ctx.saved_tensors
        size, alpha, beta, k, groups = ctx.constants
        a = x.to(norm.dtype)
        if torch.is_grad_enabled():  # create_graph: N and s again, so the gradient is differentiable
            norm, scale = _normaliser(a, size, alpha, beta, k, groups)
        g = grad.to(norm.dtype)
        through_norm = _channel_window_sum((g * a).mul_(scale).div_(norm), size, groups)
        grad_x = torch.addcmul(g * scale, a, through_norm, value=-2 * alpha * beta / size)
        return grad_x.to(x.dtype), None, None, None, None, None

    @staticmethod
    def jvp(ctx, tangent, *_):
        """Forward mode (torch.func.jvp, jacfwd, hessian): ``db = s da - 2 alpha beta / n * a s / N *
        window(a da)``; N and s get no tangent."""
        x, norm, scale = ctx.saved_tensors
        size, alpha, beta, k, groups = ctx.constants
        a, t = x.to(norm.dtype), tangent.to(norm.dtype)
        through_norm = _channel_window_sum(a * t, size, groups)
        out = torch.addcmul(t * scale, a * scale / norm, through_norm, value=-2 * alpha * beta / size)
        return out.to(x.dtype), None, None


class PaperLRN(nn.LocalResponseNorm):
    """Local response normalisation as the AlexNet paper computes it: an odd window of ``size`` maps that
    stops at the edge of each of ``groups`` groups of maps (the paper's towers: each GPU normalised the
    maps it held), with torch's parameters (``alpha`` is divided by ``size``; see :func:`paper_lrn`).

    Computed in float32 whatever the input's dtype (float64 stays float64): with the paper's k=2, the
    normaliser ``k + alpha * sum(a^2)`` differs from 2 by ~1e-3 for typical activations, while bfloat16's
    spacing near 2 is 1/64, so in bf16 the sum rounds away and LRN becomes a constant scale of 2^-0.75
    (CUDA autocast runs torch's composite LRN that way). No op inside is one autocast lowers, so autocast
    leaves it alone. The output has the input's dtype.
    """

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, groups: int = 1):
        if size < 1 or size % 2 == 0:
            raise ConfigError(f"the LRN window must be an odd number of maps (the paper's is 5); got {size}")
        if groups < 1:
            raise ConfigError(f"LRN groups must be a positive integer (the towers); got {groups}")
        super().__init__(size, alpha=alpha, beta=beta, k=k)
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[1] % self.groups:
            raise InputShapeError(f"LRN over {self.groups} groups of maps needs (N, C, ...) input with C a "
                                  f"multiple of {self.groups}; got {tuple(x.shape)}")
        if torch.jit.is_tracing():  # TorchScript cannot hold a Python autograd.Function: plain ops
            return _lrn(x, self.size, self.alpha, self.beta, self.k, self.groups)[0]
        return _LocalResponseNorm.apply(x, self.size, self.alpha, self.beta, self.k, self.groups)[0]

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", groups={self.groups}" if self.groups > 1 else "")


def paper_lrn(size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0,
              groups: int = 1) -> PaperLRN:
    """Local response normalisation with the AlexNet paper's constants (n=5, alpha=1e-4, beta=0.75, k=2).

    The paper divides by ``(k + alpha * sum(a^2))^beta``; ``nn.LocalResponseNorm`` divides by
    ``(k + alpha / n * sum(a^2))^beta``, so the paper's alpha is passed multiplied by n (Caffe's reference net
    missed this, BVLC/caffe#1453). ``groups``: the window stops at each group's edge (the paper's towers).
    """
    return PaperLRN(size, alpha=alpha * size, beta=beta, k=k, groups=groups)


# ---------------------------------------------------------------------------------------------------
# GoogLeNet


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


# ---------------------------------------------------------------------------------------------------
# ResNet


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


# ---------------------------------------------------------------------------------------------------
# Network in Network


def nin_block(in_channels: int, out_channels: int, kernel_size: int, stride: int,
              padding: int) -> nn.Sequential:
    """A conv followed by two 1x1 convs, each with ReLU: the "mlpconv" layer (a small MLP at every pixel)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
    )


def init_xavier(model: nn.Module) -> None:
    """d2l's train_ch6 init: xavier-uniform weights of every Linear and Conv2d, PyTorch's default biases."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)

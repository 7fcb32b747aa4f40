"""Shape-only outputs for the few ops whose meta kernels are slow.

On the meta device, batch norm and ReLU (and their backward) run PyTorch's Python reference decompositions,
about 10 ms a call: two thirds of a ResNet-152 summary. Their outputs are plain ``empty_like`` tensors, so
for the common case (the tensors agree in layout) they are made directly; anything else goes to the real
meta kernel. ``tests/test_inspect.py`` checks the shapes, strides and dtypes against those kernels.
"""

from __future__ import annotations

import torch

aten = torch.ops.aten


def fast_meta_outputs(func, args, kwargs):
    """The op's outputs as empty meta tensors, or ``None`` when the real kernel must run."""
    make = _FAST.get(func)
    if make is None or kwargs or not all(a.is_meta for a in args if isinstance(a, torch.Tensor)):
        return None
    return make(*args)


def _relu(x):
    return torch.empty_like(x)


def _threshold_backward(grad, x, threshold):
    return torch.empty_like(grad) if grad.shape == x.shape and grad.stride() == x.stride() else None


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)  # batch norm keeps its statistics in float32 or wider


def _batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps):
    channels = x.shape[1]
    stats = [torch.empty(channels, dtype=_stats_dtype(x), device="meta") for _ in range(2)]
    return torch.empty_like(x), *stats


def _batch_norm_backward(grad, x, weight, running_mean, running_var, save_mean, save_invstd, train, eps,
                         mask):
    if weight is None or grad.shape != x.shape or grad.stride() != x.stride():
        return None
    return (torch.empty_like(grad) if mask[0] else None, torch.empty_like(weight) if mask[1] else None,
            torch.empty_like(weight) if mask[2] else None)


_FAST = {
    aten.relu.default: _relu,
    aten.threshold_backward.default: _threshold_backward,
    aten.native_batch_norm.default: _batch_norm,
    aten.native_batch_norm_backward.default: _batch_norm_backward,
}

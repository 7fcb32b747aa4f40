"""What one aten op costs: FLOPs of the multiply-add ops, and the element-wise work of the rest.

FLOPs follow ``torch.utils.flop_counter`` (the formulas FlopCounterMode uses), so the inspector's totals equal
FlopCounterMode's: a convolution, linear layer or matrix product costs 2 FLOPs per multiply-accumulate (MAC).
Everything else (pooling, ReLU, LRN, batch norm, dropout, additions) costs 0 FLOPs there; those ops are
memory-bound and small next to the convolutions, but users ask about them, so they are counted apart as
"other ops" with the rules in :data:`CONVENTION`.
"""

from __future__ import annotations

import math

import torch
from torch.utils.flop_counter import conv_flop_count, flop_registry

aten = torch.ops.aten

CONVENTION = (
    "MACs: multiply-accumulates of convolutions, linear layers and matrix products (bias additions not "
    "counted). "
    "FLOPs = 2 x MACs (torch.utils.flop_counter's convention, so totals equal FlopCounterMode's). "
    "Pooling, ReLU, LRN, batch norm, dropout and additions count 0 FLOPs; their work is shown apart as "
    "'other ops': 1 per output element of an element-wise op (ReLU, add, dropout's scaling and mask, each of "
    "LRN's square, scale, shift, power and product, and the n - 1 additions of its sum over n neighbouring "
    "maps), the window size per output element of a pooling, 1 per input element of a reduction or adaptive "
    "pooling, 4 per "
    "element of batch norm in training (mean, variance, normalise, scale-shift) and 2 in eval. "
    "Backward FLOPs: the FLOPs of the backward pass of the same step (gradients of activations and of "
    "trainable weights; none for the input image); a convolution's grad-input and grad-weight cost its "
    "forward FLOPs each (FlopCounterMode counts grouped convolutions' grad-weight as if ungrouped). "
    "Activation bytes: tensors autograd keeps for backward, "
    "each storage counted once, at the first layer that keeps it; parameters are not activations."
)

_POOLS = {
    aten.max_pool1d, aten.max_pool2d, aten.max_pool2d_with_indices, aten.max_pool3d,
    aten.max_pool3d_with_indices, aten.avg_pool1d, aten.avg_pool2d, aten.avg_pool3d,
}
_INPUT_SIZED = {  # ops that read each input element once
    aten._adaptive_avg_pool2d, aten._adaptive_avg_pool3d, aten.adaptive_max_pool2d, aten.adaptive_max_pool3d,
    aten.mean, aten.sum, aten.amax, aten.amin, aten.max, aten._softmax, aten._log_softmax,
}
_BATCH_NORMS = {
    aten.native_batch_norm, aten._native_batch_norm_legit, aten._native_batch_norm_legit_functional,
    aten.cudnn_batch_norm, aten.miopen_batch_norm,
}


def matmul_flops(func, args, kwargs, out) -> int:
    """FLOPs of ``func`` by FlopCounterMode's formulas (0 for ops it does not count), grouped convolutions'
    backward corrected."""
    if func._overloadpacket is aten.convolution_backward:
        return conv_backward_flops(*args)
    formula = flop_registry.get(func._overloadpacket)
    return int(formula(*args, **kwargs, out_val=out)) if formula is not None else 0


def conv_backward_flops(grad_out, x, weight, bias_sizes, stride, padding, dilation, transposed,
                        output_padding, groups, output_mask) -> int:
    """FLOPs of a convolution's backward: each of grad-input and grad-weight repeats every forward MAC once.

    Every forward product x_i * w_j -> y_k has one partner g_k * w_j -> dx_i and one g_k * x_i -> dw_j, so
    each gradient costs exactly the forward FLOPs, for any stride, padding or groups. FlopCounterMode's
    formula counts grad-weight as if ``groups`` were 1, so it overcounts grouped convolutions (AlexNet's
    towers: 2x in grad-weight); forward FLOPs are not affected.
    """
    forward = conv_flop_count(list(x.shape), list(weight.shape), list(grad_out.shape), transposed=transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def is_counted(func) -> bool:
    """Whether FlopCounterMode has a formula for ``func`` (it decomposes the others first)."""
    return func._overloadpacket in flop_registry


def other_ops(func, args, out) -> int:
    """The element-wise work of a non-matmul op, by the rules in :data:`CONVENTION`."""
    packet = func._overloadpacket
    first_out = _first_tensor(out)
    first_in = _first_tensor(args)
    if packet in _POOLS and first_out is not None:
        return first_out.numel() * _window_size(args[1], first_in.dim() - 2)
    if packet in _BATCH_NORMS or packet is aten._native_batch_norm_legit_no_training:
        return first_in.numel() * (4 if _is_training_norm(func, args) else 2)
    if packet in _INPUT_SIZED or torch.Tag.reduction in func.tags:
        return first_in.numel() if first_in is not None else 0
    if torch.Tag.pointwise in func.tags and first_out is not None:
        return first_out.numel()
    return 0


def _window_size(kernel, spatial_dims: int) -> int:
    if isinstance(kernel, int):
        return kernel ** spatial_dims
    kernel = list(kernel)
    if len(kernel) == 1:
        return kernel[0] ** spatial_dims
    return math.prod(kernel)


def _is_training_norm(func, args) -> bool:
    if func._overloadpacket is aten._native_batch_norm_legit_no_training:
        return False
    # (input, weight, bias, [running_mean, running_var,] training, momentum, eps)
    return next((a for a in args if isinstance(a, bool)), True)


def _first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None

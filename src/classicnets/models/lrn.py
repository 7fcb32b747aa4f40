"""Local response normalisation as the AlexNet paper computes it (section 3.3), with its gradient written out.

:class:`PaperLRN` is the layer, :func:`paper_lrn` builds it with the paper's constants. The hand-written
autograd Function earns its place by measurement (benchmarks/lrn.py, recorded in benchmarks/results/lrn.md:
3.9x and 5.8x less time than torch's composite for the paper's norm1 and norm2 on the CPU; deterministic on
CUDA) and is guarded by gradcheck, gradgradcheck, jvp, vmap and hessian tests.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ConfigError, InputShapeError


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

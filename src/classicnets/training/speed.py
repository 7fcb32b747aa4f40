"""The speed settings left to ``auto`` (precision, channels_last, compile), decided for the device at hand.

- precision ``auto`` is bf16 autocast where the hardware has bf16 arithmetic (CUDA GPUs from Ampere on;
  CPUs with AMX or AVX-512 BF16), else fp32. Weights and optimizer state stay fp32 either way, and on
  Fashion-MNIST bf16 reaches the same accuracy per epoch as fp32 (benchmarks/vs_d2l.py). On a CPU without
  bf16 instructions oneDNN emulates it, slower than fp32, so auto stays fp32 there.
- channels_last ``None`` (auto) follows the precision: oneDNN's and cuDNN's bf16 convolutions are fastest
  on NHWC data, and in fp32 the gain is small.
- compile ``None`` (auto) compiles on CUDA only: inductor's CPU kernels for the pooling and element-wise
  parts were slower than ATen's on the CPUs measured (benchmarks/train_step.py, +compile rows).

The run's config.json records the decided values, so a resumed run keeps them.
"""

from __future__ import annotations

import dataclasses

import torch

from .config import TrainConfig


def has_fast_bf16(device: torch.device) -> bool:
    """True when bf16 matmuls and convolutions run in hardware on ``device``."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        return bool(capabilities.get("amx_tile") or capabilities.get("avx512_bf16"))
    return False


def left_to_auto(config: TrainConfig) -> list[str]:
    """The speed settings ``config`` still leaves to :func:`resolve_speed`."""
    auto = {"precision": config.precision == "auto", "channels_last": config.channels_last is None,
            "compile": config.compile is None}  # fmt: skip
    return [name for name, undecided in auto.items() if undecided]


def resolve_speed(config: TrainConfig, device: torch.device) -> TrainConfig:
    """``config`` with its auto speed settings replaced by what pays on ``device``."""
    precision = config.precision
    if precision == "auto":
        precision = "bf16" if has_fast_bf16(device) else "fp32"
    channels_last = config.channels_last
    if channels_last is None:
        channels_last = precision == "bf16"
    compile_model = config.compile
    if compile_model is None:
        compile_model = device.type == "cuda"
    if (precision, channels_last, compile_model) == (config.precision, config.channels_last, config.compile):
        return config
    return dataclasses.replace(config, precision=precision, channels_last=channels_last,
                               compile=compile_model)

"""runtime.py: the device choice and autocast every part shares (host memory: test_host_memory.py)."""

import pytest
import torch

from classicnets.errors import ConfigError
from classicnets.runtime import autocast, resolve_device


def test_devices_resolve_or_say_what_to_pass():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="'gpu0' is not a device; use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no GPU here; use --device cpu"):
            resolve_device("cuda:1")


def test_autocast_runs_matmuls_in_bf16_only_when_asked():
    a = torch.rand(4, 4)
    with autocast(torch.device("cpu"), True):
        assert (a @ a).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), False):
        assert (a @ a).dtype == torch.float32

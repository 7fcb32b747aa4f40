"""Shared fixtures. The real Fashion-MNIST comes from Debian's dataset-fashion-mnist (CI installs it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """The installed real Fashion-MNIST. Missing data fails under CI (it must be installed there)."""
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI must install dataset-fashion-mnist; {FASHION_MNIST_DIR} is missing")
        pytest.skip("real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return FASHION_MNIST_DIR


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield

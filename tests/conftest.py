"""Fixtures shared by the training tests (``test_train.py``, ``test_robustness.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from .test_data import write_fake_fashion_mnist


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One compute thread: tiny models run faster, and two test processes on two cores do not thrash."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small fake Fashion-MNIST in idx format, one per test module."""
    return write_fake_fashion_mnist(tmp_path_factory.mktemp("fmnist"))

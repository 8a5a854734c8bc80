"""Fixtures of the training tests: the tiny data set and configuration of ``tiny_data``."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny_data import NUM_CLASSES, TinyPairs, tiny_config  # noqa: E402

__all__ = ["NUM_CLASSES", "TinyPairs", "tiny_config"]


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny convolutions gain nothing from a second thread, and on a shared 2-core machine the
    # thread pool's barriers make them many times slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_dataset():
    return TinyPairs(6)

"""Shared by the method tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """On a shared 2-core machine, torch's 2-thread pool stalls for seconds under contention
    (measured: 20x slower steps); one thread keeps these tests fast and their time stable."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

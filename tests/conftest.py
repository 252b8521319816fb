"""Shared test fixtures."""
import pytest
import torch


@pytest.fixture
def single_thread():
    """Tiny models: intra-op threads only add overhead, and on a shared 2-core machine OpenMP oversubscription
    made single meta-gradients up to 50x slower. One torch thread, restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)

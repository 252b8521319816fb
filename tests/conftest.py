"""Shared test fixtures."""
import pytest
import torch

import tgbench.data


@pytest.fixture(autouse=True)
def no_system_fashion_mnist(tmp_path_factory, monkeypatch):
    """Tests decide what data exists: Debian's full Fashion-MNIST (if this machine has it) is hidden from
    in-process runs, so a test that expects fashion-mnist to be missing never trains on 60k images. Tests of
    that location point ``DEBIAN_FASHION_MNIST`` where they want."""
    monkeypatch.setattr(tgbench.data, "DEBIAN_FASHION_MNIST", tmp_path_factory.mktemp("no-debian") / "absent")


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

"""Shared test fixtures, and how the suite runs in parallel.

``pytest -q`` runs two pytest-xdist workers (pyproject's ``addopts``: ``-n 2 --dist loadfile``):

- each worker process, and every process its tests start, uses one torch intra-op thread (``pytest_configure``):
  two workers with torch's default of one thread per core would oversubscribe a 2-core machine, and torch's
  small convolutions run more than 10x slower then;
- all tests of a file run on one worker, one after another: a module fixture (one smoke run read by many tests)
  is built once, and no two of the tests that race several tgbench worker processes
  (``test_reliability_workers.py``) or rely on their own timing overlap each other;
- files with more tests marked ``slow`` start first (``pytest_collection_modifyitems``), so that the two workers
  finish together instead of one of them running the longest file alone at the end.

``pytest -n 0`` runs everything in one process at torch's default thread count.
"""
import os
from collections import Counter

import pytest
import torch

import tgbench.data


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the tgbench processes tests start


@pytest.hookimpl(trylast=True)  # after pytest's own ordering
def pytest_collection_modifyitems(items):
    # whole files move (a stable sort), so that a module fixture is still built once, even with `-n 0`
    slow = Counter(item.module for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.module])


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

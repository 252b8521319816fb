"""Where tensors live: the ``--device`` choice, one GPU per ``--jobs`` worker, and the device facts every record
carries.

The rule the code follows: a run picks one device (:func:`resolve`), its splits are moved there once
(``Dataset.to``), and everything else takes its device from the data — learners, teachers and generators are
*constructed* on it (:func:`constructing_on`), random streams are per-device generators (:func:`generator`), and
every tensor the unroll creates says ``device=``. ``tests/test_devices.py`` enforces this on a CPU-only machine by
running with torch's default device set to ``meta`` under an op-by-op device audit, so a tensor created without a
device is caught where it is made.

On CUDA the cuDNN autotuner is off and cuDNN is asked for deterministic kernels, so a cell's numbers repeat on
the same GPU model and software stack (atomics in some backward kernels, e.g. index_add for gathered batches,
can still change the last bits; ``torch.use_deterministic_algorithms`` is not switched on because it needs
``CUBLAS_WORKSPACE_CONFIG`` set before CUDA starts and refuses some ops). Results on different device kinds are
not bit-comparable; records and reports say which device made them. TF32 is off unless asked for (``--tf32``):
it changes the numbers, so it is recorded.
"""
from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode  # (torch's documented home of the mode base class)
from torch.utils._pytree import tree_flatten

from tgbench.data import Dataset, Split
from tgbench.errors import BadInput

ENV_VAR = "TGBENCH_DEVICE"
AUTO = "auto"


def resolve(spec: str | None = None) -> torch.device:
    """``--device`` (or ``$TGBENCH_DEVICE``, else ``auto``) as a ``torch.device``: ``auto`` is the first CUDA device
    when there is one, else the CPU; ``cuda`` / ``cuda:N`` must exist here (``BadInput`` otherwise)."""
    where = "--device" if spec else f"${ENV_VAR}"
    text = (spec or os.environ.get(ENV_VAR) or AUTO).strip().lower()
    if text == AUTO:
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise BadInput(f"{where}: {text!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise BadInput(f"{where}: {text!r}: tgbench runs on auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        why = "this torch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise BadInput(f"{where}: {text!r} asked for, but {why}; use --device cpu")
    index = 0 if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise BadInput(f"{where}: {text!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device("cuda", index)


def worker_devices(device: torch.device, requested: str | None, workers: int) -> list[torch.device]:
    """The device of each of ``workers`` worker processes: round-robin over the visible GPUs when the run asked
    for CUDA without naming one (``auto`` or ``cuda``), else every worker on ``device``."""
    named = requested is not None and ":" in requested
    if device.type != "cuda" or named:
        return [device] * workers
    count = torch.cuda.device_count()
    return [torch.device("cuda", w % count) for w in range(workers)]


def prepare(device: torch.device, tf32: bool = False) -> None:
    """Per-process settings for ``device``: the numerics switches the module docstring documents."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.cuda.reset_peak_memory_stats(device)


@contextmanager
def constructing_on(device: torch.device) -> Iterator[None]:
    """Build modules directly on ``device`` (their ``__init__`` creates tensors without naming a device).

    A no-op when ``device`` is already torch's default (the CPU, usually): torch's device mode imports
    ``torch._dynamo`` on first use, ~1 s per process that a CPU run does not need to pay."""
    if torch.get_default_device() == torch.device(device):
        yield
        return
    with torch.device(device):
        yield


def on_device(dataset: Dataset, device: torch.device) -> Dataset:
    """``dataset`` with its three splits on ``device`` (moved once per run; itself when they are there)."""
    if dataset.train.x.device == device:
        return dataset
    moved = {name: Split(split.x.to(device), split.y.to(device))
             for name, split in (("train", dataset.train), ("val", dataset.val), ("test", dataset.test))}
    return dataclasses.replace(dataset, **moved)


def generator(device: torch.device, seed: int) -> torch.Generator:
    """A seeded random stream on ``device`` (a CPU generator cannot drive CUDA sampling, nor the reverse)."""
    return torch.Generator(device=device).manual_seed(seed)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so a clock read after this measures the work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def facts(device: torch.device) -> dict:
    """What a record says about the device that made it."""
    out = {"device": str(device), "gpu": None, "cuda": None, "cudnn": None, "tf32": False, "gpu_peak_mb": None}
    if device.type == "cuda":
        out.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), tf32=bool(torch.backends.cuda.matmul.allow_tf32),
                   gpu_peak_mb=torch.cuda.max_memory_allocated(device) / 2 ** 20)
    return out


def label(record: Any) -> str:
    """How a report names the device of a store record (``tgbench.records``: its ``device`` and ``gpu``) or of
    :func:`facts` (a dict); records written before the device fields: ``cpu``."""
    device, gpu = (record.get("device"), record.get("gpu")) if isinstance(record, dict) else (record.device, record.gpu)
    device = device or "cpu"
    return f"{device} ({gpu})" if gpu else device


class DeviceMismatch(AssertionError):
    """An op touched a tensor on another device than the run's (see :func:`strict`)."""


class _DeviceAudit(TorchDispatchMode):
    """Checks every op's tensor inputs and outputs against one device, at the op that creates or uses them."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device = device

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten((args, kwargs, out))[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device != self.device:
                raise DeviceMismatch(f"{func} touched a tensor on {tensor.device}; this run computes on "
                                     f"{self.device}")
        return out


@contextmanager
def strict(device: torch.device) -> Iterator[None]:
    """Fail at the first op that creates or uses a tensor anywhere but ``device``.

    On a CPU-only machine a tensor created without ``device=`` would land on the CPU like everything else and go
    unnoticed; so torch's default device is ``meta`` in here: such a tensor lands on ``meta`` and the audit names
    the op that made it. Code that builds its modules with :func:`constructing_on` and passes ``device=`` to
    factories runs unchanged. For tests (``tests/test_devices.py``) and plug-in authors checking their method."""
    previous = torch.get_default_device()
    torch.set_default_device("meta")
    try:
        with _DeviceAudit(torch.device(device)):
            yield
    finally:
        torch.set_default_device(previous)

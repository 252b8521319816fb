"""Where a unit of work runs: the settings every worker takes from the command line (:class:`WorkerEnv`), and the
one set-up (:func:`set_up_worker`) a fewstep cell (``tgbench.cells``) and a tuning-stage arm
(``tgbench.tuning.tune_arm_task``) both do first, in this process or in a fresh ``--jobs`` worker process
(``tgbench.pool``), which starts with nothing: no torch settings, no plug-ins, no dataset.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tgbench import device as devices
from tgbench.suite.by_kind import Suite, suite_from_dict
from tgbench.data import Dataset, load_dataset
from tgbench.registry import load_plugin_dir
from tgbench.store import Store


@dataclass(frozen=True)
class WorkerEnv:
    """The run's settings a worker needs, whatever it runs (top-level and picklable: it crosses to ``--jobs``
    worker processes)."""

    storage: str                 # the store's URL (``Store.url``)
    artifacts_dir: str | None = None
    data_root: str | None = None
    device: str = "cpu"          # where it computes (``tgbench.device``; a --jobs worker gets its slot's device)
    tf32: bool = False           # TF32 matmul/conv on CUDA (changes the numbers: recorded)
    threads: int | None = None   # torch threads in the worker's process (None: torch's default)
    methods_dirs: tuple[str, ...] = ()   # --methods-dir plug-in folders, re-registered in each worker process
    loggers: tuple[str, ...] = ()   # --log trackers (tgbench.trackers), writing under log_dir
    log_dir: str | None = None
    progress: bool = True        # a progress bar for the work itself


@dataclass(frozen=True)
class Worker:
    """What :func:`set_up_worker` made ready: the suite, its dataset on the device, the store."""

    suite: Suite
    device: torch.device
    dataset: Dataset
    store: Store


def set_up_worker(env: WorkerEnv, resolved_suite: dict) -> Worker:
    """Set this process up as ``env`` says — torch threads, the plug-in folders (before the suite is validated:
    it may name their methods), the device's numerics (``tgbench.device.prepare``) — then rebuild the suite the
    run resolved (``Suite.model_dump``: a suite file edited meanwhile changes nothing), load its dataset onto the
    device and open the store."""
    if env.threads:
        torch.set_num_threads(env.threads)
    for folder in env.methods_dirs:
        load_plugin_dir(folder)
    device = torch.device(env.device)
    devices.prepare(device, env.tf32)
    suite = suite_from_dict(resolved_suite)
    data = suite.dataset
    dataset = devices.on_device(load_dataset(data.name, data_root=env.data_root, download=data.download,
                                             fallback=data.fallback, seed=0), device)
    return Worker(suite=suite, device=device, dataset=dataset, store=Store(env.storage, env.artifacts_dir))

"""Suite kinds: what ``tgbench run`` and ``tgbench report`` do with a suite of each ``kind:``.

A kind is a :class:`SuiteKind` registered by name in ``tgbench.registry.suite_kinds`` — the built-ins are one
module each in this folder (``fewstep``, ``tune``, ``nas_proxy``); a plug-in file declares
``SUITE_KINDS = {"name": SuiteKind(...)}`` (``--methods-dir``), a package the ``tgbench.suite_kinds`` entry point.
What a kind contributes:

* ``section`` / ``section_model``: the one top-level YAML key only its suites have (``tune:``, ``nas:``) and the
  pydantic model that validates it — ``tgbench.suite.by_kind`` adds it to the suite's model, so the section is typed,
  its unknown keys are errors naming the key, and no other kind's suite may carry it;
* ``validate(path, suite, where)``: checks that need the registry or the whole suite (``ConfigError`` naming
  ``<file>: <where><key>``; ``where`` is a profile prefix such as ``profiles.smoke.``);
* ``run(ctx)`` and ``report(ctx)`` over one :class:`RunContext`: run the suite (resuming what the store holds)
  and write its report, or rebuild the report from the store alone; each returns the report directory.

``tgbench.runner.run_suite`` / ``report_suite`` load and validate the suite, check the output locations, build
the context and hand over; no module switches on a kind's name. ``docs/adding_a_suite_kind.md`` is a worked
example.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from pydantic import BaseModel

from tgbench import device as devices
from tgbench.suite.schema import Suite
from tgbench.data import Dataset, load_dataset
from tgbench.locations import writable_out_dir
from tgbench.provenance import command_line
from tgbench.store import Store
from tgbench.worker import WorkerEnv


@dataclass
class RunOptions:
    """What the command line says about a run, for every kind (a kind uses what applies to it)."""

    profile: str | None = None
    storage: str | None = None
    jobs: int = 1
    seeds: int | None = None
    out: str | None = None
    data_root: str | None = None
    artifacts_dir: str | None = None
    progress: bool = True
    methods_dirs: tuple[str, ...] = ()
    device: str | None = None    # --device as given (None: $TGBENCH_DEVICE, else auto); see tgbench.device
    tf32: bool = False
    loggers: tuple[str, ...] = ()   # --log tensorboard / wandb (tgbench.trackers)
    overrides: tuple[str, ...] = ()   # --set KEY=VALUE, applied by load_suite after the profile (tgbench.suite.loading)


@dataclass(frozen=True)
class RunContext:
    """One ``tgbench run`` / ``report`` of one suite, as a kind sees it: the validated suite at its profile, the
    command line's options, and the few things every kind does the same way."""

    suite_path: str
    suite: Suite
    profile: str
    opts: RunOptions
    resolved_device: torch.device        # --device, resolved once (``tgbench.device.resolve``) by the runner
    log: Callable[..., None] = print     # log(text, file=sys.stderr) for warnings; print-compatible

    def out_dir(self) -> Path:
        """The report directory (``--out``, else the default under results/), created and checked writable."""
        return writable_out_dir(self.opts.out, self.suite, self.profile)

    def store(self) -> Store:
        return Store(self.opts.storage, self.opts.artifacts_dir)

    def device(self):
        """The torch device this run computes on (``--device``), prepared (``--tf32``, the audit)."""
        devices.prepare(self.resolved_device, self.opts.tf32)
        return self.resolved_device

    def worker_env(self, store: Store, progress: bool, threads: int | None = None,
                   log_dir: str | None = None) -> WorkerEnv:
        """Where this run's cells and tuning arms run (``tgbench.worker``): the command line's options, the store
        ``store`` opened, this run's device (a ``--jobs`` worker gets its slot's instead), ``threads`` torch
        threads, and the ``--log`` trackers writing under ``log_dir`` (None: no trackers)."""
        opts = self.opts
        return WorkerEnv(storage=store.url, artifacts_dir=opts.artifacts_dir, data_root=opts.data_root,
                         device=str(self.resolved_device), tf32=opts.tf32, threads=threads,
                         methods_dirs=tuple(opts.methods_dirs), loggers=tuple(opts.loggers) if log_dir else (),
                         log_dir=log_dir, progress=progress)

    def dataset(self) -> Dataset:
        """The suite's dataset on the run's device; a fallback (``dataset.fallback``) is warned about on stderr,
        and every record names the dataset it resolved to."""
        data = self.suite.dataset
        dataset = devices.on_device(load_dataset(data.name, data_root=self.opts.data_root, download=data.download,
                                                 fallback=data.fallback, seed=0), self.device())
        if dataset.fallback_reason:
            self.log(f"WARNING: {dataset.fallback_reason}\nWARNING: falling back to {dataset.resolved!r}; every "
                     f"result records dataset_resolved={dataset.resolved!r}", file=sys.stderr)
        return dataset

    @property
    def command(self) -> str:
        """This process's command line, as reports quote it."""
        return command_line()


# validate(path, suite, where) raises ConfigError for a bad kind-specific setting ("where": a profile prefix)
Validator = Callable[[Path, Suite, str], None]


@dataclass(frozen=True)
class SuiteKind:
    run: Callable[[RunContext], Path]
    report: Callable[[RunContext], Path]
    validate: Optional[Validator] = None
    section: str | None = None                      # the top-level key only this kind's suites have
    section_model: type[BaseModel] | None = None     # ... and the model that validates it
    section_required: bool = True                    # a suite of this kind must have the section
    summary: str = ""                                # one line for `tgbench list kinds`
    # for kinds whose cells hold teachers (`tgbench export`): (store, suite, profile, seeds) -> cell key -> the
    # config hashes of the suite's current configuration, and (store, suite, profile) -> the one line that says
    # there is no cell of it and which `--set` lists the store does hold
    current_cells: Optional[Callable[..., dict[str, set[str]]]] = None
    no_cells_hint: Optional[Callable[..., str]] = None

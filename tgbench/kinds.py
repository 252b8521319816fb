"""Suite kinds: what ``tgbench run`` and ``tgbench report`` do with a suite of each ``kind:``.

A kind is a :class:`SuiteKind` registered by name in ``tgbench.registry.suite_kinds`` (``fewstep`` in
``tgbench.runner``, ``tune`` in ``tgbench.tune``, ``nas_proxy`` in ``tgbench.nas``). ``run_suite`` and
``report_suite`` (``tgbench.runner``) load and validate the suite, check the output locations, and hand over to
the kind; ``load_suite`` calls a kind's ``validate`` for the section only it understands. No module switches on
the kind's name.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional


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
    overrides: tuple[str, ...] = ()   # --set KEY=VALUE, applied by load_suite after the profile (tgbench.config)


# run(suite_path, suite, profile, opts, log) -> the report directory; report(...) the same from the store alone;
# validate(path, suite, where) raises ConfigError for a bad kind-specific section ("where": a profile prefix).
KindFunction = Callable[..., Path]


@dataclass(frozen=True)
class SuiteKind:
    run: KindFunction
    report: KindFunction
    validate: Optional[Callable[..., None]] = None

"""``tgbench run`` / ``tgbench report``: the dispatcher above every suite kind.

``run_suite`` loads and validates a suite, checks the output locations and hands it to its kind
(``tgbench.kinds``, looked up in ``tgbench.registry.suite_kinds``) over a ``RunContext``; ``report_suite`` does the
same for a report from the store alone. The ``--jobs`` worker pool is ``tgbench.pool``; what runs in a worker is
set up by ``tgbench.worker``.
"""
from __future__ import annotations

import os
from pathlib import Path

from tgbench import device as devices
from tgbench.suite.loading import load_suite
from tgbench.errors import BadInput
from tgbench.kinds import RunContext, RunOptions, SuiteKind
from tgbench.locations import check_writable_dir
from tgbench.provenance import default_profile
from tgbench.registry import suite_kinds
from tgbench.store import artifacts_location, resolve_url, sqlite_path

__all__ = ["RunOptions", "run_suite", "report_suite"]


def _context(suite_path: str, opts: RunOptions, log) -> RunContext:
    device = devices.resolve(opts.device)   # (once: the default profile, the dataset and every worker use it)
    profile = opts.profile or default_profile(device)
    return RunContext(suite_path=str(suite_path), suite=load_suite(suite_path, profile, opts.overrides),
                      profile=profile, opts=opts, resolved_device=device, log=log)


# ------------------------------------------------------------------------------------------ the suite
def run_suite(suite_path: str, opts: RunOptions, log=print) -> Path:
    """``tgbench run``: load and validate the suite, check every output location before any work, then run it
    as its kind says (``tgbench.kinds``); returns the report directory."""
    ctx = _context(suite_path, opts, log)
    check_output_locations(opts.storage, opts.artifacts_dir)  # a bad --storage/--artifacts must not strand a cell
    kind: SuiteKind = suite_kinds.get(ctx.suite.kind)
    return kind.run(ctx)


def check_output_locations(storage: str | None, artifacts_dir: str | None) -> None:
    """Before any work starts: the SQLite store's file and the teacher artifact directory must be writable or
    creatable (the report directory is checked by ``writable_out_dir``). A cell that trains and then cannot
    save its teacher would be lost, its claim left running. Nothing is created here."""
    db = sqlite_path(resolve_url(storage))
    if db is not None:
        if db.is_dir():
            raise BadInput(f"--storage: cannot use {db}: it is a directory, not an SQLite file")
        if db.exists() and not os.access(db, os.R_OK | os.W_OK):
            raise BadInput(f"--storage: cannot write to {db}: the file is read-only")
        check_writable_dir(db.parent, "--storage")
    artifacts, flag = artifacts_location(storage, artifacts_dir)
    check_writable_dir(artifacts, flag)


def report_suite(suite_path: str, opts: RunOptions, log=print) -> Path:
    """``tgbench report``: rebuild a suite's report from the store alone (no training), as its kind says."""
    ctx = _context(suite_path, opts, log)
    kind: SuiteKind = suite_kinds.get(ctx.suite.kind)
    return kind.report(ctx)

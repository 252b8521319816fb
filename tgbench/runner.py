"""``tgbench run`` / ``tgbench report``, and the worker pool cells run in with ``--jobs``.

``run_suite`` loads and validates a suite, checks the output locations and hands it to its kind
(``tgbench.kinds``, looked up in ``tgbench.registry.suite_kinds``) over a ``RunContext``; ``report_suite`` does the
same for a report from the store alone. ``run_in_workers`` runs cells in worker processes (one fresh process per
cell, so each record's peak memory is its own), each on its own slot's device.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from tqdm import tqdm

from tgbench import device as devices
from tgbench import interrupt
from tgbench.cells import CellTask, run_cell, study_name
from tgbench.suite.by_kind import suite_from_dict
from tgbench.suite.loading import load_suite
from tgbench.errors import BadInput
from tgbench.kinds import RunContext, RunOptions, SuiteKind
from tgbench.locations import check_writable_dir
from tgbench.provenance import default_profile
from tgbench.registry import suite_kinds
from tgbench.records import cell_key
from tgbench.store import Store, artifacts_location, resolve_url, sqlite_path

__all__ = ["RunOptions", "run_suite", "report_suite", "run_in_workers", "run_cell_in_a_slot"]


def _context(suite_path: str, opts: RunOptions, log) -> RunContext:
    profile = opts.profile or default_profile(devices.resolve(opts.device))
    return RunContext(str(suite_path), load_suite(suite_path, profile, opts.overrides), profile, opts, log)


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


# What one cell may raise without stopping the suite: a plug-in's bug, a plug-in calling sys.exit, an environment
# failure. The cell is marked failed in the store (``tgbench.cells``) and the others run. Bad input and
# Ctrl-C/SIGTERM still stop the run.
CELL_FAILURES = (Exception, SystemExit)


def note_failure(failures: dict[str, str], task: CellTask, exc: BaseException, log) -> None:
    if isinstance(exc, BadInput) or os.environ.get("TGBENCH_DEBUG"):  # (debugging: the traceback, at once)
        raise exc
    key = cell_key(task.source, task.seed)
    failures[key] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    log(f"cell {key} failed ({failures[key]}); the other cells go on")  # (stdout: stderr gets one summary line)


class StoppablePool(ProcessPoolExecutor):
    """A process pool whose manager thread ends quietly once the pool was shut down without waiting.

    With ``max_tasks_per_child`` every finished cell's worker is replaced. After ``shutdown(wait=False)`` (how a
    stopped run leaves the pool) CPython 3.11's manager thread still tries, on the process table the shutdown
    set to None, and dies of a TypeError: every Ctrl-C or SIGTERM of a ``--jobs 2`` run printed "Exception in
    thread ... TypeError: object of type 'NoneType' has no len()" (6 of 6 runs, issue 27). That thread must end
    there (a cell it already handed to the call queue counts as running and would be waited for forever, and
    the interpreter joins the thread at exit), so it still ends, by ``SystemExit``, which a thread ends on
    without a word."""

    def _adjust_process_count(self):   # (the stdlib's hook for starting workers; see the class docstring)
        if self._processes is None:   # (the stdlib's own steps, with SystemExit where len(None) failed)
            if self._idle_worker_semaphore.acquire(blocking=False):
                return
            raise SystemExit
        super()._adjust_process_count()


STOP_GRACE_SECONDS = 60  # how long a stopped --jobs run waits for its workers to mark their cells failed


def run_in_workers(tasks: list[CellTask], slots: list[str], progress: bool, on_failure) -> int:
    """Run ``tasks`` in one worker process per slot (a fresh one per cell); returns how many cells ran here.

    ``slots`` holds the device of each worker slot (``tgbench.device.worker_devices``). A cell takes a free slot's
    device when it starts and gives it back when it ends, so no two running cells share a GPU while another is
    idle, whatever order cells finish in.

    Stop means stop: on Ctrl-C or SIGTERM (to the parent alone, or to the whole process group) the queued cells
    are cancelled, every running worker gets SIGTERM — its own handler marks its cell failed, as a single
    process does — and the interrupt is raised again once they have exited (``STOP_GRACE_SECONDS`` at most).
    A cell that raised anything else is handed to ``on_failure(task, exception)`` and the others go on.

    A worker that dies hard (``os._exit`` in a plug-in, a segfault, the kernel's OOM killer) breaks the whole
    pool: every cell it still had fails with ``BrokenProcessPool``, the dead worker's cell is left RUNNING.
    Those cells are then run again one at a time, each in a pool of its own, so only the cell that kills its
    worker again is handed to ``on_failure``, after the parent has marked its claim failed in the store
    (:func:`fail_dead_claims`): nothing is left RUNNING, and the cells queued behind it still run."""
    ran, broken = _run_pool(run_cell, tasks, slots, progress, on_failure)
    for task in broken:   # (alone: a worker that dies takes no other cell with it)
        again_ran, again_broken = _run_pool(run_cell, [task], slots[:1], False, on_failure)
        ran += again_ran
        if again_broken:
            fail_dead_claims(task)
            on_failure(task, BrokenProcessPool(f"the worker process running cell {cell_key(task.source, task.seed)} "
                                               "died without a word (os._exit, a crash or the OOM killer); its "
                                               "claim is marked failed"))
    return ran


def _run_pool(work, tasks: list, slots: list[str], progress: bool, on_failure, desc: str = "cells") -> tuple[int, list]:
    """(tasks whose ``work`` returned something other than None, tasks lost to a broken pool) of one pool over
    ``tasks`` (see ``run_in_workers``; ``work`` is a top-level function of one task)."""
    context = multiprocessing.get_context("spawn")  # (what max_tasks_per_child needs; the queue must match it)
    free_devices = context.Queue()
    for slot in slots:
        free_devices.put(slot)
    pool = StoppablePool(max_workers=len(slots), mp_context=context, max_tasks_per_child=1,
                         initializer=_adopt_slot_queue, initargs=(free_devices,))
    ran, broken = 0, []
    try:
        futures = {pool.submit(run_in_a_slot, work, task): task for task in tasks}
        for future in tqdm(as_completed(futures), total=len(futures), desc=desc, disable=not progress):
            try:
                ran += future.result() is not None
            except BrokenProcessPool:
                broken.append(futures[future])
            except CELL_FAILURES as exc:
                on_failure(futures[future], exc)
            interrupt.check()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        stop_workers(free_devices)
        raise
    pool.shutdown()
    return ran, broken


def fail_dead_claims(task: CellTask) -> None:
    """Mark failed the RUNNING cells of ``task``'s study whose worker process is gone (``Store.fail_stale``):
    what a worker that died hard held."""
    suite = (load_suite(task.suite_path, task.profile, task.overrides) if task.resolved_suite is None
             else suite_from_dict(task.resolved_suite))
    store = Store(task.storage, task.artifacts_dir)
    store.fail_stale(store.study(study_name(suite, task.profile), create=False))


def stop_workers(free_devices) -> None:
    """SIGTERM every worker process (its handler marks its cell failed), wait for them up to
    ``STOP_GRACE_SECONDS``, then SIGKILL whatever is still there, including a worker the pool started after the
    first look (it replaces one that exited). Why the kill: at exit the interpreter joins every non-daemon child
    without a timeout, so one worker left alive (seen once in CI under load, and once by a helper) made a stopped
    ``tgbench run --jobs`` print "interrupted" and then never exit. A killed worker's cell stays RUNNING in the
    store; the next run on this machine finds its process dead and re-runs it at once."""
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while (left := multiprocessing.active_children()) and time.monotonic() < deadline:
        # SIGTERM again at every look: a replacement the pool started meanwhile has no cell and dies of it at
        # once; a worker already marking its cell failed ignores it (tgbench.interrupt acts on the first signal)
        for worker in left:
            worker.terminate()
        left[0].join(timeout=0.2)
    for worker in multiprocessing.active_children():
        worker.kill()
        worker.join(timeout=5)
    free_devices.cancel_join_thread()   # never block exit on flushing the slot queue to workers that are gone


_free_devices = None   # in a worker process: the queue of free slot devices (set by the pool's initializer)


def _adopt_slot_queue(queue) -> None:
    global _free_devices
    _free_devices = queue
    interrupt.in_a_worker_process()


def run_cell_in_a_slot(task: CellTask, free_devices=None) -> dict | None:
    """``run_cell`` on the device of a free worker slot, given back afterwards (even if the cell raised)."""
    return run_in_a_slot(run_cell, task, free_devices)


# ------------------------------------------------------------------------------------------ any top-level work
def run_each_in_workers(work, tasks: list, slots: list[str], progress: bool, on_failure, desc: str = "tasks") -> int:
    """``work(task)`` for each of ``tasks`` in one worker process per slot (a fresh one per task), each task on a
    free slot's device (its ``device`` field; ``slots`` and stopping as in :func:`run_in_workers`, the same pool);
    returns how many returned something other than None here. ``work`` is a top-level function and each task a
    picklable dataclass with a ``device`` field: the tuning stage's arms (``tgbench.tuning.tune_arm_task``) run
    this way with ``--jobs``. A worker that dies hard stops the whole run here (``BrokenProcessPool``): the next
    run takes over what it held."""
    ran, broken = _run_pool(work, tasks, slots, progress, on_failure, desc)
    if broken:
        raise BrokenProcessPool(f"a worker process died without a word (os._exit, a crash or the OOM killer) while "
                                f"running {len(broken)} of the {desc}")
    return ran


def run_in_a_slot(work, task, free_devices=None):
    """``work(task)`` on the device of a free worker slot, given back afterwards (even if it raised)."""
    free_devices = _free_devices if free_devices is None else free_devices
    slot = free_devices.get()
    try:
        return work(dataclasses.replace(task, device=slot))
    finally:
        free_devices.put(slot)

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
from pathlib import Path

from tqdm import tqdm

from tgbench import device as devices
from tgbench import interrupt
from tgbench.cells import CellTask, run_cell
from tgbench.config import load_suite
from tgbench.errors import BadInput
from tgbench.kinds import RunContext, RunOptions, SuiteKind
from tgbench.locations import check_output_locations
from tgbench.provenance import default_profile
from tgbench.registry import suite_kinds
from tgbench.records import cell_key

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


STOP_GRACE_SECONDS = 60  # how long a stopped --jobs run waits for its workers to mark their cells failed


def run_in_workers(tasks: list[CellTask], slots: list[str], progress: bool, on_failure) -> int:
    """Run ``tasks`` in one worker process per slot (a fresh one per cell); returns how many cells ran here.

    ``slots`` holds the device of each worker slot (``tgbench.device.worker_devices``). A cell takes a free slot's
    device when it starts and gives it back when it ends, so no two running cells share a GPU while another is
    idle, whatever order cells finish in.

    Stop means stop: on Ctrl-C or SIGTERM (to the parent alone, or to the whole process group) the queued cells
    are cancelled, every running worker gets SIGTERM — its own handler marks its cell failed, as a single
    process does — and the interrupt is raised again once they have exited (``STOP_GRACE_SECONDS`` at most).
    A cell that raised anything else is handed to ``on_failure(task, exception)`` and the others go on."""
    context = multiprocessing.get_context("spawn")  # (what max_tasks_per_child needs; the queue must match it)
    free_devices = context.Queue()
    for slot in slots:
        free_devices.put(slot)
    pool = ProcessPoolExecutor(max_workers=len(slots), mp_context=context, max_tasks_per_child=1,
                               initializer=_adopt_slot_queue, initargs=(free_devices,))
    ran = 0
    try:
        futures = {pool.submit(run_cell_in_a_slot, task): task for task in tasks}
        for future in tqdm(as_completed(futures), total=len(futures), desc="cells", disable=not progress):
            try:
                ran += future.result() is not None
            except CELL_FAILURES as exc:
                on_failure(futures[future], exc)
            interrupt.check()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        stop_workers(free_devices)
        raise
    pool.shutdown()
    return ran


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


def run_cell_in_a_slot(task: CellTask, free_devices=None) -> dict | None:
    """``run_cell`` on the device of a free worker slot, given back afterwards (even if the cell raised)."""
    free_devices = _free_devices if free_devices is None else free_devices
    slot = free_devices.get()
    try:
        return run_cell(dataclasses.replace(task, device=slot))
    finally:
        free_devices.put(slot)




# ------------------------------------------------------------------------------------------ any top-level work
def run_each_in_workers(work, tasks: list, slots: list[str], progress: bool, on_failure, desc: str = "tasks") -> int:
    """``work(task)`` for each of ``tasks`` in one worker process per slot (a fresh one per task), each task on a
    free slot's device (its ``device`` field; ``slots`` and stopping as in :func:`run_in_workers`); returns how
    many returned a true value here. ``work`` is a top-level function and each task a picklable dataclass with a
    ``device`` field: the tuning stage's arms (``tgbench.tuning.tune_arm_task``) run this way with ``--jobs``."""
    context = multiprocessing.get_context("spawn")
    free_devices = context.Queue()
    for slot in slots:
        free_devices.put(slot)
    pool = ProcessPoolExecutor(max_workers=len(slots), mp_context=context, max_tasks_per_child=1,
                               initializer=_adopt_slot_queue, initargs=(free_devices,))
    ran = 0
    try:
        futures = {pool.submit(run_in_a_slot, work, task): task for task in tasks}
        for future in tqdm(as_completed(futures), total=len(futures), desc=desc, disable=not progress):
            try:
                ran += bool(future.result())
            except CELL_FAILURES as exc:
                on_failure(futures[future], exc)
            interrupt.check()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        stop_workers(free_devices)
        raise
    pool.shutdown()
    return ran


def run_in_a_slot(work, task, free_devices=None):
    """``work(task)`` on the device of a free worker slot, given back afterwards (even if it raised)."""
    free_devices = _free_devices if free_devices is None else free_devices
    slot = free_devices.get()
    try:
        return work(dataclasses.replace(task, device=slot))
    finally:
        free_devices.put(slot)

"""A stopped ``--jobs`` run's process pool prints nothing of its own (issue 27).

Every Ctrl-C or SIGTERM of a ``--jobs 2`` run printed ``Exception in thread ... TypeError: object of type
'NoneType' has no len()``: after ``shutdown(wait=False)`` the pool's manager thread tried to replace a worker that
had finished its one cell (``max_tasks_per_child=1``) in a process table the shutdown had cleared, and died of
it. The pool the runner uses (``tgbench.pool.StoppablePool``) ends that thread quietly instead (SystemExit,
which the default ``threading.excepthook`` ignores); the signal tests in test_reliability_workers.py hold that
a stopped run still exits.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import threading
import time

from tgbench.pool import StoppablePool, run_pool


def test_a_pool_shut_down_without_waiting_raises_nothing_in_its_thread_when_a_worker_finishes(monkeypatch):
    seen = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_value))
    pool = StoppablePool(max_workers=1, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1)
    future = pool.submit(time.sleep, 1.0)
    while not future.running():
        time.sleep(0.05)
    pool.shutdown(wait=False)                 # how run_in_workers leaves the pool when stopped
    assert future.result(timeout=60) is None  # the worker finishes its task and exits ...
    thread = next((t for t in threading.enumerate() if "ExecutorManagerThread" in type(t).__name__), None)
    if thread is not None:
        thread.join(timeout=30)               # ... and the manager thread handles that exit
    assert [e for e in seen if not isinstance(e, SystemExit)] == []   # (threads end on SystemExit silently)
    assert multiprocessing.active_children() == [] or all(not p.is_alive() for p in multiprocessing.active_children())


@dataclasses.dataclass(frozen=True)
class _Env:
    device: str = "cpu"


@dataclasses.dataclass(frozen=True)
class _Task:
    x: int
    env: _Env = _Env()


def _double(task: _Task) -> int:   # (top level: the pool's spawned workers import it)
    return 2 * task.x


def test_the_pool_is_never_handed_more_tasks_than_it_has_workers(monkeypatch):
    """A ``ProcessPoolExecutor`` moves one task beyond its workers into its call queue at once and marks it
    running; with every task submitted up front, a stopped ``--jobs`` run left that task there with no worker to
    take it, and the pool's manager thread waited for it forever: the interpreter's exit joins that thread, so
    ``tgbench run --jobs 2`` printed "interrupted" and never ended (1 stop in 24 under load; the CI hangs of stop
    29). ``run_pool`` hands a task over only when a slot is free."""
    outstanding, submit = [], StoppablePool.submit

    def counting_submit(self, *args, **kwargs):
        future = submit(self, *args, **kwargs)
        outstanding.append(future)
        assert sum(not f.done() for f in outstanding) <= 2, "more tasks handed over than there are slots"
        return future

    monkeypatch.setattr(StoppablePool, "submit", counting_submit)
    ran, broken = run_pool(_double, [_Task(x) for x in range(5)], ["cpu", "cpu"], False, None)
    assert (ran, broken) == (5, []) and len(outstanding) == 5

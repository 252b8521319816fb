"""A stopped ``--jobs`` run's process pool prints nothing of its own (issue 27).

Every Ctrl-C or SIGTERM of a ``--jobs 2`` run printed ``Exception in thread ... TypeError: object of type
'NoneType' has no len()``: after ``shutdown(wait=False)`` the pool's manager thread tried to replace a worker that
had finished its one cell (``max_tasks_per_child=1``) in a process table the shutdown had cleared, and died of
it. The pool the runner uses (``tgbench.pool.StoppablePool``) ends that thread quietly instead (SystemExit,
which the default ``threading.excepthook`` ignores); the signal tests in test_reliability_workers.py hold that
a stopped run still exits.
"""
from __future__ import annotations

import multiprocessing
import threading
import time

from tgbench.pool import StoppablePool


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

"""Ctrl-C and SIGTERM that are never lost.

Python turns SIGINT into a ``KeyboardInterrupt`` raised at whatever bytecode runs next. When that happens to be a
weakref callback or a ``__del__`` (torch, SQLAlchemy and Optuna run many during garbage collection), Python prints
"Exception ignored in ..." and drops it: the run went on and ``tgbench run`` exited 0 after a Ctrl-C (measured:
about one run in three on an idle machine). So the handler here also *remembers* the signal, ``check()`` re-raises
it at safe points (every meta-iteration, every architecture, between cells), and a dropped interrupt is not
printed. SIGTERM (what a batch scheduler sends before killing a job) is handled the same way, so the running cell
is marked failed at once instead of waiting to be found stale.
"""
from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from contextlib import contextmanager

HANDLED = (signal.SIGINT, signal.SIGTERM)
_received: int | None = None
_active = False
_block_entered = False   # a handled() block was entered in this process (in a worker: its one task started)


def _on_signal(signum, frame):
    global _received
    if _received is None:  # the first signal stops the run; more while it shuts down change nothing
        _received = signum
        raise KeyboardInterrupt


def _quiet_dropped_interrupt(unraisable, *, previous) -> None:
    # the interrupt is remembered and raised again at the next check(): "Exception ignored in ..." is noise
    if _received is not None and isinstance(unraisable.exc_value, KeyboardInterrupt):
        return
    previous(unraisable)


@contextmanager
def handled():
    """Handle SIGINT and SIGTERM inside the block, then restore what was there (tests call ``cli.main`` in
    process). Nested blocks, and blocks outside the main thread, where signals cannot be set, change nothing."""
    global _received, _active, _block_entered
    if _active or threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {signum: signal.getsignal(signum) for signum in HANDLED}, sys.unraisablehook
    _received, _active, _block_entered = None, True, True
    for signum in HANDLED:
        signal.signal(signum, _on_signal)
    sys.unraisablehook = functools.partial(_quiet_dropped_interrupt, previous=before[1])
    try:
        yield
    finally:
        for signum, handler in before[0].items():
            signal.signal(signum, handler)
        sys.unraisablehook, _active = before[1], False


def _on_signal_in_a_worker(signum, frame):
    # outside its task's handled() block: before the task, nothing is held, so go at once and quietly; after it,
    # the worker is sending its result down the pool's pipe, and dying half-way through that write would leave the
    # parent's pool thread waiting forever for the rest of the message (and the parent never exiting)
    if not _block_entered:
        os._exit(128 + signum)


def in_a_worker_process() -> None:
    """Called once at the start of a pool worker process (``tgbench.pool``): Ctrl-C and SIGTERM stop the task
    it runs as in ``tgbench run`` (its ``handled()`` block), end an idle worker at once, and are ignored after
    the task ended. Why: a stopped ``--jobs`` run SIGTERMs its workers again and again until they are gone (a
    replacement the pool starts meanwhile must die too), and a Ctrl-C reaches every process of the group as
    well; with the default handler back after the task, one of those signals could kill the worker in the middle
    of sending its result, and the parent then hung at exit (about one ``--jobs`` SIGTERM in ten, CI)."""
    for signum in HANDLED:
        signal.signal(signum, _on_signal_in_a_worker)


def received() -> int | None:
    """The first signal received in the current (or last) ``handled()`` block, or None."""
    return _received


def check() -> None:
    """Raise ``KeyboardInterrupt`` if a signal was received: call it at points where stopping is safe."""
    if _received is not None:
        raise KeyboardInterrupt


def quiet_once_received(record) -> bool:
    """A ``logging`` filter: nothing more from a library (Optuna's "Trial N failed" traceback) once a signal came."""
    return _received is None


def exit_code() -> int:
    """Shell convention: 128 + signal number (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + (_received or signal.SIGINT)

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
import signal
import sys
import threading
from contextlib import contextmanager

HANDLED = (signal.SIGINT, signal.SIGTERM)
_received: int | None = None
_active = False


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
    global _received, _active
    if _active or threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {signum: signal.getsignal(signum) for signum in HANDLED}, sys.unraisablehook
    _received, _active = None, True
    for signum in HANDLED:
        signal.signal(signum, _on_signal)
    sys.unraisablehook = functools.partial(_quiet_dropped_interrupt, previous=before[1])
    try:
        yield
    finally:
        for signum, handler in before[0].items():
            signal.signal(signum, handler)
        sys.unraisablehook, _active = before[1], False


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

"""The ``--jobs`` worker pool: top-level work, one fresh worker process per task, each task on the device of a
free worker slot, and a stop that stops (Ctrl-C / SIGTERM: the workers' tasks are marked failed, then every
worker is gone).

Generic and low: it knows nothing of cells or arms. A task is a frozen dataclass whose ``env`` field is a
``tgbench.worker.WorkerEnv`` (its ``device`` is set to the slot's here); the fewstep cells
(``tgbench.cells.run_in_workers``) and the tuning stage's arms (``tgbench.tuning.tune_arm_task``) run this way.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from tqdm import tqdm

from tgbench import interrupt

# What one task may raise without stopping the others: a plug-in's bug, a plug-in calling sys.exit, an environment
# failure (a fewstep cell is then marked failed in the store and the others run). Bad input and Ctrl-C/SIGTERM
# still stop the run.
TASK_FAILURES = (Exception, SystemExit)
STOP_GRACE_SECONDS = 60  # how long a stopped --jobs run waits for its workers to mark their tasks failed


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


def run_pool(work, tasks: list, slots: list[str], progress: bool, on_failure, desc: str = "tasks") -> tuple[int, list]:
    """``work(task)`` for each of ``tasks`` in one worker process per slot (a fresh one per task); returns (how
    many returned something other than None, the tasks lost to a broken pool).

    ``work`` is a top-level function of one task. ``slots`` holds the device of each worker slot
    (``tgbench.device.worker_devices``). A task takes a free slot's device when it starts and gives it back when
    it ends, so no two running tasks share a GPU while another is idle, whatever order tasks finish in.

    Stop means stop: on Ctrl-C or SIGTERM (to the parent alone, or to the whole process group) the queued tasks
    are cancelled, every running worker gets SIGTERM — its own handler marks its task failed, as a single
    process does — and the interrupt is raised again once they have exited (``STOP_GRACE_SECONDS`` at most).
    A task that raised anything else is handed to ``on_failure(task, exception)`` and the others go on.

    A worker that dies hard (``os._exit`` in a plug-in, a segfault, the kernel's OOM killer) breaks the whole
    pool: every task it still had comes back in the second list (the caller decides what to do with them)."""
    context = multiprocessing.get_context("spawn")  # (what max_tasks_per_child needs; the queue must match it)
    free_devices = context.Queue()
    for slot in slots:
        free_devices.put(slot)
    pool = StoppablePool(max_workers=len(slots), mp_context=context, max_tasks_per_child=1,
                         initializer=_adopt_slot_queue, initargs=(free_devices,))
    ran, broken, queued, running = 0, [], list(tasks), {}
    try:
        with tqdm(total=len(tasks), desc=desc, disable=not progress) as bar:
            _top_up(pool, work, queued, running, len(slots), broken)
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    task = running.pop(future)
                    try:
                        ran += future.result() is not None
                    except BrokenProcessPool:
                        broken.append(task)
                    except TASK_FAILURES as exc:
                        on_failure(task, exc)
                    bar.update(1)
                    interrupt.check()
                _top_up(pool, work, queued, running, len(slots), broken)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        stop_workers(free_devices)
        raise
    pool.shutdown()
    return ran, broken


def _top_up(pool: StoppablePool, work, queued: list, running: dict, slots: int, broken: list) -> None:
    """Hand the pool queued tasks until ``slots`` are running: never more. (The pool moves one task beyond its
    workers into its call queue at once, marked running; all submitted up front, a stopped run left that task
    there with no worker to take it, and the pool's manager thread waited for it forever — the interpreter's exit
    joins that thread: "interrupted" was printed and the process never ended, 1 stop in 24 under load, as in CI.)
    A broken pool takes nothing more: the tasks not yet handed over are lost with the ones it held."""
    while queued and len(running) < slots:
        task = queued.pop(0)
        try:
            running[pool.submit(run_in_a_slot, work, task)] = task
        except BrokenProcessPool:
            broken += [task, *queued]
            queued.clear()


def run_each_in_workers(work, tasks: list, slots: list[str], progress: bool, on_failure, desc: str = "tasks") -> int:
    """``work(task)`` for each of ``tasks`` in one worker process per slot (a fresh one per task), each task on a
    free slot's device (``slots`` and stopping as in :func:`run_pool`); returns how many returned something other
    than None here. The tuning stage's arms (``tgbench.tuning.tune_arm_task``) run this way with ``--jobs``. A
    worker that dies hard stops the whole run here (``BrokenProcessPool``): the next run takes over what it
    held."""
    ran, broken = run_pool(work, tasks, slots, progress, on_failure, desc)
    if broken:
        raise BrokenProcessPool(f"a worker process died without a word (os._exit, a crash or the OOM killer) while "
                                f"running {len(broken)} of the {desc}")
    return ran


def stop_workers(free_devices) -> None:
    """SIGTERM every worker process (its handler marks its task failed), wait for them up to
    ``STOP_GRACE_SECONDS``, then SIGKILL whatever is still there, including a worker the pool started after the
    first look (it replaces one that exited). Why the kill: at exit the interpreter joins every non-daemon child
    without a timeout, so one worker left alive (seen once in CI under load, and once by a helper) made a stopped
    ``tgbench run --jobs`` print "interrupted" and then never exit. A killed worker's cell stays RUNNING in the
    store; the next run on this machine finds its process dead and re-runs it at once."""
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while (left := multiprocessing.active_children()) and time.monotonic() < deadline:
        # SIGTERM again at every look: a replacement the pool started meanwhile has no task and dies of it at
        # once; a worker already marking its task failed ignores it (tgbench.interrupt acts on the first signal)
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


def run_in_a_slot(work, task, free_devices=None):
    """``work(task)`` on the device of a free worker slot (the task's ``env.device``), given back afterwards
    (even if it raised)."""
    free_devices = _free_devices if free_devices is None else free_devices
    slot = free_devices.get()
    try:
        return work(dataclasses.replace(task, env=dataclasses.replace(task.env, device=slot)))
    finally:
        free_devices.put(slot)

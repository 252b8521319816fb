"""One cell of a fewstep suite (an arm at one seed): its meta-training and evaluation, and the claim-run-record
cycle that writes it to the store under its config hash (``tgbench.identity.cell_hash``). Below every suite kind:
the fewstep runner, the NAS proxy suite's teachers and the tuning stage all meta-train through :func:`meta_train`.

A cell's task is :class:`CellSpec` (which cell) with ``tgbench.worker.WorkerEnv`` (where it runs), built by
:func:`cell_task` alone; :func:`run_in_workers` runs cells in the ``--jobs`` pool (``tgbench.pool``)."""
from __future__ import annotations

import base64
import datetime as dt
import io
import os
import resource
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Callable

import numpy as np
import optuna
import torch
from tqdm import tqdm

from tgbench import device as devices
from tgbench import interrupt
from tgbench.builders import build_trainer
from tgbench.compute import meta_train_flops
from tgbench.suite.by_kind import suite_from_dict
from tgbench.suite.checks import arm_with
from tgbench.suite.schema import SourceEntry, Suite
from tgbench.data import Dataset
from tgbench.engine import MetaTrainer
from tgbench.errors import BadInput, Diverged
from tgbench.identity import EVAL_SEED_OFFSET, cell_hash, cell_inputs, protocol_of
from tgbench.nn import LearnerSpec
from tgbench.pool import TASK_FAILURES, run_in_a_slot, run_pool
from tgbench.provenance import git_revision, reproducibility
from tgbench.records import FewstepCell, Status, cell_key
from tgbench.resume import SavedState
from tgbench.source import Teacher
from tgbench.store import Store
from tgbench.trackers import Tracker, Trackers, final_metrics, open_trackers
from tgbench.worker import Worker, WorkerEnv, set_up_worker


SAMPLE_ROWS = 6        # rows of the generated-samples figure, evenly spaced over the inner steps


def study_name(suite: Suite, profile: str) -> str:
    return f"{suite.name}@{profile}"


@dataclass(frozen=True)
class CellSpec:
    """Which cell: the suite as the run resolved it (``Suite.model_dump``, ``--set`` overrides applied: a suite
    file edited while the run goes on cannot change the cells it planned), its profile, the arm, the seed and the
    values the suite's tuning stage chose for the arm (per-arm overrides; None: no tuning stage)."""

    resolved_suite: dict
    profile: str
    arm: str
    seed: int
    tuned: dict | None = None


@dataclass(frozen=True)
class CellTask:
    """Everything a worker process needs to run one cell (top-level and picklable): which cell, and where."""

    spec: CellSpec
    env: WorkerEnv


def cell_task(suite: Suite, profile: str, arm: str, seed: int, env: WorkerEnv, tuned: dict | None = None,
              resolved: dict | None = None) -> CellTask:
    """The one place a cell's task is built (every suite kind that runs cells comes here). ``resolved``:
    ``suite.model_dump(mode="json")`` when the caller already made it (one per run, shared by its cells)."""
    resolved = suite.model_dump(mode="json") if resolved is None else resolved
    return CellTask(spec=CellSpec(resolved_suite=resolved, profile=profile, arm=arm, seed=seed, tuned=tuned),
                    env=env)


def sample_grid(teacher: Teacher, dataset: Dataset, seed: int) -> tuple[np.ndarray, list[int]]:
    """(rows, classes, C, H, W) images in [0, 1]: for rows evenly spaced over the inner steps, the first example
    of each class in that step's batch (black where a batch has no example of a class)."""
    steps = teacher.hyper.log_lr.shape[0]
    rows = sorted(set(np.linspace(0, steps - 1, min(SAMPLE_ROWS, steps)).round().astype(int).tolist()))
    grid = np.zeros((len(rows), dataset.num_classes, *dataset.image_shape), dtype=np.float32)
    with torch.no_grad():
        episode = teacher.new_episode(devices.generator(dataset.train.x.device, seed))
        for r, t in enumerate(rows):
            lesson = teacher(t, episode)
            labels = lesson.y if lesson.y.dim() == 1 else lesson.y.argmax(1)
            for c in range(dataset.num_classes):
                hits = (labels == c).nonzero().flatten()
                if len(hits):
                    grid[r, c] = dataset.denormalise(lesson.x[hits[0]]).cpu().numpy()
    return grid, rows


def encode_array(a: np.ndarray) -> str:
    """Compact JSON-able encoding of a small image array (uint8, npy, base64) for the store."""
    buf = io.BytesIO()
    np.save(buf, (np.clip(a, 0, 1) * 255).round().astype(np.uint8))
    return base64.b64encode(buf.getvalue()).decode()


def decode_array(s: str) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(s))).astype(np.float32) / 255


@dataclass
class Watch:
    """Who follows a meta-training as it goes: ``tracker`` (``tgbench.trackers``) is shown the meta-loss, the
    checks and the sample grid; ``on_eval`` is called with each check's curve point (it may raise to stop the
    run, as a pruned tune trial does)."""

    tracker: Tracker | None = None
    on_eval: Callable[[dict], None] | None = None


def meta_train(suite: Suite, entry: SourceEntry, dataset: Dataset, seed: int, progress: bool = True,
               watch: Watch | None = None, report_extras: bool = True,
               saved: SavedState | None = None) -> tuple[Teacher, dict]:
    """Meta-train one teacher and evaluate it; returns (teacher, record fields: those of a ``FewstepCell`` that
    meta-training and evaluation make, ``status`` a ``Status``). Diverged runs are recorded.

    ``report_extras=False`` skips what only a fewstep cell's report shows — the final evaluation's per-step
    curve (its endpoints are the same numbers either way: scoring draws no randomness), the sample grid and the
    held-out architectures — for callers that keep only the endpoints (a tune trial: they were ~45 % of its
    time).

    ``saved`` (None: nothing is saved): where the whole meta-training state is saved every ``outer.save_every``
    outer iterations and after the last one, and resumed from when a matching state is there — the final numbers
    are then bit-identical to a run never stopped, on the same device. The caller removes it when its result is
    safe (``SavedState.remove``)."""
    watch = watch or Watch()
    tracker = watch.tracker or Trackers([])
    trainer, loop = _trainer_and_loop(suite, entry, dataset, seed, saved)
    teacher, outer = trainer.teacher, trainer.outer
    specs = suite.evaluation.learner_specs(suite.learner, teacher.source.learner_weight_norm)
    ev = suite.evaluation
    curve, phases = loop["curve"], loop["phases"]  # phases: the report's "Where the time went" (wall seconds)
    status, error = Status.COMPLETE, None
    final = None  # the final evaluation, when the last check is made by it (below)

    def evaluate_final():
        return trainer.evaluate(dataset.test, dataset.val, specs, ev.final_learners, seed=EVAL_SEED_OFFSET + seed,
                                per_step=report_extras)

    def check(iteration: int, meta_loss: float | None) -> dict:
        nonlocal final
        start = time.perf_counter()
        if iteration == outer.iterations and ev.eval_learners == ev.final_learners:
            # The last check would train the final evaluation's learners from the same seed and score the same
            # endpoints (scoring draws no randomness): run the final evaluation once and read the check from it.
            # Same numbers, one evaluation fewer per cell and tune trial (a sixth of a smoke cell's time).
            final = evaluate_final()
            result = final.final
        else:
            result = trainer.evaluate(dataset.test, dataset.val, specs, ev.eval_learners,
                                      seed=EVAL_SEED_OFFSET + seed, per_step=False).final
        point = {"outer_iter": iteration, "val_acc": result["val_acc"], "test_acc": result["test_acc"],
                 "val_loss": result["val_loss"], "meta_loss": meta_loss}
        curve.append(point)
        tracker.scalar("val_acc", result["val_acc"], iteration)
        if final is not None:
            phases["final_evaluation"] = time.perf_counter() - start
        else:
            phases["checks"] += time.perf_counter() - start
        if watch.on_eval is not None:
            watch.on_eval(point)
        return point

    if trainer.iteration == 0:
        check(0, None)
    bar = tqdm(total=outer.iterations, initial=trainer.iteration, desc=f"{entry.name} seed {seed}",
               disable=not progress, leave=False, unit="it", dynamic_ncols=True)
    try:
        for it in range(trainer.iteration + 1, outer.iterations + 1):
            interrupt.check()
            stats = trainer.step()
            loop["train_seconds"] += stats.seconds
            tracker.scalar("meta_loss", stats.meta_loss, it)
            bar.update(1)
            if it % ev.eval_every == 0 or it == outer.iterations:
                point = check(it, stats.meta_loss)
                bar.set_postfix(val_acc=f"{point['val_acc']:.3f}", meta_loss=f"{stats.meta_loss:.3f}")
            if saved is not None and outer.save_every and (it % outer.save_every == 0 or it == outer.iterations):
                _save_state(saved, trainer, loop)
    except Diverged as exc:
        status, error = Status.DIVERGED, str(exc)
    finally:
        bar.close()

    train_seconds = loop["train_seconds"]
    record = {"status": status, "error": error, "meta_train_seconds": train_seconds,
              "outer_iterations": trainer.iteration, "curve": curve, "schedule": teacher.hyper.schedule()}
    if loop["resumed_from"]:
        record["resumed_from"] = loop["resumed_from"]
    if status == Status.COMPLETE:
        interrupt.check()
        start = time.perf_counter()
        if final is None:  # not made by the last check (other learner counts, or resumed after the last check)
            final = evaluate_final()
            phases["final_evaluation"] = time.perf_counter() - start
        start = time.perf_counter()
        record.update({
            "test_acc_final": final.test_acc[-1], "val_acc_final": final.val_acc[-1],
            "test_loss_final": final.test_loss[-1], "val_loss_final": final.val_loss[-1],
            "eval_architectures": [s.describe() for s in specs],
        })
        if report_extras:
            grid, rows = sample_grid(teacher, dataset, seed)
            tracker.images("samples", grid, trainer.iteration)
            phases["samples"] = time.perf_counter() - start
            record.update({
                "steps_test_acc": final.test_acc, "steps_val_acc": final.val_acc,
                "eval_seconds": phases["final_evaluation"] + phases["samples"],
                "samples": encode_array(grid), "sample_steps": rows,
            })
            start = time.perf_counter()
            held_out = ev.held_out_specs(suite.learner, teacher.source.learner_weight_norm)
            record["held_out"] = held_out_scores(trainer, dataset, held_out, ev.final_learners, EVAL_SEED_OFFSET + seed)
            record["held_out_seconds"] = phases["held_out"] = time.perf_counter() - start
    else:  # diverged: the last finite evaluation stands for the cell, flagged by its status
        last = curve[-1]
        record.update({"test_acc_final": last["test_acc"], "val_acc_final": last["val_acc"],
                       "val_loss_final": last["val_loss"]})
    record["phase_seconds"] = {"meta_training": train_seconds, **phases}
    return teacher, record


def _trainer_and_loop(suite: Suite, entry: SourceEntry, dataset: Dataset, seed: int,
                      saved: SavedState | None) -> tuple[MetaTrainer, dict]:
    """The cell's trainer and what ``meta_train``'s loop has accumulated (curve, seconds, resumptions): fresh,
    or continued from ``saved`` when it holds a state of this cell (a log line says so)."""
    trainer = build_trainer(suite, entry, dataset, seed)
    fresh = {"curve": [], "train_seconds": 0.0, "phases": {"checks": 0.0}, "resumed_from": []}
    state = saved.load() if saved is not None else None
    if state is None:
        return trainer, fresh
    try:
        trainer.load_state_dict(state["trainer"])
        loop = {key: state["loop"][key] for key in fresh}
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # e.g. a method's code changed its tensors
        first_line = (str(exc).splitlines() or [""])[0]
        saved.ignored(f"it does not fit this cell's trainer: {type(exc).__name__}: {first_line}")
        return build_trainer(suite, entry, dataset, seed), fresh
    loop["resumed_from"] = [*loop["resumed_from"], trainer.iteration]
    print(f"tgbench: resuming {saved.label} from iteration {trainer.iteration}", file=sys.stderr)
    return trainer, loop


def _save_state(saved: SavedState, trainer: MetaTrainer, loop: dict) -> None:
    """Save the trainer and the loop's accumulations; the seconds it takes are the phase ``state_saves``."""
    start = time.perf_counter()
    saved.save({"trainer": trainer.state_dict(), "loop": loop})
    loop["phases"]["state_saves"] = loop["phases"].get("state_saves", 0.0) + time.perf_counter() - start


def held_out_scores(trainer: MetaTrainer, dataset: Dataset, specs: dict[str, LearnerSpec], learners: int,
                    seed: int) -> list[dict]:
    """Test/val accuracy after the last inner step of fresh learners of architectures the teacher was not
    meta-trained with (the report's held-out table); one entry per named architecture."""
    scores = []
    for name, spec in specs.items():
        interrupt.check()
        final = trainer.evaluate(dataset.test, dataset.val, [spec], learners, seed=seed, per_step=False).final
        scores.append({"name": name, "architecture": spec.describe(), "test_acc": final["test_acc"],
                       "val_acc": final["val_acc"]})
    return scores


def run_cell(task: CellTask) -> FewstepCell | None:
    """Claim one cell, run it start to finish and write it to the store (top-level: runs in worker processes
    too); None when another worker holds the cell (see ``tgbench.store``)."""
    with interrupt.handled():  # (a no-op under `tgbench run`; in a --jobs worker process it is needed)
        return _run_cell(task)


def _run_cell(task: CellTask) -> FewstepCell | None:
    spec = task.spec
    worker = set_up_worker(task.env, spec.resolved_suite)
    suite, dataset, store = worker.suite, worker.dataset, worker.store
    entry = tuned_arm(suite, next(e for e in suite.sources if e.name == spec.arm), spec.tuned)
    study = store.study(study_name(suite, spec.profile))
    chash = cell_hash(suite, entry, dataset.resolved)
    trial = store.claim(study, cell_key(entry.name, spec.seed), chash)
    if trial is None:  # done meanwhile, or another worker runs it
        return None
    try:
        with store.heartbeat(trial):
            return _run_claimed_cell(task, worker, entry, study, trial, chash)
    except optuna.exceptions.UpdateFinishedTrialError:  # our claim was failed as stale while we still ran
        print(f"tgbench: warning: cell {trial.user_attrs['cell']}: this worker was silent for longer than "
              f"{store.grace_period} s and lost its claim; the result is discarded, another run redoes the cell",
              file=sys.stderr)
        return None


def _run_claimed_cell(task: CellTask, worker: Worker, entry: SourceEntry, study: optuna.Study, trial: optuna.Trial,
                      chash: str) -> FewstepCell:
    """Meta-train, evaluate, save the teacher and write the record. Whatever stops it on the way (Ctrl-C,
    SIGTERM, a bug, a full disk) marks the cell failed: a claim is never left RUNNING by a live process."""
    spec, env, suite, dataset, store = task.spec, task.env, worker.suite, worker.dataset, worker.store
    cell = cell_key(entry.name, spec.seed)
    # kept while the cell is unfinished (a failed cell's rerun resumes from it), removed once its record is written
    saved = SavedState(store.saved_state_path(study, cell, chash), chash, worker.device, cell)
    with store.failed_if_raised(study, trial, FewstepCell, cell, chash):
        hyperparameters = {"suite": suite.model_dump(mode="json", exclude={"profiles", "sources"}),
                           "arm": entry.model_dump(mode="json"), "seed": spec.seed}
        tracker = open_trackers(env.loggers, env.log_dir, suite.name, cell, hyperparameters)
        try:
            teacher, fields = meta_train(suite, entry, dataset, spec.seed, progress=env.progress,
                                         watch=Watch(tracker=tracker), saved=saved)
            tracker.summary(final_metrics(fields))
        finally:
            tracker.close()
        fields.update({"diagnostics": d} if (d := teacher.source.diagnostics()) else {})  # Source.diagnostics (issue 24)
        if inputs := cell_inputs(entry):  # the data files and plug-in read, by content (tgbench.inputs)
            fields["inputs"] = inputs
        fields["protocol"] = protocol_of(suite.model_dump(mode="json"), dataset.resolved, entry.model_dump(mode="json"))
        if suite.evaluation.count_flops:
            start = time.perf_counter()
            fields["meta_train_flops"] = meta_train_flops(suite, entry, dataset.problem, spec.seed,
                                                          fields["outer_iterations"])
            fields["phase_seconds"]["flop_counting"] = time.perf_counter() - start
        record = _cell_record(spec, worker, entry, chash, fields)
        if record.status == Status.COMPLETE:
            start = time.perf_counter()
            record.teacher_artifact = store.save_teacher(study, trial, {
                "method": entry.method, "params": entry.params,
                "state_dict": {k: v.cpu() for k, v in teacher.state_dict().items()},  # loads on any device
                "suite": suite.model_dump(mode="json"), "dataset_resolved": dataset.resolved, "seed": spec.seed,
                "image_shape": dataset.image_shape, "num_classes": dataset.num_classes})
            record.phase_seconds["teacher_save"] = time.perf_counter() - start
        interrupt.check()  # never write a cell as complete after a Ctrl-C that Python dropped
        store.finish(study, trial, record)
        saved.remove()  # complete or diverged: nothing is left to resume
    return record


def _cell_record(spec: CellSpec, worker: Worker, entry: SourceEntry, chash: str, fields: dict) -> FewstepCell:
    suite, dataset = worker.suite, worker.dataset
    return FewstepCell(**{
        "cell": cell_key(entry.name, spec.seed), "config_hash": chash, "suite": suite.name, "profile": spec.profile,
        "source": entry.name, "method": entry.method, "variant": variant_of(entry), "seed": spec.seed,
        "dataset": suite.dataset.name, "dataset_resolved": dataset.resolved, "fallback_reason": dataset.fallback_reason,
        "inner_steps": suite.inner_for(entry).steps, "batch_size": suite.inner_for(entry).batch_size,
        "arm": entry.arm or entry.name, "sweep_value": entry.sweep_value,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch": torch.__version__, **devices.facts(worker.device), "threads": torch.get_num_threads(),
        "revision": git_revision(), "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **reproducibility(), **fields,
    })


# ------------------------------------------------------------------------------------------ cells in workers
# What one cell may raise without stopping the suite (``tgbench.pool.TASK_FAILURES``): the cell is marked failed
# in the store and the others run.
CELL_FAILURES = TASK_FAILURES


def note_failure(failures: dict[str, str], task: CellTask, exc: BaseException, log) -> None:
    """Note a cell that raised in ``failures`` (cell key -> one line) and go on; bad input (and anything under
    ``$TGBENCH_DEBUG``) is raised again at once."""
    if isinstance(exc, BadInput) or os.environ.get("TGBENCH_DEBUG"):  # (debugging: the traceback, at once)
        raise exc
    key = cell_key(task.spec.arm, task.spec.seed)
    failures[key] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    log(f"cell {key} failed ({failures[key]}); the other cells go on")  # (stdout: stderr gets one summary line)


def run_in_workers(tasks: list[CellTask], slots: list[str], progress: bool, on_failure) -> int:
    """Run ``tasks`` in one worker process per slot (a fresh one per cell, so each record's peak memory is its
    own); returns how many cells ran here. Slots, stopping and failures as in ``tgbench.pool.run_pool``.

    A worker that dies hard (``os._exit`` in a plug-in, a segfault, the kernel's OOM killer) breaks the whole
    pool: every cell it still had fails with ``BrokenProcessPool``, the dead worker's cell is left RUNNING.
    Those cells are then run again one at a time, each in a pool of its own, so only the cell that kills its
    worker again is handed to ``on_failure``, after the parent has marked its claim failed in the store
    (:func:`fail_dead_claims`): nothing is left RUNNING, and the cells queued behind it still run."""
    ran, broken = run_pool(run_cell, tasks, slots, progress, on_failure, "cells")
    for task in broken:   # (alone: a worker that dies takes no other cell with it)
        again_ran, again_broken = run_pool(run_cell, [task], slots[:1], False, on_failure, "cells")
        ran += again_ran
        if again_broken:
            fail_dead_claims(task)
            key = cell_key(task.spec.arm, task.spec.seed)
            on_failure(task, BrokenProcessPool(f"the worker process running cell {key} died without a word "
                                               "(os._exit, a crash or the OOM killer); its claim is marked failed"))
    return ran


def fail_dead_claims(task: CellTask) -> None:
    """Mark failed the RUNNING cells of ``task``'s study whose worker process is gone (``Store.fail_stale``):
    what a worker that died hard held."""
    suite = suite_from_dict(task.spec.resolved_suite)
    store = Store(task.env.storage, task.env.artifacts_dir)
    store.fail_stale(store.study(study_name(suite, task.spec.profile), create=False))


def run_cell_in_a_slot(task: CellTask, free_devices=None) -> FewstepCell | None:
    """``run_cell`` on the device of a free worker slot, given back afterwards (even if the cell raised)."""
    return run_in_a_slot(run_cell, task, free_devices)


def tuned_arm(suite: Suite, entry: SourceEntry, values: dict | None) -> SourceEntry:
    """The arm with its tuning stage's chosen values applied as per-arm overrides (itself when none)."""
    if not values:
        return entry
    return arm_with(suite, entry, values)


def variant_of(entry: SourceEntry) -> str:
    parts = [f"{k}={v}" for k, v in sorted(entry.params.items())]
    parts += [f"outer.{k}={v}" for k, v in sorted(entry.outer.items())]
    parts += [f"inner.{k}={v}" for k, v in sorted(entry.inner.items())]
    return ", ".join(parts) or "default"

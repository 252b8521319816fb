"""Runs a few-step suite: every cell (source x seed) meta-trains a teacher, evaluates it, and lands in the store.

``run_suite`` is what ``tgbench run`` calls. Cells already finished in the store under the same config hash
are skipped (resume); with ``jobs > 1`` cells run in worker processes (one fresh process per cell, so each
record's peak memory is its own). The report is rebuilt from the store at the end (``build_report``).
"""
from __future__ import annotations

import base64
import datetime as dt
import io
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import torch
from tqdm import tqdm

from tgbench import interrupt
from tgbench.config import Suite, SourceEntry, check_data_sizes, load_suite
from tgbench.data import Dataset, load_dataset
from tgbench.engine import MetaTrainer
from tgbench.errors import BadInput, CellsFailed, Diverged
from tgbench.inner import InnerHyperparameters
from tgbench.nn import LearnerSpec
from tgbench.registry import methods
from tgbench.source import SourceContext, Teacher
from tgbench.store import Store, cell_key, config_hash, resolve_url, sqlite_path

SAMPLE_ROWS = 6        # rows of the generated-samples figure, evenly spaced over the inner steps
EVAL_SEED_OFFSET = 10_000  # evaluation learners use their own random stream, never the meta-training one
WAIT_SECONDS = 5       # how often a worker with nothing left to claim looks at the cells other workers run


def default_profile() -> str:
    return "paper" if torch.cuda.is_available() else "cpu"


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip()
        return (rev + ("-dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> str:
    return f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".replace("  ", " ")


def study_name(suite: Suite, profile: str) -> str:
    return f"{suite.name}@{profile}"


def cell_hash(suite: Suite, entry: SourceEntry, dataset_resolved: str) -> str:
    """What makes two runs of a cell the same experiment: everything but the seed count and the other arms."""
    protocol = suite.model_dump(mode="json", exclude={"profiles", "sources", "description", "nas"})
    protocol["evaluation"].pop("seeds")
    # settings added after results were stored must not change old cells' hashes while left unset
    protocol = {k: v for k, v in protocol.items() if v is not None}
    if protocol["learner"]["bn_statistics"] == "scored_batch":  # the protocol before the option existed
        protocol["learner"].pop("bn_statistics")
    if protocol["evaluation"].get("held_out") is None:  # the default held-out set is versioned with the code
        protocol["evaluation"].pop("held_out", None)
    source = entry.model_dump(mode="json")
    for key, unset in (("inner", {}), ("learner", {}), ("tune_space", None), ("arm", None), ("sweep_value", None)):
        if source.get(key) == unset:
            source.pop(key)
    return config_hash({"protocol": protocol, "source": source, "data": dataset_resolved})


# ------------------------------------------------------------------------------------------ one cell
@dataclass
class CellTask:
    """Everything a worker process needs to run one cell (top-level and picklable)."""

    suite_path: str
    profile: str
    source: str
    seed: int
    storage: str
    data_root: str | None
    artifacts_dir: str | None = None
    progress: bool = True
    threads: int | None = None   # torch threads in this cell's process (None: torch's default)
    methods_dirs: tuple[str, ...] = ()   # --methods-dir plugin folders, re-registered in each worker process
    tuned: dict | None = None    # the values the suite's tuning stage chose for this arm (per-arm overrides)


def build_teacher(suite: Suite, entry: SourceEntry, dataset: Dataset, seed: int) -> Teacher:
    torch.manual_seed(seed)  # sources initialise with torch's default RNG: seed it per cell
    inner = suite.inner_for(entry)
    ctx = SourceContext(dataset.train, inner.steps, inner.batch_size, dataset.image_shape, dataset.num_classes)
    cls = methods.get(entry.method)
    source = cls(cls.Params.model_validate(entry.params), ctx)
    hyper = InnerHyperparameters(inner.steps, inner.lr, inner.momentum, inner.learn_lr, inner.learn_momentum)
    return Teacher(source, hyper, inner.optimizer)


def build_trainer(suite: Suite, entry: SourceEntry, dataset: Dataset, seed: int) -> MetaTrainer:
    """The ``MetaTrainer`` of one cell: its teacher, the suite's learner space, inner and (per-arm) outer loop.
    Shared by the runner, the benchmarks and anything else that meta-trains a suite's source."""
    teacher = build_teacher(suite, entry, dataset, seed)
    return MetaTrainer(teacher, suite.learner_for(entry), dataset.train, suite.inner_for(entry), suite.outer_for(entry),
                       image_shape=dataset.image_shape, num_classes=dataset.num_classes, seed=seed,
                       learner_weight_norm=teacher.source.learner_weight_norm)


def sample_grid(teacher: Teacher, dataset: Dataset, seed: int) -> tuple[np.ndarray, list[int]]:
    """(rows, classes, C, H, W) images in [0, 1]: for rows evenly spaced over the inner steps, the first example
    of each class in that step's batch (black where a batch has no example of a class)."""
    steps = teacher.hyper.log_lr.shape[0]
    rows = sorted(set(np.linspace(0, steps - 1, min(SAMPLE_ROWS, steps)).round().astype(int).tolist()))
    grid = np.zeros((len(rows), dataset.num_classes, *dataset.image_shape), dtype=np.float32)
    with torch.no_grad():
        episode = teacher.new_episode(torch.Generator().manual_seed(seed))
        for r, t in enumerate(rows):
            lesson = teacher(t, episode)
            labels = lesson.y if lesson.y.dim() == 1 else lesson.y.argmax(1)
            for c in range(dataset.num_classes):
                hits = (labels == c).nonzero().flatten()
                if len(hits):
                    grid[r, c] = dataset.denormalise(lesson.x[hits[0]]).numpy()
    return grid, rows


def encode_array(a: np.ndarray) -> str:
    """Compact JSON-able encoding of a small image array (uint8, npy, base64) for the store."""
    buf = io.BytesIO()
    np.save(buf, (np.clip(a, 0, 1) * 255).round().astype(np.uint8))
    return base64.b64encode(buf.getvalue()).decode()


def decode_array(s: str) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(s))).astype(np.float32) / 255


def meta_train(suite: Suite, entry: SourceEntry, dataset: Dataset, seed: int, progress: bool = True,
               on_eval=None) -> tuple[Teacher, dict]:
    """Meta-train one teacher and evaluate it; returns (teacher, record fields). Diverged runs are recorded."""
    trainer = build_trainer(suite, entry, dataset, seed)
    teacher, outer = trainer.teacher, trainer.outer
    specs = suite.evaluation.learner_specs(suite.learner, teacher.source.learner_weight_norm)
    ev = suite.evaluation
    curve, status, error = [], "complete", None
    phases = {"checks": 0.0}  # wall seconds per phase of the cell (the report's "Where the time went")

    def check(iteration: int, meta_loss: float | None) -> dict:
        start = time.perf_counter()
        result = trainer.evaluate(dataset.test, dataset.val, specs, ev.eval_learners,
                                  seed=EVAL_SEED_OFFSET + seed, per_step=False).final
        point = {"outer_iter": iteration, "val_acc": result["val_acc"], "test_acc": result["test_acc"],
                 "val_loss": result["val_loss"], "meta_loss": meta_loss}
        curve.append(point)
        phases["checks"] += time.perf_counter() - start
        if on_eval is not None:
            on_eval(point)
        return point

    check(0, None)
    train_seconds = 0.0
    bar = tqdm(total=outer.iterations, desc=f"{entry.name} seed {seed}", disable=not progress, leave=False,
               unit="it", dynamic_ncols=True)
    try:
        for it in range(1, outer.iterations + 1):
            interrupt.check()
            stats = trainer.step()
            train_seconds += stats.seconds
            bar.update(1)
            if it % ev.eval_every == 0 or it == outer.iterations:
                point = check(it, stats.meta_loss)
                bar.set_postfix(val_acc=f"{point['val_acc']:.3f}", meta_loss=f"{stats.meta_loss:.3f}")
    except Diverged as exc:
        status, error = "diverged", str(exc)
    finally:
        bar.close()

    record = {"status": status, "error": error, "meta_train_seconds": train_seconds,
              "outer_iterations": trainer.iteration, "curve": curve, "schedule": teacher.hyper.schedule()}
    if status == "complete":
        interrupt.check()
        start = time.perf_counter()
        final = trainer.evaluate(dataset.test, dataset.val, specs, ev.final_learners, seed=EVAL_SEED_OFFSET + seed)
        phases["final_evaluation"] = time.perf_counter() - start
        grid, rows = sample_grid(teacher, dataset, seed)
        phases["samples"] = time.perf_counter() - start - phases["final_evaluation"]
        record.update({
            "test_acc_final": final.test_acc[-1], "val_acc_final": final.val_acc[-1],
            "test_loss_final": final.test_loss[-1], "val_loss_final": final.val_loss[-1],
            "steps_test_acc": final.test_acc, "steps_val_acc": final.val_acc,
            "eval_seconds": time.perf_counter() - start,
            "samples": encode_array(grid), "sample_steps": rows,
            "eval_architectures": [s.describe() for s in specs],
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


def run_cell(task: CellTask) -> dict | None:
    """Claim one cell, run it start to finish and write it to the store (top-level: runs in worker processes
    too); None when another worker holds the cell (see ``tgbench.store``)."""
    with interrupt.handled():  # (a no-op under `tgbench run`; in a --jobs worker process it is needed)
        return _run_cell(task)


def _run_cell(task: CellTask) -> dict | None:
    if task.threads:
        torch.set_num_threads(task.threads)
    for folder in task.methods_dirs:
        methods.load_dir(folder)
    suite = load_suite(task.suite_path, task.profile)
    entry = tuned_arm(suite, next(e for e in suite.sources if e.name == task.source), task.tuned)
    dataset = load_dataset(suite.dataset.name, data_root=task.data_root, download=suite.dataset.download,
                           fallback=suite.dataset.fallback, seed=0)
    store = Store(task.storage, task.artifacts_dir)
    study = store.study(study_name(suite, task.profile))
    chash = cell_hash(suite, entry, dataset.resolved)
    trial = store.claim(study, cell_key(entry.name, task.seed), chash)
    if trial is None:  # done meanwhile, or another worker runs it
        return None
    try:
        with store.heartbeat(trial):
            return _run_claimed_cell(task, suite, entry, dataset, store, study, trial, chash)
    except optuna.exceptions.UpdateFinishedTrialError:  # our claim was failed as stale while we still ran
        print(f"tgbench: warning: cell {trial.user_attrs['cell']}: this worker was silent for longer than "
              f"{store.grace_period} s and lost its claim; the result is discarded, another run redoes the cell",
              file=sys.stderr)
        return None


def _run_claimed_cell(task: CellTask, suite: Suite, entry: SourceEntry, dataset: Dataset, store: Store,
                      study: optuna.Study, trial: optuna.Trial, chash: str) -> dict:
    """Meta-train, evaluate, save the teacher and write the record. Whatever stops it on the way (Ctrl-C,
    SIGTERM, a bug, a full disk) marks the cell failed: a claim is never left RUNNING by a live process."""
    try:
        teacher, fields = meta_train(suite, entry, dataset, task.seed, progress=task.progress)
        from tgbench.leaderboard import meta_train_flops, protocol_of  # what the leaderboard compares and costs

        fields["protocol"] = protocol_of(suite.model_dump(mode="json"), dataset.resolved, entry.model_dump(mode="json"))
        start = time.perf_counter()
        fields["meta_train_flops"] = meta_train_flops(suite, entry, dataset.image_shape, dataset.num_classes,
                                                      task.seed, fields["outer_iterations"])
        fields["phase_seconds"]["flop_counting"] = time.perf_counter() - start
        record = _cell_record(task, suite, entry, dataset, chash, fields)
        if record["status"] == "complete":
            start = time.perf_counter()
            record["teacher_artifact"] = store.save_teacher(study, trial, {
                "method": entry.method, "params": entry.params, "state_dict": teacher.state_dict(),
                "suite": suite.model_dump(mode="json"), "dataset_resolved": dataset.resolved, "seed": task.seed,
                "image_shape": dataset.image_shape, "num_classes": dataset.num_classes})
            record["phase_seconds"]["teacher_save"] = time.perf_counter() - start
        interrupt.check()  # never write a cell as complete after a Ctrl-C that Python dropped
        store.finish(study, trial, record)
    except BaseException as exc:  # Ctrl-C, SIGTERM, a bug, a full disk: the cell is marked failed
        try:
            store.finish(study, trial, {"status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        except optuna.exceptions.UpdateFinishedTrialError:  # it had been closed just before the signal came
            pass
        raise
    return record


def _cell_record(task: CellTask, suite: Suite, entry: SourceEntry, dataset: Dataset, chash: str,
                 fields: dict) -> dict:
    return {
        "cell": cell_key(entry.name, task.seed), "config_hash": chash, "suite": suite.name, "profile": task.profile,
        "source": entry.name, "method": entry.method, "variant": variant_of(entry), "seed": task.seed,
        "dataset": suite.dataset.name, "dataset_resolved": dataset.resolved, "fallback_reason": dataset.fallback_reason,
        "inner_steps": suite.inner_for(entry).steps, "batch_size": suite.inner_for(entry).batch_size,
        "arm": entry.arm or entry.name, "sweep_value": entry.sweep_value,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch": torch.__version__, "device": "cpu", "threads": torch.get_num_threads(),
        "revision": git_revision(), "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **fields,
    }


def tuned_arm(suite: Suite, entry: SourceEntry, values: dict | None) -> SourceEntry:
    """The arm with its tuning stage's chosen values applied as per-arm overrides (itself when none)."""
    if not values:
        return entry
    from tgbench.tune import arm_with  # (lazy: tune imports this module)

    return arm_with(suite, entry, values)


def final_arms(store: Store, suite: Suite, profile: str, dataset: Dataset, log=print) -> dict[str, dict]:
    """Arm name -> the values its final cells run with: the tuning stage's choices (running or resuming the
    stage first), or nothing for a suite without one."""
    if suite.tuning is None:
        return {e.name: {} for e in suite.sources}
    from tgbench.tune import tune_stage

    log(f"tuning stage: {suite.tuning.trials} TPE trials per arm x {suite.tuning.outer_iterations} outer "
        "iterations each, scored on validation")
    return tune_stage(store, suite, profile, dataset, log)


def variant_of(entry: SourceEntry) -> str:
    parts = [f"{k}={v}" for k, v in sorted(entry.params.items())]
    parts += [f"outer.{k}={v}" for k, v in sorted(entry.outer.items())]
    parts += [f"inner.{k}={v}" for k, v in sorted(entry.inner.items())]
    return ", ".join(parts) or "default"


# ------------------------------------------------------------------------------------------ the suite
@dataclass
class RunOptions:
    profile: str | None = None
    storage: str | None = None
    jobs: int = 1
    seeds: int | None = None
    out: str | None = None
    data_root: str | None = None
    artifacts_dir: str | None = None
    progress: bool = True
    methods_dirs: tuple[str, ...] = ()


def run_suite(suite_path: str, opts: RunOptions, log=print) -> Path:
    """Run every unfinished cell of a suite, then write its report; returns the report directory."""
    profile = opts.profile or default_profile()
    suite = load_suite(suite_path, profile)
    _check_output_locations(opts)  # before any work: a bad --storage/--artifacts must not strand a trained cell
    if suite.kind == "tune":
        from tgbench.tune import run_tune_suite

        return run_tune_suite(suite_path, opts, log)
    if suite.kind == "nas_proxy":  # ground truth + proxies instead of cells: tgbench/nas.py
        from tgbench.nas import run_nas_suite  # (lazy: nas imports this module)
        return run_nas_suite(suite_path, suite, profile, opts, log)
    if suite.kind != "fewstep":
        raise BadInput(f"{suite_path}: kind: 'tgbench run' runs fewstep suites; {suite.kind!r} suites are not "
                       "implemented yet")
    _check_writable_dir(_out_location(opts.out, suite, profile), "--out")  # (created once the input is known good)
    dataset = load_dataset(suite.dataset.name, data_root=opts.data_root, download=suite.dataset.download,
                           fallback=suite.dataset.fallback, seed=0)
    if dataset.fallback_reason:
        log(f"WARNING: {dataset.fallback_reason}\nWARNING: falling back to {dataset.resolved!r}; every result "
            f"records dataset_resolved={dataset.resolved!r}", file=sys.stderr)
    # batch sizes are known to fit only now that the data is loaded: refuse them before the store is touched
    check_data_sizes(suite_path, suite, len(dataset.train), dataset.resolved, profile)
    out_dir = _writable_out_dir(opts.out, suite, profile)
    store = Store(opts.storage, opts.artifacts_dir)
    if store.artifacts_dir != _artifacts_location(opts)[0]:  # (the store chose another default than expected)
        _check_writable_dir(store.artifacts_dir, "--artifacts")
    tuned = final_arms(store, suite, profile, dataset, log)
    study = store.study(study_name(suite, profile))
    seeds = opts.seeds or suite.evaluation.seeds
    hashes = {cell_key(e.name, s): cell_hash(suite, tuned_arm(suite, e, tuned[e.name]), dataset.resolved)
              for e in suite.sources for s in range(seeds)}
    # N workers share the cores: give each its slice so they don't oversubscribe (spinning OpenMP threads
    # fighting over 2 cores slow small convolutions down many times over)
    threads = max(1, (os.cpu_count() or 1) // opts.jobs) if opts.jobs > 1 else None
    all_tasks = [CellTask(str(suite_path), profile, e.name, s, store.url, opts.data_root, opts.artifacts_dir,
                          opts.progress and opts.jobs == 1, threads, tuple(opts.methods_dirs), tuned[e.name])
                 for e in suite.sources for s in range(seeds)]

    failures: dict[str, str] = {}  # cells that raised in this run: not retried until the next one

    def unfinished() -> tuple[list[CellTask], list[CellTask]]:
        """(cells to run here, cells other live workers are running) among those not done yet."""
        done, busy = store.done_cells(study), store.busy_cells(study)
        todo = [t for t in all_tasks if (cell_key(t.source, t.seed), hashes[cell_key(t.source, t.seed)]) not in done
                and cell_key(t.source, t.seed) not in failures]
        held = [t for t in todo if (cell_key(t.source, t.seed), hashes[cell_key(t.source, t.seed)]) in busy]
        return [t for t in todo if t not in held], held

    tasks, held = unfinished()
    log(f"{suite.name} @ {profile}: {len(hashes)} cells, {len(hashes) - len(tasks) - len(held)} already done, "
        f"{len(held)} running elsewhere, {len(tasks)} to run on {dataset.resolved} ({len(dataset.train)} train "
        f"examples); store {store.url}")
    start, ran, waiting = time.perf_counter(), 0, 0
    while tasks or held:
        if not tasks:  # only other workers' cells are left: wait until they are done, or stale (then run here)
            if len(held) != waiting:
                log(f"waiting for {len(held)} cell(s) that other workers are running", file=sys.stderr)
                waiting = len(held)
            time.sleep(WAIT_SECONDS)
        elif opts.jobs <= 1:
            for task in tqdm(tasks, desc="cells", disable=not opts.progress or len(tasks) < 2, unit="cell"):
                interrupt.check()
                try:
                    ran += run_cell(task) is not None
                except CELL_FAILURES as exc:
                    _note_failure(failures, task, exc, log)
        else:
            ran += run_in_workers(tasks, opts.jobs, opts.progress, lambda t, e: _note_failure(failures, t, e, log))
        tasks, held = unfinished()
    log(f"ran {ran} cells in {time.perf_counter() - start:.0f} s")
    build_report(suite, profile, store, out_dir, {k: {h} for k, h in hashes.items()}, command=_command_line())
    log(f"report: {out_dir / 'report.md'}")
    if failures:
        raise CellsFailed(failures)
    return out_dir


# What one cell may raise without stopping the suite: a plug-in's bug, a plug-in calling sys.exit, an environment
# failure. The cell is marked failed in the store (``_run_claimed_cell``) and the others run. Bad input and
# Ctrl-C/SIGTERM still stop the run.
CELL_FAILURES = (Exception, SystemExit)


def _note_failure(failures: dict[str, str], task: CellTask, exc: BaseException, log) -> None:
    if isinstance(exc, BadInput):
        raise exc
    key = cell_key(task.source, task.seed)
    failures[key] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    log(f"tgbench: cell {key} failed: {failures[key]}; the other cells go on", file=sys.stderr)


STOP_GRACE_SECONDS = 60  # how long a stopped --jobs run waits for its workers to mark their cells failed


def run_in_workers(tasks: list[CellTask], jobs: int, progress: bool, on_failure) -> int:
    """Run ``tasks`` in ``jobs`` worker processes (a fresh one per cell); returns how many cells ran here.

    Stop means stop: on Ctrl-C or SIGTERM (to the parent alone, or to the whole process group) the queued cells
    are cancelled, every running worker gets SIGTERM — its own handler marks its cell failed, as a single
    process does — and the interrupt is raised again once they have exited (``STOP_GRACE_SECONDS`` at most).
    A cell that raised anything else is handed to ``on_failure(task, exception)`` and the others go on."""
    pool = ProcessPoolExecutor(max_workers=jobs, max_tasks_per_child=1)
    ran = 0
    try:
        futures = {pool.submit(run_cell, task): task for task in tasks}
        for future in tqdm(as_completed(futures), total=len(futures), desc="cells", disable=not progress):
            try:
                ran += future.result() is not None
            except CELL_FAILURES as exc:
                on_failure(futures[future], exc)
            interrupt.check()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        workers = multiprocessing.active_children()
        for worker in workers:
            worker.terminate()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for worker in workers:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
        raise
    pool.shutdown()
    return ran


def _writable_out_dir(out: str | None, suite: Suite, profile: str) -> Path:
    """The report directory, created, after a write test (``BadInput`` naming ``--out`` if it fails)."""
    out_dir = _out_location(out, suite, profile)
    _check_writable_dir(out_dir, "--out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _probe_write(out_dir)
    except OSError as exc:
        raise BadInput(f"--out: cannot write to {out_dir}: {exc.strerror or exc}") from None
    return out_dir


def _out_location(out: str | None, suite: Suite, profile: str) -> Path:
    return Path(out) if out else Path("results") / suite.name / profile


def _probe_write(folder: Path) -> None:
    """Create and remove a uniquely named file in ``folder`` (workers sharing a folder never race on it)."""
    fd, probe = tempfile.mkstemp(prefix=".tgbench-write-test-", dir=folder)
    os.close(fd)
    os.unlink(probe)


def _check_writable_dir(folder: Path, flag: str) -> None:
    """``BadInput`` naming ``flag`` unless ``folder`` is a directory this process can write, or could be
    created as one. Creates nothing that is not there: the first existing ancestor must be a writable
    directory; an existing ``folder`` gets a write test."""
    folder = Path(folder)
    existing = folder
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if existing == folder and folder.is_dir():
        try:
            _probe_write(folder)
        except OSError as exc:
            raise BadInput(f"{flag}: cannot write to {folder}: {exc.strerror or exc}") from None
    elif existing == folder:
        raise BadInput(f"{flag}: cannot write to {folder}: it exists and is not a directory")
    elif not existing.is_dir():
        raise BadInput(f"{flag}: cannot write to {folder} (cannot create it: {existing} is not a directory)")
    elif not os.access(existing, os.W_OK | os.X_OK):
        raise BadInput(f"{flag}: cannot write to {folder} (cannot create it: {existing} is not writable)")


def _artifacts_location(opts: RunOptions) -> tuple[Path, str]:
    """Where ``Store(opts.storage, opts.artifacts_dir)`` keeps teacher artifacts (the same rule as
    ``tgbench.store.Store``), and the flag or variable that chose it."""
    if opts.artifacts_dir:
        return Path(opts.artifacts_dir), "--artifacts"
    if os.environ.get("TGBENCH_ARTIFACTS"):
        return Path(os.environ["TGBENCH_ARTIFACTS"]), "$TGBENCH_ARTIFACTS"
    url = resolve_url(opts.storage)
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).parent / "artifacts", "--artifacts (default: next to the store)"
    return Path("results") / "artifacts", "--artifacts (default)"


def _check_output_locations(opts: RunOptions) -> None:
    """Before any work starts: the SQLite store's file and the teacher artifact directory must be writable or
    creatable (the report directory is checked by ``_writable_out_dir``). A cell that trains and then cannot
    save its teacher would be lost, its claim left running. Nothing is created here."""
    db = sqlite_path(resolve_url(opts.storage))
    if db is not None:
        if db.is_dir():
            raise BadInput(f"--storage: cannot use {db}: it is a directory, not an SQLite file")
        if db.exists() and not os.access(db, os.R_OK | os.W_OK):
            raise BadInput(f"--storage: cannot write to {db}: the file is read-only")
        _check_writable_dir(db.parent, "--storage")
    artifacts, flag = _artifacts_location(opts)
    _check_writable_dir(artifacts, flag)


def _command_line() -> str:
    args = [Path(sys.argv[0]).name] + sys.argv[1:]
    return " ".join(args)


# ------------------------------------------------------------------------------------------ the report
def report_frames(records: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(summary, curves, steps) DataFrames from store records (see tgbench.report.ReportInputs)."""
    summary_cols = ["source", "method", "variant", "seed", "status", "dataset_resolved", "test_acc_final",
                    "val_acc_final", "meta_train_seconds", "outer_iterations", "peak_rss_mb", "revision",
                    "arm", "sweep_value"]
    summary = pd.DataFrame([{c: r.get(c) for c in summary_cols} for r in records], columns=summary_cols)
    curves = pd.DataFrame([{"source": r["source"], "seed": r["seed"], **point}
                           for r in records for point in r.get("curve", [])],
                          columns=["source", "seed", "outer_iter", "val_acc", "test_acc", "val_loss", "meta_loss"])
    steps = pd.DataFrame([{"source": r["source"], "seed": r["seed"], "inner_step": i, "test_acc": te, "val_acc": va}
                          for r in records if r.get("steps_test_acc")
                          for i, (te, va) in enumerate(zip(r["steps_test_acc"], r["steps_val_acc"]))],
                         columns=["source", "seed", "inner_step", "test_acc", "val_acc"])
    return (summary.sort_values(["source", "seed"]).reset_index(drop=True),
            curves.sort_values(["source", "seed", "outer_iter"]).reset_index(drop=True) if len(curves) else curves,
            steps.sort_values(["source", "seed", "inner_step"]).reset_index(drop=True) if len(steps) else steps)


def build_report(suite: Suite, profile: str, store: Store, out_dir: Path, accept: dict[str, set[str]],
                 command: str = "") -> list[Path]:
    """Write the report of the cells in ``accept`` (cell key -> acceptable config hashes) from the store."""
    from tgbench.report import ReportInputs, write_report

    study = store.study(study_name(suite, profile), create=False)
    records = store.records(study, accept)
    if not records:
        raise BadInput(f"no results for suite {suite.name!r} at profile {profile!r} in {store.url}; run it first")
    summary, curves, steps = report_frames(records)
    samples, sample_steps = {}, {}
    for r in sorted(records, key=lambda r: (r["source"], r["seed"])):
        if r.get("samples") and r["source"] not in samples:  # the lowest seed's teacher stands for its source
            samples[r["source"]] = decode_array(r["samples"])
            sample_steps[r["source"]] = r["sample_steps"]
    revisions = sorted({r.get("revision", "unknown") for r in records})
    meta = {"suite": suite.name, "profile": profile, "revision": ", ".join(revisions),
            "command": command or f"tgbench run {suite.name} --profile {profile}", "machine": machine(),
            "torch": torch.__version__, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "inner loop": f"{suite.inner.steps} steps x batch {suite.inner.batch_size}",
            "outer iterations": str(suite.outer.iterations), "store": store.url}
    meta["BN statistics"] = BN_PROTOCOL_NOTE[suite.learner.bn_statistics]
    if suite.sweep is not None:
        meta["sweep"] = suite.sweep.key
    tuning = pd.DataFrame()
    if suite.tuning is not None:
        from tgbench.tune import tuning_frame

        tuning = tuning_frame(store, suite, profile)
        meta["tuning"] = (f"every arm tuned on validation before the final seeds: {suite.tuning.trials} TPE trials "
                          f"({suite.tuning.startup_trials} random start-up) x {suite.tuning.outer_iterations} outer "
                          f"iterations each, objective = validation error of {suite.tuning.learners} fresh learners")
    return write_report(out_dir, ReportInputs(summary, curves, steps, samples, sample_steps, meta,
                                              held_out_frame(records), tuning, phase_frame(records)))


BN_PROTOCOL_NOTE = {
    "lesson": "lesson (learners are scored with the BN means of the last lesson they trained on; no score "
              "depends on which test examples share a batch)",
    "scored_batch": "scored_batch (TRANSDUCTIVE: each scored batch is normalised with its own mean; the protocol "
                    "of tgbench <= 0.1, not comparable with lesson-statistics results)",
}


def phase_frame(records: list[dict]) -> pd.DataFrame:
    """Long ``source, seed, phase, seconds``: where each cell's wall time went (records written before the
    phase split existed contribute nothing)."""
    rows = [{"source": r["source"], "seed": r["seed"], "phase": phase, "seconds": seconds}
            for r in records for phase, seconds in _phases_of(r).items()]
    return pd.DataFrame(rows, columns=["source", "seed", "phase", "seconds"])


def _phases_of(record: dict) -> dict[str, float]:
    if record.get("phase_seconds"):
        return record["phase_seconds"]
    # records written before the split (revision 59f80bf and earlier) timed three phases (final evaluation
    # with the sample grid)
    old = {"meta_training": record.get("meta_train_seconds"), "final_evaluation": record.get("eval_seconds"),
           "held_out": record.get("held_out_seconds")}
    return {k: v for k, v in old.items() if v is not None} if record.get("status") == "complete" else {}


def held_out_frame(records: list[dict]) -> pd.DataFrame:
    """Long ``source, seed, dataset_resolved, name, architecture, test_acc, val_acc`` of the held-out learners
    of complete cells (records written before the held-out table existed contribute nothing)."""
    rows = [{"source": r["source"], "seed": r["seed"], "dataset_resolved": r.get("dataset_resolved"), **score}
            for r in records if r.get("status") == "complete" for score in r.get("held_out") or []]
    return pd.DataFrame(rows, columns=["source", "seed", "dataset_resolved", "name", "architecture", "test_acc",
                                       "val_acc"])


def report_suite(suite_path: str, opts: RunOptions, log=print) -> Path:
    """Rebuild a suite's report from the store alone (no training)."""
    profile = opts.profile or default_profile()
    suite = load_suite(suite_path, profile)
    if suite.kind == "nas_proxy":
        from tgbench.nas import report_nas_suite
        return report_nas_suite(suite_path, suite, profile, opts, log)
    out_dir = _writable_out_dir(opts.out, suite, profile)
    store = Store(opts.storage, opts.artifacts_dir)
    if suite.kind == "tune":
        from tgbench.tune import write_tune_report

        write_tune_report(suite, profile, store, out_dir, command=_command_line())
        log(f"report: {out_dir / 'report.md'}")
        return out_dir
    study = store.study(study_name(suite, profile), create=False)
    seeds = opts.seeds or suite.evaluation.seeds
    # a cell's hash depends on the dataset it resolved to: accept the suite's current config on any of them
    resolved = {r.get("dataset_resolved") for r in store.records(study)}
    accept: dict[str, set[str]] = {}
    for dataset_resolved in resolved:
        tuned = {e.name: {} for e in suite.sources}
        if suite.tuning is not None:
            from tgbench.tune import tuned_values

            tuned = tuned_values(store, suite, profile, dataset_resolved)
            if tuned is None:  # the stage is unfinished for this dataset: its final cells cannot exist yet
                continue
        for e in suite.sources:
            for s in range(seeds):
                accept.setdefault(cell_key(e.name, s), set()).add(
                    cell_hash(suite, tuned_arm(suite, e, tuned[e.name]), dataset_resolved))
    build_report(suite, profile, store, out_dir, accept, command=_command_line())
    log(f"report: {out_dir / 'report.md'}")
    return out_dir

"""One cell of a fewstep suite (an arm at one seed): its meta-training and evaluation, and the claim-run-record
cycle that writes it to the store under its config hash (``tgbench.identity.cell_hash``). Below every suite kind:
the fewstep runner, the NAS proxy suite's teachers and the tuning stage all meta-train through :func:`meta_train`."""
from __future__ import annotations

import base64
import datetime as dt
import io
import resource
import sys
import time
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
from tgbench.suite.loading import load_suite
from tgbench.suite.schema import SourceEntry, Suite
from tgbench.data import Dataset, load_dataset
from tgbench.engine import MetaTrainer
from tgbench.errors import Diverged
from tgbench.identity import EVAL_SEED_OFFSET, cell_hash, cell_inputs, protocol_of
from tgbench.nn import LearnerSpec
from tgbench.provenance import git_revision, reproducibility
from tgbench.records import FewstepCell, Status, cell_key
from tgbench.registry import load_plugin_dir
from tgbench.resume import SavedState
from tgbench.source import Teacher
from tgbench.store import Store
from tgbench.trackers import Tracker, Trackers, final_metrics, open_trackers


SAMPLE_ROWS = 6        # rows of the generated-samples figure, evenly spaced over the inner steps


def study_name(suite: Suite, profile: str) -> str:
    return f"{suite.name}@{profile}"


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
    device: str = "cpu"          # where this cell computes (``tgbench.device``; a --jobs worker gets its own GPU)
    tf32: bool = False           # TF32 matmul/conv on CUDA (changes the numbers: recorded)
    loggers: tuple[str, ...] = ()   # --log trackers (tgbench.trackers), writing under log_dir
    log_dir: str | None = None
    # the suite as the run resolved it (Suite.model_dump, --set overrides applied): a suite file edited while the
    # run goes on cannot change the cells it planned (None: read suite_path at this profile with ``overrides``)
    resolved_suite: dict | None = None
    overrides: tuple[str, ...] = ()   # the run's --set KEY=VALUE


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

    def check(iteration: int, meta_loss: float | None) -> dict:
        start = time.perf_counter()
        result = trainer.evaluate(dataset.test, dataset.val, specs, ev.eval_learners,
                                  seed=EVAL_SEED_OFFSET + seed, per_step=False).final
        point = {"outer_iter": iteration, "val_acc": result["val_acc"], "test_acc": result["test_acc"],
                 "val_loss": result["val_loss"], "meta_loss": meta_loss}
        curve.append(point)
        tracker.scalar("val_acc", result["val_acc"], iteration)
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
        final = trainer.evaluate(dataset.test, dataset.val, specs, ev.final_learners, seed=EVAL_SEED_OFFSET + seed,
                                 per_step=report_extras)
        phases["final_evaluation"] = time.perf_counter() - start
        record.update({
            "test_acc_final": final.test_acc[-1], "val_acc_final": final.val_acc[-1],
            "test_loss_final": final.test_loss[-1], "val_loss_final": final.val_loss[-1],
            "eval_architectures": [s.describe() for s in specs],
        })
        if report_extras:
            grid, rows = sample_grid(teacher, dataset, seed)
            tracker.images("samples", grid, trainer.iteration)
            phases["samples"] = time.perf_counter() - start - phases["final_evaluation"]
            record.update({
                "steps_test_acc": final.test_acc, "steps_val_acc": final.val_acc,
                "eval_seconds": time.perf_counter() - start,
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
    if task.threads:
        torch.set_num_threads(task.threads)
    for folder in task.methods_dirs:
        load_plugin_dir(folder)
    device = torch.device(task.device)
    devices.prepare(device, task.tf32)
    suite = (load_suite(task.suite_path, task.profile, task.overrides) if task.resolved_suite is None
             else suite_from_dict(task.resolved_suite))
    entry = tuned_arm(suite, next(e for e in suite.sources if e.name == task.source), task.tuned)
    dataset = load_dataset(suite.dataset.name, data_root=task.data_root, download=suite.dataset.download,
                           fallback=suite.dataset.fallback, seed=0)
    dataset = devices.on_device(dataset, device)
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
                      study: optuna.Study, trial: optuna.Trial, chash: str) -> FewstepCell:
    """Meta-train, evaluate, save the teacher and write the record. Whatever stops it on the way (Ctrl-C,
    SIGTERM, a bug, a full disk) marks the cell failed: a claim is never left RUNNING by a live process."""
    cell = cell_key(entry.name, task.seed)
    # kept while the cell is unfinished (a failed cell's rerun resumes from it), removed once its record is written
    saved = SavedState(store.saved_state_path(study, cell, chash), chash, torch.device(task.device), cell)
    try:
        hyperparameters = {"suite": suite.model_dump(mode="json", exclude={"profiles", "sources"}),
                           "arm": entry.model_dump(mode="json"), "seed": task.seed}
        tracker = open_trackers(task.loggers, task.log_dir, suite.name, cell, hyperparameters)
        try:
            teacher, fields = meta_train(suite, entry, dataset, task.seed, progress=task.progress,
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
            fields["meta_train_flops"] = meta_train_flops(suite, entry, dataset.problem, task.seed,
                                                          fields["outer_iterations"])
            fields["phase_seconds"]["flop_counting"] = time.perf_counter() - start
        record = _cell_record(task, suite, entry, dataset, chash, fields)
        if record.status == Status.COMPLETE:
            start = time.perf_counter()
            record.teacher_artifact = store.save_teacher(study, trial, {
                "method": entry.method, "params": entry.params,
                "state_dict": {k: v.cpu() for k, v in teacher.state_dict().items()},  # loads on any device
                "suite": suite.model_dump(mode="json"), "dataset_resolved": dataset.resolved, "seed": task.seed,
                "image_shape": dataset.image_shape, "num_classes": dataset.num_classes})
            record.phase_seconds["teacher_save"] = time.perf_counter() - start
        interrupt.check()  # never write a cell as complete after a Ctrl-C that Python dropped
        store.finish(study, trial, record)
        saved.remove()  # complete or diverged: nothing is left to resume
    except BaseException as exc:  # Ctrl-C, SIGTERM, a bug, a full disk: the cell is marked failed
        try:
            store.finish(study, trial, FewstepCell(cell=cell, config_hash=chash, status=Status.FAILED,
                                                   error=f"{type(exc).__name__}: {exc}"))
        except optuna.exceptions.UpdateFinishedTrialError:  # it had been closed just before the signal came
            pass
        raise
    return record


def _cell_record(task: CellTask, suite: Suite, entry: SourceEntry, dataset: Dataset, chash: str,
                 fields: dict) -> FewstepCell:
    return FewstepCell(**{
        "cell": cell_key(entry.name, task.seed), "config_hash": chash, "suite": suite.name, "profile": task.profile,
        "source": entry.name, "method": entry.method, "variant": variant_of(entry), "seed": task.seed,
        "dataset": suite.dataset.name, "dataset_resolved": dataset.resolved, "fallback_reason": dataset.fallback_reason,
        "inner_steps": suite.inner_for(entry).steps, "batch_size": suite.inner_for(entry).batch_size,
        "arm": entry.arm or entry.name, "sweep_value": entry.sweep_value,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch": torch.__version__, **devices.facts(torch.device(task.device)), "threads": torch.get_num_threads(),
        "revision": git_revision(), "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **reproducibility(), **fields,
    })


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

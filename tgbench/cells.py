"""One cell of a fewstep suite (an arm at one seed): its config hash, its meta-training and evaluation, and the
claim-run-record cycle that writes it to the store. Below every suite kind: the fewstep runner, the NAS proxy
suite's teachers and the tuning stage all meta-train through :func:`meta_train`."""
from __future__ import annotations

import base64
import datetime as dt
import io
import resource
import sys
import time
from dataclasses import dataclass

import numpy as np
import optuna
import torch
from tqdm import tqdm

from tgbench import device as devices
from tgbench import interrupt
from tgbench.builders import build_trainer
from tgbench.compute import meta_train_flops, protocol_of
from tgbench.config import (HASHED_WHEN_SET, SamplerSettings, SourceEntry, Suite, arm_with, load_suite,
                            suite_from_dict)
from tgbench.data import Dataset, load_dataset
from tgbench.engine import MetaTrainer
from tgbench.errors import Diverged
from tgbench.nn import LearnerSpec
from tgbench.provenance import git_revision, reproducibility
from tgbench.records import FewstepCell, Status, cell_key
from tgbench.registry import load_plugin_dir, suite_kinds
from tgbench.source import Teacher
from tgbench.store import Store, config_hash
from tgbench.trackers import Tracker, Trackers, open_trackers


SAMPLE_ROWS = 6        # rows of the generated-samples figure, evenly spaced over the inner steps


EVAL_SEED_OFFSET = 10_000  # evaluation learners use their own random stream, never the meta-training one


def study_name(suite: Suite, profile: str) -> str:
    return f"{suite.name}@{profile}"


def cell_hash(suite: Suite, entry: SourceEntry, dataset_resolved: str) -> str:
    """What makes two runs of a cell the same experiment: everything but the seed count and the other arms."""
    # a kind's own section (tune:, nas:) is hashed by the kind with what it runs, not into every cell
    kind_section = suite_kinds.get(suite.kind).section
    protocol = suite.model_dump(mode="json", exclude={"profiles", "sources", "description", kind_section})
    protocol["evaluation"].pop("seeds")
    protocol["evaluation"].pop("count_flops", None)  # (what the cell measures, not what it computes)
    protocol["outer"].pop("save_every", None)  # (how often the run is saved, not what it computes)
    for section, key, default in HASHED_WHEN_SET:  # issue 24's settings count only when set (old hashes stay)
        protocol[section] = {k: v for k, v in protocol[section].items() if (k, v) != (key, default)}
    if protocol.get("tuning"):  # the sampler's settings count once they differ from every earlier study's
        sampler = protocol["tuning"].pop("sampler")
        if sampler != SamplerSettings().model_dump(mode="json"):
            protocol["tuning"]["sampler"] = sampler
    # settings added after results were stored must not change old cells' hashes while left unset
    protocol = {k: v for k, v in protocol.items() if v is not None}
    if protocol["learner"]["bn_statistics"] == "scored_batch":  # the protocol before the option existed
        protocol["learner"].pop("bn_statistics")
    if protocol["evaluation"].get("held_out") is None:  # the default held-out set is versioned with the code
        protocol["evaluation"].pop("held_out", None)
    source = entry.model_dump(mode="json")
    source["outer"].pop("save_every", None)
    for key, unset in (("inner", {}), ("learner", {}), ("tune_space", None), ("arm", None), ("sweep_value", None)):
        if source.get(key) == unset:
            source.pop(key)
    return config_hash({"protocol": protocol, "source": source, "data": dataset_resolved})


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


def meta_train(suite: Suite, entry: SourceEntry, dataset: Dataset, seed: int, progress: bool = True,
               on_eval=None, tracker: Tracker | None = None, report_extras: bool = True) -> tuple[Teacher, dict]:
    """Meta-train one teacher and evaluate it; returns (teacher, record fields: those of a ``FewstepCell`` that
    meta-training and evaluation make, ``status`` a ``Status``). Diverged runs are recorded.
    ``tracker`` (``tgbench.trackers``) is shown the meta-loss, the checks and the sample grid as they happen.

    ``report_extras=False`` skips what only a fewstep cell's report shows — the final evaluation's per-step
    curve (its endpoints are the same numbers either way: scoring draws no randomness), the sample grid and the
    held-out architectures — for callers that keep only the endpoints (a tune trial: they were ~45 % of its
    time)."""
    tracker = tracker or Trackers([])
    trainer = build_trainer(suite, entry, dataset, seed)
    teacher, outer = trainer.teacher, trainer.outer
    specs = suite.evaluation.learner_specs(suite.learner, teacher.source.learner_weight_norm)
    ev = suite.evaluation
    curve, status, error = [], Status.COMPLETE, None
    phases = {"checks": 0.0}  # wall seconds per phase of the cell (the report's "Where the time went")

    def check(iteration: int, meta_loss: float | None) -> dict:
        start = time.perf_counter()
        result = trainer.evaluate(dataset.test, dataset.val, specs, ev.eval_learners,
                                  seed=EVAL_SEED_OFFSET + seed, per_step=False).final
        point = {"outer_iter": iteration, "val_acc": result["val_acc"], "test_acc": result["test_acc"],
                 "val_loss": result["val_loss"], "meta_loss": meta_loss}
        curve.append(point)
        tracker.scalar("val_acc", result["val_acc"], iteration)
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
            tracker.scalar("meta_loss", stats.meta_loss, it)
            bar.update(1)
            if it % ev.eval_every == 0 or it == outer.iterations:
                point = check(it, stats.meta_loss)
                bar.set_postfix(val_acc=f"{point['val_acc']:.3f}", meta_loss=f"{stats.meta_loss:.3f}")
    except Diverged as exc:
        status, error = Status.DIVERGED, str(exc)
    finally:
        bar.close()

    record = {"status": status, "error": error, "meta_train_seconds": train_seconds,
              "outer_iterations": trainer.iteration, "curve": curve, "schedule": teacher.hyper.schedule()}
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
    try:
        tracker = open_trackers(task.loggers, task.log_dir, suite.name, cell_key(entry.name, task.seed),
                                entry.model_dump(mode="json"))
        try:
            teacher, fields = meta_train(suite, entry, dataset, task.seed, progress=task.progress, tracker=tracker)
        finally:
            tracker.close()
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
    except BaseException as exc:  # Ctrl-C, SIGTERM, a bug, a full disk: the cell is marked failed
        try:
            store.finish(study, trial, FewstepCell(cell=cell_key(entry.name, task.seed), config_hash=chash,
                                                   status=Status.FAILED, error=f"{type(exc).__name__}: {exc}"))
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

"""The ``fewstep`` suite kind: every arm (source entry) meta-trained for ``evaluation.seeds`` seeds, each cell
then scored by fresh learners on its teacher's lessons, one report per suite.

``run_fewstep`` runs the tuning stage when the suite has one (``tgbench.tuning``), then every unfinished cell
(``tgbench.cells``): cells already finished in the store under the same config hash are skipped (resume); with
``--jobs N`` cells run in worker processes (``tgbench.cells.run_in_workers``: one fresh process per cell, so
each record's peak memory is its own), and so do the tuning stage's arms before them (one study per worker process
at a time: ``tgbench.tuning.tune_arm_task``). The report is rebuilt from the store at the end (``build_report``).
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from tgbench import device as devices
from tgbench import interrupt
from tgbench.ceiling import ceiling_records, ceiling_schedule, describe_schedule, ensure_ceiling
from tgbench.cells import (CELL_FAILURES, CellTask, cell_task, decode_array, note_failure, run_cell,
                           run_in_workers, study_name, tuned_arm)
from tgbench.suite.checks import check_data_sizes
from tgbench.suite.schema import Suite
from tgbench.errors import BadInput, CellsFailed
from tgbench.fit import check_fit
from tgbench.identity import cell_hash
from tgbench.kinds import RunContext
from tgbench.locations import check_writable_dir, out_location
from tgbench.provenance import report_provenance
from tgbench.records import FewstepCell, Status, cell_key
from tgbench.kinds.fewstep.report import ReportInputs, write_report
from tgbench.pool import run_each_in_workers
from tgbench.results import results_document, write_results
from tgbench.store import Store
from tgbench.data import Dataset
from tgbench.tuning import (ArmTask, describe_stage, stage_spec, tune_arm_task, tune_stage, tuned_values,
                             tuning_frame)
from tgbench.worker import WorkerEnv

WAIT_SECONDS = 5       # how often a worker with nothing left to claim looks at the cells other workers run


def final_arms(store: Store, suite: Suite, profile: str, dataset: Dataset, log=print,
               tune_arms=None) -> dict[str, dict]:
    """Arm name -> the values its final cells run with: the tuning stage's choices (running or resuming the
    stage first, shared with any other process on the store; ``tune_arms``: how this process runs the arms it
    may take, see ``tune_stage``), or nothing for a suite without one."""
    if suite.tuning is None:
        return {e.name: {} for e in suite.sources}
    log(f"tuning stage: {describe_stage(suite.tuning)}")
    return tune_stage(store, suite, profile, dataset, log, tune_arms)


def stage_workers(ctx: RunContext, dataset: Dataset, env: WorkerEnv, slots: list[str]):
    """How a ``--jobs N`` run tunes the arms it may take: each in a worker process of its own (N at once, one
    study each, on a worker slot's device, in ``env``), as the final cells run; None without ``--jobs`` (one arm
    after another in this process). An arm whose tuning raises stops the run, as it does without ``--jobs`` (its
    final cells could not run)."""
    if ctx.opts.jobs <= 1:
        return None
    resolved = ctx.suite.model_dump(mode="json")

    def stop(task: ArmTask, exc: BaseException) -> None:
        raise exc

    def tune_in_workers(entries) -> None:
        tasks = [ArmTask(resolved_suite=resolved, profile=ctx.profile, arm=e.name,
                         config_hash=stage_spec(ctx.suite, ctx.profile, e, dataset.resolved).config_hash, env=env)
                 for e in entries]
        run_each_in_workers(tune_arm_task, tasks, slots, ctx.opts.progress, stop, desc="tuning arms")
    return tune_in_workers


def run_fewstep(ctx: RunContext) -> Path:
    """Run every unfinished cell of a fewstep suite (after its tuning stage, if it has one), then write its
    report."""
    suite_path, suite, profile, opts, log = ctx.suite_path, ctx.suite, ctx.profile, ctx.opts, ctx.log
    check_writable_dir(out_location(opts.out, suite, profile), "--out")  # (created once the input is known good)
    dataset = ctx.dataset()
    # batch sizes are known to fit only now that the data is loaded: refuse them before the store is touched
    check_data_sizes(suite_path, suite, len(dataset.train), dataset.resolved, profile)
    check_fit(suite_path, suite, dataset.problem, len(dataset.train), ctx.resolved_device, profile)  # lrs, memory
    out_dir = ctx.out_dir()
    store = ctx.store()
    # N workers share the cores: give each its slice so they don't oversubscribe (spinning OpenMP threads
    # fighting over 2 cores slow small convolutions down many times over)
    threads = max(1, (os.cpu_count() or 1) // opts.jobs) if opts.jobs > 1 else None
    # --jobs on a multi-GPU machine: each worker slot has its own GPU, round-robin over the visible ones
    slots = [str(d) for d in devices.worker_devices(ctx.resolved_device, opts.device, opts.jobs)]
    arm_env = ctx.worker_env(store, progress=False, threads=threads)   # (a tuning arm shows no bar of its own)
    tuned = final_arms(store, suite, profile, dataset, log, stage_workers(ctx, dataset, arm_env, slots))
    study = store.study(study_name(suite, profile))
    seeds = opts.seeds or suite.evaluation.seeds
    hashes = {cell_key(e.name, s): cell_hash(suite, tuned_arm(suite, e, tuned[e.name]), dataset.resolved)
              for e in suite.sources for s in range(seeds)}
    resolved = suite.model_dump(mode="json")  # every cell runs this suite, whatever happens to its file meanwhile
    env = ctx.worker_env(store, progress=opts.progress and opts.jobs == 1, threads=threads, log_dir=str(out_dir))
    all_tasks = [cell_task(suite, profile, e.name, s, env, tuned=tuned[e.name], resolved=resolved)
                 for e in suite.sources for s in range(seeds)]

    failures: dict[str, str] = {}  # cells that raised in this run: not retried until the next one

    def unfinished() -> tuple[list[CellTask], list[CellTask]]:
        """(cells to run here, cells other live workers are running) among those not done yet."""
        done, busy = store.done_cells(study), store.busy_cells(study)
        todo = [(key, t) for t in all_tasks if (key := cell_key(t.spec.arm, t.spec.seed), hashes[key]) not in done
                and key not in failures]
        return ([t for key, t in todo if (key, hashes[key]) not in busy],
                [t for key, t in todo if (key, hashes[key]) in busy])

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
                    note_failure(failures, task, exc, log)
        else:
            ran += run_in_workers(tasks, slots, opts.progress, lambda t, e: note_failure(failures, t, e, log))
        tasks, held = unfinished()
    log(f"ran {ran} cells in {time.perf_counter() - start:.0f} s")
    # the data ceiling of the report's ceiling row: once per (learner, data, schedule), skipped when stored
    ensure_ceiling(store, suite, profile, dataset, log)
    build_report(suite, profile, store, out_dir, {k: {h} for k, h in hashes.items()}, command=ctx.command)
    log(f"report: {out_dir / 'report.md'}")
    if failures:
        raise CellsFailed(failures)
    return out_dir


# ------------------------------------------------------------------------------------------ the report
def report_frames(records: list[FewstepCell]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(summary, curves, steps) DataFrames from store records (see tgbench.kinds.fewstep.report.ReportInputs); the status
    column holds the stored words (``Status`` values)."""
    summary_cols = ["source", "method", "variant", "seed", "status", "dataset_resolved", "test_acc_final",
                    "val_acc_final", "meta_train_seconds", "outer_iterations", "peak_rss_mb", "revision",
                    "arm", "sweep_value"]
    summary = pd.DataFrame([{**{c: getattr(r, c) for c in summary_cols}, "status": r.status.value} for r in records],
                           columns=summary_cols)
    curves = pd.DataFrame([{"source": r.source, "seed": r.seed, **point} for r in records for point in r.curve],
                          columns=["source", "seed", "outer_iter", "val_acc", "test_acc", "val_loss", "meta_loss"])
    steps = pd.DataFrame([{"source": r.source, "seed": r.seed, "inner_step": i, "test_acc": te, "val_acc": va}
                          for r in records if r.steps_test_acc
                          for i, (te, va) in enumerate(zip(r.steps_test_acc, r.steps_val_acc))],
                         columns=["source", "seed", "inner_step", "test_acc", "val_acc"])
    return (summary.sort_values(["source", "seed"]).reset_index(drop=True),
            curves.sort_values(["source", "seed", "outer_iter"]).reset_index(drop=True) if len(curves) else curves,
            steps.sort_values(["source", "seed", "inner_step"]).reset_index(drop=True) if len(steps) else steps)


def build_report(suite: Suite, profile: str, store: Store, out_dir: Path, accept: dict[str, set[str]],
                 command: str = "") -> list[Path]:
    """Write the report of the cells in ``accept`` (cell key -> acceptable config hashes) from the store."""
    study = store.study(study_name(suite, profile), create=False)
    # (a claim some worker holds now has no record yet: the report shows finished and failed cells)
    records = [r for r in store.records(study, accept) if isinstance(r, FewstepCell) and r.status != Status.RUNNING]
    if not records:
        raise BadInput(f"no results for suite {suite.name!r} at profile {profile!r} in {store.url}; run it first")
    summary, curves, steps = report_frames(records)
    samples, sample_steps = {}, {}
    for r in sorted(records, key=lambda r: (r.source, r.seed)):
        if r.samples and r.source not in samples:  # the lowest seed's teacher stands for its source
            samples[r.source] = decode_array(r.samples)
            sample_steps[r.source] = r.sample_steps
    provenance = report_provenance(suite=suite.name, profile=profile, command=command, overrides=suite.overrides,
                                   revisions=[_revision(r) for r in records],
                                   devices=[devices.label(r) for r in records])
    meta = {**provenance.as_meta(),
            "inner loop": f"{suite.inner.steps} steps x batch {suite.inner.batch_size}",
            "outer iterations": str(suite.outer.iterations), "store": store.url,
            "BN statistics": BN_PROTOCOL_NOTE[suite.learner.bn_statistics],
            # the torch threads the cells themselves ran with (the machine line is the report writer's process)
            "threads per cell": ", ".join(sorted({str(r.threads) for r in records if getattr(r, "threads", None)}))
            or "not recorded"}
    if suite.sweep is not None:
        meta["sweep"] = suite.sweep.key
    tuning = pd.DataFrame()
    if suite.tuning is not None:
        tuning = tuning_frame(store, suite, profile)
        meta["tuning"] = f"every arm tuned on validation before the final seeds: {describe_stage(suite.tuning)}"
    written = write_report(out_dir, ReportInputs(
        summary, curves, steps, samples, sample_steps, meta, held_out_frame(records), tuning, phase_frame(records),
        compute=compute_frame(records), diagnostics=diagnostics_frame(records),
        ceiling=ceiling_frame(store, suite, profile, sorted({r.dataset_resolved for r in records
                                                             if r.dataset_resolved is not None}))))
    document = results_document(suite.model_dump(mode="json"), profile, records, meta, provenance.versions)
    return [*written, write_results(out_dir, document)]


BN_PROTOCOL_NOTE = {
    "lesson": "lesson (learners are scored with the BN means of the last lesson they trained on; no score "
              "depends on which test examples share a batch)",
    "scored_batch": "scored_batch (TRANSDUCTIVE: each scored batch is normalised with its own mean; the protocol "
                    "of tgbench <= 0.1, not comparable with lesson-statistics results)",
}


def _revision(record: FewstepCell) -> str:
    return "unknown" if record.revision is None else record.revision


def phase_frame(records: list[FewstepCell]) -> pd.DataFrame:
    """Long ``source, seed, phase, seconds``: where each cell's wall time went (records written before the
    phase split existed contribute nothing)."""
    rows = [{"source": r.source, "seed": r.seed, "phase": phase, "seconds": seconds}
            for r in records for phase, seconds in _phases_of(r).items()]
    return pd.DataFrame(rows, columns=["source", "seed", "phase", "seconds"])


def _phases_of(record: FewstepCell) -> dict[str, float]:
    if record.phase_seconds:
        return record.phase_seconds
    # records written before the split (revision 59f80bf and earlier) timed three phases (final evaluation
    # with the sample grid)
    old = {"meta_training": record.meta_train_seconds, "final_evaluation": record.eval_seconds,
           "held_out": record.held_out_seconds}
    return {k: v for k, v in old.items() if v is not None} if record.status == Status.COMPLETE else {}


def compute_frame(records: list[FewstepCell]) -> pd.DataFrame:
    """Long ``source, seed, meta_train_flops``: each cell's meta-training FLOPs (NaN where the record has none:
    ``evaluation.count_flops`` off, or written before FLOPs were counted)."""
    rows = [{"source": r.source, "seed": r.seed,
             "meta_train_flops": math.nan if r.meta_train_flops is None else float(r.meta_train_flops)}
            for r in records]
    return pd.DataFrame(rows, columns=["source", "seed", "meta_train_flops"])


def diagnostics_frame(records: list[FewstepCell]) -> pd.DataFrame:
    """Long ``source, seed, name, value``: the numbers complete cells' sources reported about themselves
    (``Source.diagnostics``, e.g. dataset distillation's pixel movement); records without them contribute nothing."""
    rows = [{"source": r.source, "seed": r.seed, "name": name, "value": value}
            for r in records if r.status == Status.COMPLETE for name, value in (r.diagnostics or {}).items()]
    return pd.DataFrame(rows, columns=["source", "seed", "name", "value"])


def ceiling_frame(store: Store, suite: Suite, profile: str, datasets: list[str]) -> pd.DataFrame:
    """Long ``dataset_resolved, seed, test_acc, val_acc, best_epoch, epochs_run, seconds, learner, schedule``: the
    stored data-ceiling seeds (``tgbench.ceiling``) of each resolved dataset; empty when none is stored."""
    schedule = describe_schedule(ceiling_schedule(profile))
    rows = [{"dataset_resolved": ds, "seed": r.seed, "test_acc": r.test_acc, "val_acc": r.val_acc,
             "best_epoch": r.best_epoch, "epochs_run": r.epochs_run, "seconds": r.seconds,
             "learner": r.description, "schedule": schedule}
            for ds in datasets for r in ceiling_records(store, suite, profile, ds)]
    return pd.DataFrame(rows, columns=["dataset_resolved", "seed", "test_acc", "val_acc", "best_epoch", "epochs_run",
                                       "seconds", "learner", "schedule"])


def held_out_frame(records: list[FewstepCell]) -> pd.DataFrame:
    """Long ``source, seed, dataset_resolved, name, architecture, test_acc, val_acc`` of the held-out learners
    of complete cells (records written before the held-out table existed contribute nothing)."""
    rows = [{"source": r.source, "seed": r.seed, "dataset_resolved": r.dataset_resolved, **score}
            for r in records if r.status == Status.COMPLETE for score in r.held_out or []]
    return pd.DataFrame(rows, columns=["source", "seed", "dataset_resolved", "name", "architecture", "test_acc",
                                       "val_acc"])


def report_fewstep(ctx: RunContext) -> Path:
    """A fewstep suite's report from the store alone: the cells of the suite's current config (on any dataset
    it resolved to), with the tuning stage's choices read back from its studies. When the store holds cells of
    the suite but none of this configuration (e.g. a run with ``--set``, a report without), the error lists the
    ``--set`` lists the store's cells were run with."""
    suite, profile = ctx.suite, ctx.profile
    out_dir = ctx.out_dir()
    store = ctx.store()
    accept = accepted_hashes(store, suite, profile, ctx.opts.seeds or suite.evaluation.seeds)
    study = store.study(study_name(suite, profile), create=False)
    if not any(r.status != Status.RUNNING for r in store.records(study, accept) if isinstance(r, FewstepCell)):
        raise BadInput(no_cells_hint(store, suite, profile))
    build_report(suite, profile, store, out_dir, accept, command=ctx.command)
    ctx.log(f"report: {out_dir / 'report.md'}")
    return out_dir


def accepted_hashes(store: Store, suite: Suite, profile: str, seeds: int) -> dict[str, set[str]]:
    """Cell key -> the config hashes of the suite's current configuration (its arms, tuned as its tuning stage
    chose, on any dataset the store's cells resolved to) for seeds ``0..seeds-1``: what a report or an export of
    this suite takes from the store."""
    study = store.study(study_name(suite, profile), create=False)
    # a cell's hash depends on the dataset it resolved to: accept the suite's current config on any of them
    resolved = {r.dataset_resolved for r in store.records(study) if isinstance(r, FewstepCell)}
    accept: dict[str, set[str]] = {}
    for dataset_resolved in resolved:
        tuned = {e.name: {} for e in suite.sources}
        if suite.tuning is not None:
            tuned = tuned_values(store, suite, profile, dataset_resolved)
            if tuned is None:  # the stage is unfinished for this dataset: its final cells cannot exist yet
                continue
        for e in suite.sources:
            for s in range(seeds):
                accept.setdefault(cell_key(e.name, s), set()).add(
                    cell_hash(suite, tuned_arm(suite, e, tuned[e.name]), dataset_resolved))
    return accept


def held_override_sets(store: Store, suite: Suite, profile: str, limit: int = 5) -> list[str]:
    """How the store's finished cells of this suite and profile differ from ``suite``, each configuration as the
    ``--set`` list that would select it (``(none)``: the suite as it is now, e.g. cells of other seeds), most
    cells first; at most ``limit``. Read from the suite saved with one teacher of each configuration (a
    configuration without a saved teacher, e.g. only diverged cells, is named by its hash)."""
    from collections import Counter

    by_hash: dict[str, list[FewstepCell]] = {}
    for record in store.records(store.study(study_name(suite, profile), create=False)):
        if isinstance(record, FewstepCell) and record.status in (Status.COMPLETE, Status.DIVERGED):
            by_hash.setdefault(record.config_hash, []).append(record)
    current = _flat(suite.model_dump(mode="json", exclude={"profiles"}))
    counts: Counter[str] = Counter()
    for config_hash, records in by_hash.items():
        artifact = next((r.teacher_artifact for r in records if r.teacher_artifact), None)
        try:
            saved = store.load_teacher(artifact)["suite"] if artifact else None
        except Exception:  # a missing or unreadable artifact: the configuration is still named by its hash
            saved = None
        if saved is None:
            counts[f"(config hash {config_hash})"] += len(records)
            continue
        theirs = _flat({k: v for k, v in saved.items() if k != "profiles"})
        sets = [f"--set {key}={_flow(theirs.get(key))}" for key in sorted(set(theirs) | set(current))
                if theirs.get(key) != current.get(key)]
        counts[" ".join(sets) or "(none)"] += len(records)
    return [sets for sets, _ in counts.most_common(limit)]


def _flat(node, prefix: str = "") -> dict:
    """A suite dump as ``{dotted key: value}``, a source's keys spelt as ``--set`` takes them
    (``sources.<label>.params.x``)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out or {prefix.rstrip("."): {}}
    if isinstance(node, list) and prefix == "sources.":
        out = {}
        for entry in node:
            label = entry.get("label") or entry.get("method") if isinstance(entry, dict) else None
            out.update(_flat(entry, f"sources.{label}."))
        return out
    return {prefix.rstrip("."): node}


def _flow(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()


def no_cells_hint(store: Store, suite: Suite, profile: str) -> str:
    """The one line that says there is nothing of this configuration, and which ``--set`` lists there are."""
    given = " ".join(f"--set {o}" for o in suite.overrides) or "no --set"
    held = held_override_sets(store, suite, profile)
    if not held:
        return f"no results for suite {suite.name!r} at profile {profile!r} in {store.url}; run it first"
    return (f"no results for suite {suite.name!r} at profile {profile!r} with {given} in {store.url}; its cells "
            f"there were run with: {'; '.join(held)} (pass the same --set, or run this configuration first)")


"""NAS proxy-quality suites (``kind: nas_proxy``): how well does each proxy rank architectures?

Reading order: the search space (``enumerate_space``, ``arch_id``, ``scored_architectures``) -> ground truth
(``ensure_ground_truth``: each scored architecture trained on real data, cached in the store) -> teachers
(``ensure_teachers``: the suite's sources meta-trained by ``cells.run_cell``, the same cells as a few-step
suite) -> proxies (``run_proxies``: every registered proxy of the suite scores every architecture, timed) ->
metrics (``analysis.proxy_metrics``: Spearman, top-50 % Spearman, Kendall, top-10 % precision, each with a
bootstrap CI over architectures) -> ``analysis.random_search`` -> the report (``report``). ``run_nas_suite`` /
``report_nas_suite`` are what ``tgbench run`` / ``tgbench report`` dispatch to.

Where things live in the store:

* ground truth: the study ``nas_ground_truth`` shared by every suite and profile, one trial per
  (architecture id, seed), keyed by the *protocol hash* (training schedule + resolved dataset). Any suite that
  asks for the same architecture under the same protocol reuses it: a second run trains nothing.
* teachers and proxy scores: the suite's own study ``<suite>@<profile>``: teacher cells ``<source>|seed=0`` as
  written by ``run_cell``, and one trial per proxy (``proxy:<label>``) holding every architecture's score and
  cost, keyed by a hash of what the scores depend on (so an interrupted run resumes proxy by proxy).
"""
from __future__ import annotations

import itertools
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import Field, PositiveInt, field_validator
from tqdm import tqdm

from tgbench import device as devices
from tgbench import interrupt
from tgbench.suite.by_kind import suite_from_dict
from tgbench.suite.checks import plugin_params
from tgbench.suite.schema import GroundTruthSchedule, LearnerSpace, SourceEntry, Strict, Suite
from tgbench.data import Dataset
from tgbench.errors import BadInput, ConfigError
from tgbench.fit import check_fit
from tgbench.identity import (PROXY_SEED_OFFSET, TEACHER_SEED, arch_id, arch_seed, cell_hash, ground_truth_protocol,
                              proxy_hash)
from tgbench.nn import LearnerSpec
from tgbench.proxies import Proxy, ProxyContext, train_real
from tgbench.registry import proxies
from tgbench.builders import build_teacher
from tgbench.cells import cell_task, run_cell, study_name
from tgbench.kinds import RunContext
from tgbench.provenance import report_provenance
from tgbench.records import GROUND_TRUTH_STUDY, FewstepCell, NasGroundTruth, NasProxyScores, Status, cell_key, proxy_key
from tgbench.kinds.nas_proxy.analysis import architecture_table, metrics_table, search_table
from tgbench.kinds.nas_proxy.report import NasReportInputs, write_report
from tgbench.source import Teacher
from tgbench.store import Store


# ---------------------------------------------------------------------------------------------- search space
# ---------------------------------------------------------------------------------------------- the section
class ProxyEntry(Strict):
    """One proxy of a ``nas_proxy`` suite: a registered proxy (``tgbench list proxies``) and its params."""

    proxy: str
    label: str | None = None                  # unique name of this proxy in tables; default: the proxy name
    params: dict[str, Any] = Field(default_factory=dict)   # validated by the proxy's own Params model

    @property
    def name(self) -> str:
        return self.label or self.proxy


class NasConfig(Strict):
    """The ``nas:`` section of a ``nas_proxy`` suite. The search space is the suite's ``learner`` space (every
    combination of its option lists); ``n_architectures`` of it, drawn with ``scoring_seed``, are scored."""

    n_architectures: PositiveInt = 100
    scoring_seed: int = 0
    target: Literal["test_acc", "val_acc"] = "test_acc"    # the ground-truth accuracy proxies are judged against
    ground_truth: GroundTruthSchedule = Field(default_factory=GroundTruthSchedule)
    proxies: list[ProxyEntry] = Field(min_length=1)
    search_budgets: list[PositiveInt] = Field(default_factory=lambda: [10, 25, 50])
    search_repeats: PositiveInt = 200
    bootstrap_resamples: PositiveInt = 1000

    @field_validator("proxies")
    @classmethod
    def _unique_proxy_labels(cls, proxies: list[ProxyEntry]) -> list[ProxyEntry]:
        names = [p.name for p in proxies]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise ValueError(f"two proxies are named {dup!r}; give one a distinct `label`")
        return proxies


def enumerate_space(space: LearnerSpace) -> list[LearnerSpec]:
    """Every distinct architecture of a learner space: the product of its option lists, sorted by id.

    Canonicalised so that each network appears once: without conv blocks the kernel size means nothing (it is
    set to the first option). Specs with no hidden layer at all (a linear classifier) are left out: there is
    no architecture to search, and activation-based proxies have nothing to look at.
    """
    specs = set()
    for conv, fc, kernel, act in itertools.product(space.conv_channels, space.fc_hidden, space.kernel_size,
                                                   space.activation):
        if not conv and not fc:
            continue
        specs.add(LearnerSpec(tuple(conv), tuple(fc), kernel if conv else space.kernel_size[0], act,
                              space.batch_norm, space.weight_norm, space.bn_statistics, bn_shift=space.bn_shift))
    return sorted(specs, key=arch_id)


def scored_architectures(suite: Suite) -> list[LearnerSpec]:
    """The ``nas.n_architectures`` architectures a suite scores: a seeded sample (``nas.scoring_seed``) of the
    space, independent of the meta-training's architecture sampling."""
    space = enumerate_space(suite.learner)
    return random.Random(suite.nas.scoring_seed).sample(space, suite.nas.n_architectures)


def check_nas(path: Path, suite: Suite, where: str) -> None:
    """Validate a suite's ``nas:`` section against the registry and the suite (called by ``load_suite``)."""
    nas = suite.nas
    size = len(enumerate_space(suite.learner))
    if nas.n_architectures > size:
        raise ConfigError(f"{path}: {where}nas.n_architectures: {nas.n_architectures} exceeds the {size} distinct "
                          "architectures of the learner space")
    if max(nas.search_budgets) > nas.n_architectures:
        raise ConfigError(f"{path}: {where}nas.search_budgets: {max(nas.search_budgets)} exceeds n_architectures "
                          f"({nas.n_architectures})")
    labels = [e.name for e in suite.sources]
    for i, entry in enumerate(nas.proxies):
        key = f"{where}nas.proxies[{i}]"
        cls, params = plugin_params(proxies, entry.proxy, entry.params, path, key, "proxy")
        source = cls.teacher_source(params)
        if source is not None and "/" not in source and source not in labels:
            raise ConfigError(f"{path}: {key}.params.source: no source labelled {source!r}; sources: "
                              f"{', '.join(labels)}")


# ---------------------------------------------------------------------------------------------- ground truth
def truth_frame(store: Store, suite: Suite, dataset_resolved: str, specs: list[LearnerSpec]) -> pd.DataFrame:
    """Stored ground truth of ``specs`` under the suite's protocol: one row per (architecture, seed)."""
    study = store.study(GROUND_TRUTH_STUDY, create=False)
    protocol = ground_truth_protocol(suite, dataset_resolved)
    wanted = {cell_key(arch_id(s), seed): {protocol} for s in specs for seed in range(suite.nas.ground_truth.seeds)}
    records = [r for r in store.records(study, wanted) if r.status == Status.COMPLETE]
    if len(records) != len(wanted):
        raise BadInput(f"ground truth incomplete in {store.url}: {len(records)} of {len(wanted)} (architecture, "
                       "seed) runs stored under this protocol; run the suite first")
    columns = ("arch_id", "seed", "val_acc", "test_acc", "best_epoch", "epochs_run", "seconds", "cpu_seconds")
    return pd.DataFrame([{k: getattr(r, k) for k in columns} for r in records])


def ensure_ground_truth(store: Store, suite: Suite, dataset: Dataset, specs: list[LearnerSpec],
                        progress: bool = True, log=print) -> tuple[pd.DataFrame, int]:
    """Train every (architecture, seed) not yet in the store under this protocol; return (per-seed records,
    number of trainings run now)."""
    study = store.study(GROUND_TRUTH_STUDY)
    protocol = ground_truth_protocol(suite, dataset.resolved)
    seeds = range(suite.nas.ground_truth.seeds)
    done = store.done_cells(study)
    todo = [(s, seed) for s in specs for seed in seeds if (cell_key(arch_id(s), seed), protocol) not in done]
    log(f"ground truth: {len(specs)} architectures x {len(seeds)} seeds, {len(specs) * len(seeds) - len(todo)} "
        f"cached, {len(todo)} to train (protocol {protocol})")
    for spec, seed in tqdm(todo, desc="ground truth", disable=not progress, unit="run", dynamic_ncols=True):
        aid, key = arch_id(spec), cell_key(arch_id(spec), seed)
        trial = store.begin(study, key, protocol, NasGroundTruth)
        start, cpu_start = time.perf_counter(), time.process_time()
        with store.failed_if_raised(study, trial, NasGroundTruth, key, protocol):
            result = train_real(spec, dataset, suite.nas.ground_truth, arch_seed(aid, seed))
            interrupt.check()  # a Ctrl-C Python dropped must not leave this training cached as complete
        store.finish(study, trial, NasGroundTruth(
            cell=key, config_hash=protocol, status=Status.COMPLETE, arch_id=aid, seed=seed,
            description=spec.describe(), spec=spec.as_dict(), dataset_resolved=dataset.resolved, protocol=protocol,
            seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu_start,
            test_acc_final=result["test_acc"], **result, **devices.facts(dataset.train.x.device)))
    return truth_frame(store, suite, dataset.resolved, specs), len(todo)


# ---------------------------------------------------------------------------------------------- teachers
def _teacher_refs(suite: Suite) -> list[str]:
    """Teacher references of the suite's teaching proxies, in order: a source label of this suite (``gtn``), or
    ``<study>/<label>`` for a teacher another suite stored (e.g. ``mnist_fewstep@cpu/gtn``)."""
    refs = []
    for e in suite.nas.proxies:
        cls = proxies.get(e.proxy)
        ref = cls.teacher_source(cls.Params.model_validate(e.params))
        if ref is not None and ref not in refs:
            refs.append(ref)
    return refs


@dataclass(frozen=True)
class Teachers:
    """The teachers a suite's teaching proxies use, by reference (a source label, or ``<study>/<label>``)."""

    by_ref: dict[str, Teacher]
    records: dict[str, FewstepCell]     # reference -> the teacher's store record


def ensure_teachers(ctx: RunContext, dataset: Dataset, store: Store) -> Teachers:
    """Load the teacher of every reference a teaching proxy uses: this suite's sources are meta-trained first
    (with ``cells.run_cell``: resumable like any few-step cell, seed 0), ``<study>/<label>`` references are
    loaded from that study of the same store."""
    suite_path, suite, profile, opts, log = ctx.suite_path, ctx.suite, ctx.profile, ctx.opts, ctx.log
    study = store.study(study_name(suite, profile))
    teachers, records = {}, {}
    for ref in _teacher_refs(suite):
        if "/" in ref:
            teachers[ref], records[ref] = _stored_teacher(suite_path, ref, dataset, store)
            continue
        entry = next(e for e in suite.sources if e.name == ref)
        key, chash = cell_key(entry.name, TEACHER_SEED), cell_hash(suite, entry, dataset.resolved)
        if (key, chash) not in store.done_cells(study):
            log(f"meta-training teacher {entry.name!r} ({suite.outer_for(entry).iterations} outer iterations)")
            run_cell(cell_task(suite, profile, entry.name, TEACHER_SEED, ctx.worker_env(store, opts.progress)))
        record = store.records(study, {key: {chash}})[0]
        if record.status != Status.COMPLETE:
            raise BadInput(f"{suite_path}: sources: teacher {entry.name!r} {record.status} during meta-training "
                           f"({record.error}); its proxies cannot run")
        teachers[ref], records[ref] = _load_teacher(store, record, suite, entry, dataset), record
    return Teachers(teachers, records)


def _load_teacher(store: Store, record: FewstepCell, suite: Suite, entry: SourceEntry, dataset: Dataset) -> Teacher:
    payload = store.load_teacher(record.teacher_artifact)
    teacher = build_teacher(suite, entry, dataset, TEACHER_SEED)
    teacher.load_state_dict(payload["state_dict"])
    return teacher.eval()


def _stored_teacher(suite_path: str, ref: str, dataset: Dataset, store: Store) -> tuple[Teacher, FewstepCell]:
    """The newest complete seed-0 teacher of ``<study>/<label>`` (e.g. one the few-step suite meta-trained)."""
    name, label = ref.rsplit("/", 1)
    where = f"{suite_path}: nas.proxies: source {ref!r}"
    if name not in store.study_names():
        raise BadInput(f"{where}: no study {name!r} in {store.url}; run that suite first")
    found = [r for r in store.records(store.study(name, create=False))
             if isinstance(r, FewstepCell) and r.cell == cell_key(label, TEACHER_SEED) and r.status == Status.COMPLETE
             and r.teacher_artifact]
    if not found:
        raise BadInput(f"{where}: study {name!r} has no complete seed-{TEACHER_SEED} teacher of source {label!r}")
    record = found[0]
    if record.dataset_resolved != dataset.resolved:
        raise BadInput(f"{where}: that teacher was trained on {record.dataset_resolved!r}, this suite resolved "
                       f"{dataset.resolved!r}")
    payload = store.load_teacher(record.teacher_artifact)
    their_suite = suite_from_dict(payload["suite"])
    entry = SourceEntry(method=payload["method"], params=payload["params"], label=label)
    return _load_teacher(store, record, their_suite, entry, dataset), record


# ---------------------------------------------------------------------------------------------- proxies
def run_proxies(ctx: RunContext, dataset: Dataset, store: Store, specs: list[LearnerSpec],
                teachers: Teachers) -> list[NasProxyScores]:
    """Score every architecture with every proxy not yet in the store under the same hash; return the records."""
    suite, progress, log = ctx.suite, ctx.opts.progress, ctx.log
    study = store.study(study_name(suite, ctx.profile))
    ids = [arch_id(s) for s in specs]
    proxy_ctx = ProxyContext(dataset, suite, teachers.by_ref)
    accept = {}
    for entry in suite.nas.proxies:
        cls = proxies.get(entry.proxy)
        params = cls.Params.model_validate(entry.params)
        source = cls.teacher_source(params)
        teacher_record = teachers.records.get(source) if source else None
        key, chash = proxy_key(entry.name), proxy_hash(suite, entry, ids, dataset.resolved,
                                                        teacher_record.config_hash if teacher_record else None)
        accept[key] = {chash}
        if (key, chash) in store.done_cells(study):
            continue
        proxy: Proxy = cls(params, proxy_ctx)
        trial = store.begin(study, key, chash, NasProxyScores)
        scores, seconds, cpu_seconds = {}, {}, {}
        with store.failed_if_raised(study, trial, NasProxyScores, key, chash):
            for spec, aid in tqdm(list(zip(specs, ids)), desc=entry.name, disable=not progress, leave=False,
                                  unit="arch", dynamic_ncols=True):
                interrupt.check()
                start, cpu_start = time.perf_counter(), time.process_time()
                scores[aid] = float(proxy.score(spec, arch_seed(aid, PROXY_SEED_OFFSET + suite.nas.scoring_seed)))
                seconds[aid], cpu_seconds[aid] = time.perf_counter() - start, time.process_time() - cpu_start
        # (the store writes the status last: a kill before it leaves no "done" record without its scores)
        store.finish(study, trial, NasProxyScores(
            cell=key, config_hash=chash, status=Status.COMPLETE, proxy=entry.proxy, label=entry.name,
            dataset_resolved=dataset.resolved, family=cls.family, params=params.model_dump(mode="json"),
            scores=scores, seconds=seconds, cpu_seconds=cpu_seconds, teacher_source=source,
            setup_seconds=_setup_seconds(teacher_record), **devices.facts(dataset.train.x.device)))
        log(f"proxy {entry.name}: {len(specs)} architectures in {sum(seconds.values()):.1f} s")
    records = store.records(study, accept)
    order = [e.name for e in suite.nas.proxies]
    return sorted(records, key=lambda r: order.index(r.label))


def _setup_seconds(teacher_record: FewstepCell | None) -> float:
    """A teaching proxy's one-time cost: its teacher's meta-training (wall s); 0 for a proxy without one."""
    if teacher_record is None or teacher_record.meta_train_seconds is None:
        return 0.0
    return teacher_record.meta_train_seconds


# ---------------------------------------------------------------------------------------------- report
def report_inputs(suite: Suite, archs: pd.DataFrame, truth: pd.DataFrame, records: list[NasProxyScores],
                  meta: dict) -> NasReportInputs:
    """What ``tgbench.kinds.nas_proxy.report`` renders: the architecture and ground-truth frames, every proxy's metrics
    and random search computed from them, and ``meta`` with the compute behind the numbers added."""
    nas = suite.nas
    teachers = {r.teacher_source: r.setup_seconds for r in records if r.teacher_source}
    meta = {**meta, "compute behind these numbers": (
        f"ground truth {truth['cpu_seconds'].sum():.0f} CPU s ({truth['seconds'].sum():.0f} wall s); proxies "
        f"{sum(sum(r.cpu_seconds.values()) for r in records):.0f} CPU s "
        f"({sum(sum(r.seconds.values()) for r in records):.0f} wall s); teacher meta-training "
        f"{sum(teachers.values()):.0f} wall s (however many runs it took to fill the store)")}
    return NasReportInputs(
        architectures=archs, ground_truth=truth,
        metrics=metrics_table(archs, records, nas.target, nas.bootstrap_resamples),
        search=search_table(archs, records, nas.target, nas.search_budgets, nas.search_repeats),
        target=nas.target, meta=meta)


def report_meta(ctx: RunContext, store: Store, dataset_resolved: str, records: list[NasProxyScores]) -> dict:
    """The report's provenance (``tgbench.provenance.report_provenance``: the revision is this checkout's, the
    devices those the proxies scored on) and the NAS protocol's facts."""
    suite = ctx.suite
    provenance = report_provenance(suite=suite.name, profile=ctx.profile, command=ctx.command,
                                   overrides=suite.overrides, devices=[devices.label(r) for r in records])
    return {**provenance.as_meta(), "dataset": dataset_resolved, "store": store.url, "target": suite.nas.target,
            "architectures scored": str(suite.nas.n_architectures),
            "search space size": str(len(enumerate_space(suite.learner))),
            "ground truth": ", ".join(f"{k}={v}" for k, v in suite.nas.ground_truth.model_dump().items()),
            "bootstrap resamples": str(suite.nas.bootstrap_resamples)}


# ---------------------------------------------------------------------------------------------- entry points
def run_nas_suite(ctx: RunContext) -> Path:
    """Ground truth (cached), teachers (cached), proxy scores (cached per proxy), then the report."""
    suite, profile, opts, log = ctx.suite, ctx.profile, ctx.opts, ctx.log
    if opts.jobs > 1:
        log("note: nas_proxy suites run in one process; --jobs is ignored", file=sys.stderr)
    dataset = ctx.dataset()
    # learning rates and the teachers' memory, refused before the report folder or the store is touched
    check_fit(ctx.suite_path, suite, dataset.problem, len(dataset.train), ctx.resolved_device, profile)
    out_dir = ctx.out_dir()
    store = ctx.store()
    specs = scored_architectures(suite)
    start = time.perf_counter()
    truth, trained = ensure_ground_truth(store, suite, dataset, specs, opts.progress, log)
    teachers = ensure_teachers(ctx, dataset, store)
    records = run_proxies(ctx, dataset, store, specs, teachers)
    elapsed = time.perf_counter() - start
    log(f"{suite.name} @ {profile}: {trained} ground-truth trainings run, all work done in {elapsed:.0f} s")
    archs = architecture_table(specs, truth, records)
    meta = {**report_meta(ctx, store, dataset.resolved, records),
            "wall clock of this run": f"{elapsed:.0f} s ({trained} ground-truth trainings run now)"}
    write_report(out_dir, report_inputs(suite, archs, truth, records, meta))
    log(f"report: {out_dir / 'report.md'}")
    return out_dir


def report_nas_suite(ctx: RunContext) -> Path:
    """Rebuild the report from the store alone (no data, no training); exit 2 if anything was never computed."""
    suite_path, suite, profile, log = ctx.suite_path, ctx.suite, ctx.profile, ctx.log
    out_dir = ctx.out_dir()
    store = ctx.store()
    specs = scored_architectures(suite)
    ids = [arch_id(s) for s in specs]
    study = store.study(study_name(suite, profile), create=False)
    stored = {r.label: r for r in store.records(study) if isinstance(r, NasProxyScores)
              and r.status == Status.COMPLETE and list(r.scores) == ids}
    missing = [e.name for e in suite.nas.proxies if e.name not in stored]
    if missing:
        raise BadInput(f"{suite_path}: no stored scores for proxies {', '.join(missing)} at profile {profile!r} in "
                       f"{store.url}; run the suite first")
    records = [stored[e.name] for e in suite.nas.proxies]
    resolved = {r.dataset_resolved for r in records}
    if len(resolved) != 1:
        raise BadInput(f"{suite_path}: stored proxy scores mix datasets {sorted(resolved)}; re-run the suite")
    truth = truth_frame(store, suite, next(iter(resolved)), specs)
    archs = architecture_table(specs, truth, records)
    meta = report_meta(ctx, store, next(iter(resolved)), records)
    write_report(out_dir, report_inputs(suite, archs, truth, records, meta))
    log(f"report: {out_dir / 'report.md'}")
    return out_dir


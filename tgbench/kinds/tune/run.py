"""Tune suites (``kind: tune``): hyperparameter sensitivity of each arm, measured by Optuna's TPE sampler.

The GTN paper's Fig. 2 argument: tune GTN with and without weight normalisation by Bayesian optimisation and
box-plot the final validation loss of *every* run made during tuning; the spread is the sensitivity. Here each
arm (source entry) gets its own Optuna study ``<suite>@<profile>/<arm>`` in the experiment store:

* a trial samples ``tune.space`` (dotted keys ``inner.lr``, ``outer.lr``, ``params.noise_dim`` ...), applies the
  values as per-arm overrides and meta-trains one teacher through the one study objective
  (``tgbench.tuning.study_objective`` over ``tgbench.cells.meta_train``, the same meta-step as every suite, and the
  same objective as a fewstep suite's tuning stage, with this kind's :data:`TUNE_SCORING`), meta-training seed =
  trial number;
* objective = validation loss of fresh learners after the last inner step on the final teacher (minimised),
  reported per evaluation so that ``tune.pruning: true`` can prune (off by default: pruning would stop exactly
  the unstable runs whose final loss is being measured);
* a diverged trial (NaN/inf meta-loss, meta-gradient or parameters, or a non-finite final loss) is not an
  error: it completes with value min(last finite validation loss, ``tune.divergence_cap``) and user attribute
  ``status=diverged``, and counts towards ``tune.trials``;
* resume: a study counts its finished (complete or pruned) trials and runs only the rest. A trial left
  ``RUNNING`` by a killed process is marked failed when the arm starts again (one process per tune study) and
  run again with the same values (``tgbench.tuning.run_study``).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from pydantic import Field, PositiveFloat, PositiveInt

from tgbench.suite.checks import check_space
from tgbench.suite.schema import SearchSpace, SourceEntry, StudySettings, Suite
from tgbench.data import Dataset
from tgbench.errors import BadInput
from tgbench.fit import check_fit
from tgbench.identity import tune_hash
from tgbench.kinds import RunContext
from tgbench.provenance import report_provenance
from tgbench.records import Status
from tgbench.kinds.tune.report import TuneReportInputs, write_report
from tgbench.store import Store, trial_record
from tgbench.tuning import (FINISHED, Scoring, StudySpec, TrialPlan, describe_sampler, describe_space, run_study,
                            study_objective)


class TuneConfig(StudySettings):
    """The ``tune:`` section of a tune suite (a ``StudySettings``, as a fewstep suite's tuning stage): an Optuna
    study per arm, TPE over ``space``; objective = final validation loss (minimised)."""

    trials: PositiveInt = 20
    seed: int = 0                        # TPE sampler seed; trial k meta-trains with seed k
    startup_trials: PositiveInt = 10     # random trials before TPE models the space (Optuna's default)
    pruning: bool = False                # off by default: pruning would hide the instability being measured
    divergence_cap: PositiveFloat = 5.0  # a diverged trial scores min(last finite val loss, cap); ln 10 = 2.30
    space: SearchSpace = Field(min_length=1)


def check_tune(path: Path, suite: Suite, where: str) -> None:
    """Every dimension of ``tune.space`` names a setting of every arm, with both ends of its range legal."""
    for i in range(len(suite.sources)):
        check_space(path, suite, i, suite.tune.space, f"{where}tune.space")


def arm_study_name(suite: Suite, profile: str, entry: SourceEntry) -> str:
    return f"{suite.name}@{profile}/{entry.name}"


def objective_value(record: dict, cap: float) -> tuple[float, Status]:
    """(objective, status) of what ``meta_train`` returned: final validation loss, or for a diverged run its last
    finite validation loss capped at ``cap``."""
    final = record.get("val_loss_final")
    if record["status"] == Status.COMPLETE and final is not None and math.isfinite(final):
        return float(final), Status.COMPLETE
    finite = [p["val_loss"] for p in record.get("curve", []) if p.get("val_loss") is not None
              and math.isfinite(p["val_loss"])]
    return (min(finite[-1], cap) if finite else cap), Status.DIVERGED


def validation_loss(point: dict) -> float | None:
    """What a tune trial reports at each check (for ``tune.pruning``): the validation loss."""
    return point["val_loss"]


def tune_scoring(cap: float) -> Scoring:
    """This kind's objective, a parameter of the one study objective: final validation loss, a diverged run its
    last finite one capped at ``cap`` (``objective_value``); the trial scores test too (for the report only)."""
    return Scoring(checkpoint=validation_loss, final=lambda record: objective_value(record, cap))


def arm_spec(suite: Suite, profile: str, entry: SourceEntry, dataset_resolved: str) -> StudySpec:
    """The arm's study: ``tune.trials`` trials, median pruning of the validation loss when ``tune.pruning``."""
    tune = suite.tune
    return StudySpec(name=arm_study_name(suite, profile, entry),
                     config_hash=tune_hash(suite, entry, dataset_resolved), settings=tune,
                     pruner=optuna.pruners.MedianPruner() if tune.pruning else optuna.pruners.NopPruner())


def make_objective(suite: Suite, entry: SourceEntry, dataset: Dataset, progress: bool, store: Store | None = None):
    """The one study objective (``tgbench.tuning.study_objective``) with this kind's scoring: trial k
    meta-trains the arm at the suite's own horizon with seed k (saving its state in ``store``'s artifacts)."""
    plan = TrialPlan(suite=suite, entry=entry, space=suite.tune.space, scoring=tune_scoring(suite.tune.divergence_cap),
                     progress=progress)
    return study_objective(plan, dataset, store)


def tune_arm(store: Store, suite: Suite, profile: str, entry: SourceEntry, dataset: Dataset, progress: bool,
             log=print) -> optuna.Study:
    """Run the arm's study up to ``tune.trials`` finished trials (resuming what is in the store)."""
    return run_study(store, arm_spec(suite, profile, entry, dataset.resolved),
                     make_objective(suite, entry, dataset, progress, store), log)


def run_tune_suite(ctx: RunContext) -> Path:
    """``tgbench run`` of a tune suite: every arm's study up to ``tune.trials``, then the report."""
    suite, profile, log = ctx.suite, ctx.profile, ctx.log
    if ctx.opts.seeds:
        raise BadInput(f"{ctx.suite_path}: --seeds: tune suites run tune.trials trials per arm, not seeds")
    dataset = ctx.dataset()
    # learning rates and memory, refused before the report folder or the store is touched (as fewstep does)
    check_fit(ctx.suite_path, suite, dataset.problem, len(dataset.train), ctx.resolved_device, profile)
    out_dir = ctx.out_dir()
    store = ctx.store()
    start = time.perf_counter()
    for entry in suite.sources:
        tune_arm(store, suite, profile, entry, dataset, ctx.opts.progress, log)
    log(f"tuned {len(suite.sources)} arms in {time.perf_counter() - start:.0f} s")
    build_report(suite, profile, store, out_dir, command=ctx.command)
    log(f"report: {out_dir / 'report.md'}")
    return out_dir


def report_tune_suite(ctx: RunContext) -> Path:
    """``tgbench report`` of a tune suite: the report from its studies alone."""
    out_dir = ctx.out_dir()
    build_report(ctx.suite, ctx.profile, ctx.store(), out_dir, command=ctx.command)
    ctx.log(f"report: {out_dir / 'report.md'}")
    return out_dir


# ------------------------------------------------------------------------------------------ the report
def trials_frame(store: Store, suite: Suite, profile: str) -> pd.DataFrame:
    """One row per finished trial of every arm: arm, number, status, value, sampled params, timings."""
    rows = []
    for entry in suite.sources:
        try:
            study = optuna.load_study(study_name=arm_study_name(suite, profile, entry), storage=store.storage)
        except KeyError:
            continue
        for t in study.get_trials(deepcopy=False, states=FINISHED):
            record = trial_record(t, study.study_name)   # (a pruned trial's status is its state's)
            rows.append({"arm": entry.name, "trial": t.number, "status": record.status.value, "value": t.value,
                         **{f"param:{k}": v for k, v in t.params.items()},
                         "val_acc_final": record.val_acc_final, "test_acc_final": record.test_acc_final,
                         "meta_train_seconds": record.meta_train_seconds,
                         "dataset_resolved": record.dataset_resolved, "revision": record.revision})
    return pd.DataFrame(rows)


def summary_frame(trials: pd.DataFrame) -> pd.DataFrame:
    """Per arm: trials, diverged, median and IQR of the final loss over all trials (diverged at their recorded
    value), best, and the median over the non-diverged trials only."""
    rows = []
    for arm, g in trials.groupby("arm", sort=False):
        values = g["value"].to_numpy(dtype=float)
        ok = g.loc[g["status"] == Status.COMPLETE.value, "value"].to_numpy(dtype=float)
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        rows.append({"arm": arm, "trials": len(g), "diverged": int((g["status"] == Status.DIVERGED.value).sum()),
                     "pruned": int((g["status"] == Status.PRUNED.value).sum()), "median": median, "q1": q1, "q3": q3,
                     "iqr": q3 - q1, "best": float(values.min()),
                     "median_non_diverged": float(np.median(ok)) if len(ok) else math.nan})
    return pd.DataFrame(rows)


def importances(store: Store, suite: Suite, profile: str) -> pd.DataFrame:
    """Optuna's fANOVA parameter importances per arm (empty for an arm with too few finished trials)."""
    rows = []
    for entry in suite.sources:
        try:
            study = optuna.load_study(study_name=arm_study_name(suite, profile, entry), storage=store.storage)
            result = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        except (KeyError, ValueError, RuntimeError):  # no study, < 2 trials, or no variation
            continue
        rows += [{"arm": entry.name, "param": k, "importance": v} for k, v in result.items()]
    return pd.DataFrame(rows, columns=["arm", "param", "importance"])


def build_report(suite: Suite, profile: str, store: Store, out_dir: Path, command: str = "") -> Path:
    """Compute the report's frames from the arm studies and hand them to ``tgbench.kinds.tune.report``."""
    trials = trials_frame(store, suite, profile)
    if trials.empty:
        raise BadInput(f"no finished tune trials for suite {suite.name!r} at profile {profile!r} in {store.url}")
    tune = suite.tune
    provenance = report_provenance(suite=suite.name, profile=profile, command=command, overrides=suite.overrides,
                                   revisions=[str(r) for r in trials["revision"].dropna()])
    meta = {**provenance.as_meta(),
            "dataset": ", ".join(sorted({str(d) for d in trials["dataset_resolved"].dropna()})),
            "protocol": f"{suite.inner.steps} inner steps x batch {suite.inner.batch_size}, "
                        f"{suite.outer.iterations} outer iterations per trial, {tune.trials} TPE trials per arm "
                        f"({tune.startup_trials} random start-up; {describe_sampler(tune.sampler)}), pruning "
                        f"{'on' if tune.pruning else 'off'}",
            "search space": describe_space(tune.space),
            "store": f"{store.url} (studies `{suite.name}@{profile}/<arm>`; `optuna-dashboard {store.url}`)"}
    inputs = TuneReportInputs(trials, summary_frame(trials), importances(store, suite, profile), tune.divergence_cap,
                              meta)
    write_report(out_dir, inputs)
    return out_dir


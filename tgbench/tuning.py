"""The one study runner of tgbench: Optuna studies in the experiment store, the one trial objective, and a
fewstep suite's tuning stage.

A study is described by a :class:`StudySpec` (what ``config.StudySettings`` says — trials, seed, start-up trials,
sampler, space — plus its name, configuration hash, pruner, first trial and compute budget) and run by
:func:`run_study`; every trial meta-trains through :func:`study_objective`, which calls the one meta-training
loop ``tgbench.cells.meta_train(..., report_extras=False)`` and reports each checkpoint to the trial (pruning).
What a trial's number *is* is the objective's :class:`Scoring` parameter: the tuning stage below scores the
validation error, the ``tune`` suite kind (``tgbench.kinds.tune``) its final validation loss with a divergence cap.

The tuning stage (a fewstep suite's ``tuning:`` section, ``config.TuningStage``) is a study per arm whose best
values feed the final cells: a trial meta-trains with the sampled values (seed ``TUNING_SEED_OFFSET + k``, never
a final cell's seed; the seed streams are in ``tgbench.identity``) on a dataset whose test split *is* the validation split, so no test example is ever scored.
``horizon: short`` trials meta-train a short budget of their own; ``horizon: full`` trials run at the arm's final
horizon, start from the arm's settings as written, are pruned by successive halving on the validation error of
their checkpoints, and stop launching once the arm's budget (``budget_runs`` runs of its horizon) is spent.

The stage is shared by processes the way the final cells are (``tgbench.store``'s claim protocol): each arm's study
is *claimed* before it runs — a RUNNING claim keyed ``tuning/<arm>`` (with the study's configuration hash) in the
stage's own claims study ``<suite>@<profile>/tuning``, kept alive by a heartbeat — so one process at a time runs a
given study, any number of ``tgbench run`` processes (and ``--jobs`` workers, :func:`tune_arm_task`) tune different
arms at once, and a process that finds every unfinished arm held by a live other process waits until those finish
or go stale, then takes them over. Only under a fresh claim are a study's RUNNING trials failed and re-run
(:func:`open_study`): a trial another live process is running is never touched. A claim never becomes *done*:
whether an arm is tuned is its study's own state (:func:`study_done`), so a claim is closed (``failed``, its error
saying it was released) once its worker stops working on the study. Each study is run start to finish by one
process at a time with its own seeds, so the chosen values do not depend on how many processes ran the stage or on
the order they took the arms in.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from tgbench import interrupt, stats
from tgbench.cells import Watch, meta_train
from tgbench.suite.checks import arm_with
from tgbench.suite.schema import SearchDimension, SourceEntry, StudySettings, Suite
from tgbench.data import Dataset
from tgbench.errors import BadInput
from tgbench.identity import TUNING_SEED_OFFSET, stage_hash
from tgbench.provenance import git_revision
from tgbench.records import FewstepCell, Status, TuneTrial
from tgbench.registry import methods
from tgbench.resume import SavedState
from tgbench.store import Store, config_hash, trial_record, write_record
from tgbench.worker import WorkerEnv, set_up_worker

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
AS_WRITTEN = "as_written"   # user attribute of the trial that runs an arm's settings as written (its clipped keys)
RETRY_OF = "retry_of"       # user attribute of a trial that re-runs a killed one: the number it re-runs
RUNG_ATTR_PREFIX = "completed_rung_"   # the system attributes where successive halving keeps the rungs passed
BUDGET_STOP = "stopped: the study's budget ends before its next checkpoint"   # a pruned trial's error, then


def suggest(trial: optuna.Trial, name: str, dim: SearchDimension) -> Any:
    if dim.choices is not None:
        return trial.suggest_categorical(name, dim.choices)
    if dim.integer:
        return trial.suggest_int(name, int(dim.low), int(dim.high), log=dim.log)
    return trial.suggest_float(name, dim.low, dim.high, log=dim.log)


def open_study(store: Store, name: str, chash: str) -> optuna.Study:
    """The study ``name`` in the store, created if new; refused (``BadInput``) when it was run under another
    configuration hash. Trials left RUNNING by a killed run are marked failed; :func:`run_study` runs each of them
    again with the same values. So the caller must hold the study: a tune suite's one process, or the claim of a
    tuning stage's arm (:func:`tune_arm`) — never a process that merely found the study, or it would fail a trial
    another process is running."""
    study = optuna.create_study(study_name=name, storage=store.storage, direction="minimize", load_if_exists=True)
    if study.user_attrs.get("config_hash", chash) != chash:
        raise BadInput(f"study {name!r} in {store.url} was run under a different configuration of this arm; "
                       "keep both by using another --storage, or delete the study (optuna delete-study)")
    study.set_user_attr("config_hash", chash)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        store.storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    return study


# ------------------------------------------------------------------------------------------ the one study
@dataclass(frozen=True)
class StudySpec:
    """One study, all :func:`run_study` needs: ``settings`` (trials, seed, start-up trials, sampler), the
    study's name and configuration hash, its pruner, the values of its first trial (None: sampled), and its
    compute budget in outer iterations summed over its finished trials (None: ``settings.trials`` trials)."""

    name: str
    config_hash: str
    settings: StudySettings
    pruner: optuna.pruners.BasePruner = dataclasses.field(default_factory=optuna.pruners.NopPruner)
    first_trial: dict[str, Any] | None = None
    first_trial_note: list[str] = dataclasses.field(default_factory=list)   # keys clipped into the space
    budget: int | None = None
    min_trial_cost: int = 1   # outer iterations a trial runs before it can first be stopped


def trial_cost(trial: optuna.trial.FrozenTrial) -> int:
    """Outer iterations a finished trial meta-trained (a pruned or diverged trial: what it ran until it stopped)."""
    return int(trial.user_attrs.get("outer_iterations") or 0)


def spent(study: optuna.Study) -> int:
    """Outer iterations the study's finished trials meta-trained. A killed trial counts nothing: it is run again
    (``run_study``), and its re-run counts what it runs."""
    return sum(trial_cost(t) for t in study.get_trials(deepcopy=False, states=FINISHED))


def trial_slot(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The number that names a trial's meta-training (its seed, and where a resumable trial saves its state): its
    own, or for a re-run of a killed trial the number of the trial it re-runs, so the re-run is the same run."""
    return int(trial.user_attrs.get(RETRY_OF, trial.number))


def _rerun_killed(study: optuna.Study) -> None:
    """Enqueue, with the same values, every slot (``trial_slot``) whose latest trial failed: a killed run is
    finished, not replaced by a fresh sample (so no point of the search is drawn and then lost), and continues
    from the state it saved, under its own seed (``study_objective``) — however many times it is killed, its
    re-runs included (a slot whose latest trial is waiting, running or finished needs nothing)."""
    latest: dict[int, optuna.trial.FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False):   # in trial-number order: the last one of a slot stays
        latest[trial_slot(t)] = t
    for slot, t in latest.items():
        if t.state == TrialState.FAIL and t.params:
            attrs = {RETRY_OF: slot, **({AS_WRITTEN: t.user_attrs[AS_WRITTEN]} if AS_WRITTEN in t.user_attrs
                                        else {})}
            study.enqueue_trial(t.params, user_attrs=attrs)


class LostClaim(RuntimeError):
    """This process's claim of a study was failed as stale by another process while it still ran (a long pause):
    the study is that process's now, so this one launches no further trial."""


def run_study(store: Store, spec: StudySpec, objective: Callable[[optuna.Trial], float], log=print,
              still_held: Callable[[], bool] | None = None) -> optuna.Study:
    """Run (or resume) ``spec``'s study: launch trials until ``settings.trials`` have finished or, with a
    budget, until less than ``min_trial_cost`` outer iterations of it are left. Finished trials are kept; killed
    ones run again with their values; a new study's first trial is ``spec.first_trial`` when given.
    ``still_held()`` is asked before each trial (the stage's claim, :func:`tune_arm`): False raises
    :class:`LostClaim`."""
    study = open_study(store, spec.name, spec.config_hash)
    settings = spec.settings
    # a fresh sampler seed per resumption, so a resumed study does not replay its random start-up trials
    study.sampler = optuna.samplers.TPESampler(seed=settings.seed + len(study.trials),
                                               n_startup_trials=settings.startup_trials,
                                               multivariate=settings.sampler.multivariate,
                                               constant_liar=settings.sampler.constant_liar,
                                               n_ei_candidates=settings.sampler.n_ei_candidates)
    study.set_user_attr("sampler", {"name": "TPESampler", "n_startup_trials": settings.startup_trials,
                                    "optuna": optuna.__version__, **settings.sampler.model_dump(mode="json")})
    study.pruner = spec.pruner
    if spec.budget is not None:
        study.set_user_attr("budget_outer_iterations", spec.budget)
    if spec.first_trial is not None and not study.trials:
        study.enqueue_trial(spec.first_trial, user_attrs={AS_WRITTEN: spec.first_trial_note})
    _rerun_killed(study)

    log(study_progress(spec, study))
    while not study_done(spec, study):
        if still_held is not None and not still_held():
            raise LostClaim(f"{study.study_name}: another process took this study over")
        study.optimize(objective, n_trials=1, show_progress_bar=False,
                       callbacks=[lambda s, t: log(f"  trial {t.number}: {trial_record(t, s.study_name).status} "
                                                   f"objective {t.value if t.value is not None else math.nan:.4f} "
                                                   f"after {trial_cost(t)} outer iterations {t.params}")])
    return study


# ------------------------------------------------------------------------------------------ the one objective
@dataclass(frozen=True)
class Scoring:
    """What a trial's number is (a parameter of the one objective, not a second loop): ``checkpoint`` maps a
    curve point of ``meta_train`` to the value reported to the trial (None: nothing to report), ``final`` maps
    ``meta_train``'s record to (objective, status). ``validation_only``: the trial never sees the test split (it
    meta-trains on a dataset whose test split is the validation split, and records no test score)."""

    checkpoint: Callable[[dict], float | None]
    final: Callable[[dict], tuple[float, Status]]
    validation_only: bool = False


@dataclass(frozen=True)
class TrialPlan:
    """How every trial of one study meta-trains: ``suite`` (its evaluation settings are the trial's checks),
    the arm, the space it samples, the seed of trial k (``seed_offset + k``), the scoring, the outer iterations
    of every trial (None: the arm's own), and the study's budget in outer iterations (None: none) with the
    distance between checkpoints, so a trial stops at the last checkpoint the budget pays for."""

    suite: Suite
    entry: SourceEntry
    space: dict[str, SearchDimension]
    scoring: Scoring
    seed_offset: int = 0
    iterations: int | None = None
    budget: int | None = None
    progress: bool = False


def study_objective(plan: TrialPlan, dataset: Dataset, store: Store | None = None) -> Callable[[optuna.Trial], float]:
    """The objective of every tgbench study: sample ``plan.space``, meta-train the arm with those values through
    ``meta_train(report_extras=False)``, report each checkpoint's value to the trial (``trial.should_prune()``
    there: a pruned trial stops), and return ``plan.scoring``'s final value. Every finished trial writes a
    ``TuneTrial`` record (status last): complete, diverged (counted, never dropped) or pruned with the outer
    iterations it ran; a Ctrl-C leaves it failed, saying why.

    With a ``store``, a trial saves its meta-training state every ``outer.save_every`` outer iterations
    (``tgbench.resume``, beside the store's artifacts, named by the study and ``trial_slot``): a killed trial is
    run again with its values and seed by ``run_study`` and continues from its last save, the checkpoints the
    killed run reported replayed to the new trial for the pruner. The state is removed once the trial finished."""
    if plan.scoring.validation_only:  # the test split is never given to the trial, so it cannot be scored
        dataset = dataclasses.replace(dataset, test=dataset.val)
    every = plan.suite.evaluation.eval_every

    def objective(trial: optuna.Trial) -> float:
        values = {key: suggest(trial, key, dim) for key, dim in plan.space.items()}
        arm = arm_with(plan.suite, plan.entry, values)
        if plan.iterations is not None:
            arm = arm.model_copy(update={"outer": {**arm.outer, "iterations": plan.iterations}})
        horizon = plan.suite.outer_for(arm).iterations
        seed = plan.seed_offset + trial_slot(trial)
        left = None if plan.budget is None else plan.budget - spent(trial.study)
        saved = None if store is None else _saved_state(store, trial, values, seed, dataset)
        reported = _replay_killed_run(trial)
        curve: list[dict] = []

        def on_eval(point: dict) -> None:
            curve.append(_kept(point, plan.scoring))
            it = point["outer_iter"]
            value = plan.scoring.checkpoint(point)
            if it > 0 and it not in reported and value is not None and math.isfinite(value):
                trial.report(value, it)
                # (at the last checkpoint the run is done: nothing left to save by stopping it)
                if it < horizon and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at outer iteration {it} of {horizon}")
            if left is not None and it < horizon and min(it + every, horizon) > left:
                raise optuna.TrialPruned(f"{BUDGET_STOP} (outer iteration {it} of {horizon})")

        try:
            _, record = meta_train(plan.suite, arm, dataset, seed=seed, progress=plan.progress,
                                   watch=Watch(on_eval=on_eval), report_extras=False, saved=saved)
        except optuna.TrialPruned as exc:  # Optuna closes the trial PRUNED; its record says how far it ran
            reached = curve[-1]["outer_iter"] if curve else 0
            write_record(trial, TuneTrial(status=Status.PRUNED, error=str(exc), outer_iterations=reached,
                                          curve=curve, **_provenance(dataset)))
            if saved is not None:
                saved.remove()
            raise
        except KeyboardInterrupt:  # Optuna marks the trial FAIL and re-raises; say why, as fewstep cells do
            write_record(trial, TuneTrial(status=Status.FAILED, error="KeyboardInterrupt: "))
            raise
        value, status = plan.scoring.final(record)
        fields = {key: record.get(key) for key in ("val_acc_final", "test_acc_final", "val_loss_final",
                                                   "meta_train_seconds", "outer_iterations", "error")}
        if plan.scoring.validation_only:
            fields["test_acc_final"] = None
        write_record(trial, TuneTrial(**fields, status=status, curve=[_kept(p, plan.scoring) for p in record["curve"]],
                                      **_provenance(dataset)))
        if saved is not None:
            saved.remove()  # (after the record: a kill before it leaves the state to resume)
        return value

    return objective


def _saved_state(store: Store, trial: optuna.Trial, values: dict, seed: int, dataset: Dataset) -> SavedState:
    """Where the trial's meta-training state is saved: named by its study and slot, valid only for the same
    study configuration, values and seed (a re-run with anything else starts from iteration 0)."""
    identity = config_hash({"study": trial.study.user_attrs.get("config_hash"), "values": values, "seed": seed})
    label = f"{trial.study.study_name} trial {trial_slot(trial)}"
    return SavedState(store.saved_state_path(trial.study, f"trial-{trial_slot(trial)}", identity), identity,
                      dataset.train.x.device, label)


def _replay_killed_run(trial: optuna.Trial) -> set[int]:
    """For a re-run of a killed trial: report the checkpoints the killed runs reported (its resumed run
    reproduces them bit for bit, and never calls back for them), and carry the rungs they passed, each with the
    value it was passed at (from the first run of the slot that reached it), so the pruner goes on at the next
    rung as it would have without the kill; returns those outer iterations.

    Why the rungs: Optuna's successive halving keeps a trial's rungs in its system attributes, not in its reported
    values; a re-run without them started again at rung 0 and compared its latest value, at every rung it had
    passed, with its own killed runs' values there (``SlotPruner`` now leaves failed trials out). GTN's
    official-values trial in the settled run was pruned at iteration 1,100 of 2,000 that way: its value at 1,100
    was a little worse than its killed run's at 900. (A kill between a checkpoint's report and its pruning
    decision leaves that rung to the re-run's next checkpoint.)"""
    if RETRY_OF not in trial.user_attrs:
        return set()
    killed = [t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
              if trial_slot(t) == trial_slot(trial)]
    if not killed:
        return set()
    for step, value in sorted(killed[-1].intermediate_values.items()):
        trial.report(value, step)
    rungs: dict[str, float] = {}
    for run in killed:   # in trial-number order: the first run to pass a rung passed it at its checkpoint
        for key, value in run.system_attrs.items():
            if key.startswith(RUNG_ATTR_PREFIX):
                rungs.setdefault(key, value)
    for key, value in rungs.items():
        trial.storage.set_trial_system_attr(trial._trial_id, key, value)
    return set(killed[-1].intermediate_values)


class SlotPruner(optuna.pruners.BasePruner):
    """``pruner`` deciding among the trials that were not killed: a killed trial is run again (``run_study``),
    and its re-run (which carries the rungs it passed, ``_replay_killed_run``) stands for it. Optuna's successive
    halving compares a trial with every trial that recorded a rung, failed ones included, so a slot killed twice
    counted three times and its killed runs competed with its own re-run."""

    def __init__(self, pruner: optuna.pruners.BasePruner) -> None:
        self.pruner = pruner

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return self.pruner.prune(_WithoutKilledTrials(study), trial)


class _WithoutKilledTrials:
    """A study as a pruner sees it, its failed (killed) trials left out; everything else is the study's."""

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    def get_trials(self, deepcopy: bool = True, states=None) -> list[optuna.trial.FrozenTrial]:
        return [t for t in self._study.get_trials(deepcopy=deepcopy, states=states) if t.state != TrialState.FAIL]

    def __getattr__(self, name: str):
        return getattr(self._study, name)


def _kept(point: dict, scoring: Scoring) -> dict:
    """A curve point as a trial records it (a validation-only trial keeps no test column: it scored none)."""
    return {k: v for k, v in point.items() if not (scoring.validation_only and k.startswith("test_"))}


def _provenance(dataset: Dataset) -> dict:
    return {"dataset_resolved": dataset.resolved, "revision": git_revision(), "device": str(dataset.train.x.device),
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


# ------------------------------------------------------------------------ a fewstep suite's tuning stage
def tuning_study_name(suite: Suite, profile: str, entry: SourceEntry) -> str:
    return f"{suite.name}@{profile}/tuning/{entry.name}"


def validation_error(point: dict) -> float | None:
    """The stage's checkpoint value: validation error (1 - accuracy) of the check's fresh learners."""
    acc = point.get("val_acc")
    return None if acc is None else 1.0 - acc


def stage_final(record: dict) -> tuple[float, Status]:
    """The stage's objective: validation error after the last inner step; a diverged run scores 1.0 (the worst
    possible), counted as diverged."""
    acc = record.get("val_acc_final")
    if record["status"] == Status.COMPLETE and acc is not None and math.isfinite(acc):
        return 1.0 - acc, Status.COMPLETE
    return 1.0, Status.DIVERGED


STAGE_SCORING = Scoring(checkpoint=validation_error, final=stage_final, validation_only=True)


def trial_horizon(suite: Suite, entry: SourceEntry) -> int:
    """Outer iterations of one tuning trial of ``entry``: the arm's own at the full horizon, else the stage's
    per-trial budget (the arm's own count if smaller)."""
    own = suite.outer_for(entry).iterations
    return own if suite.tuning.horizon == "full" else min(own, suite.tuning.outer_iterations)


def checkpoint_every(suite: Suite, entry: SourceEntry) -> int:
    """Outer iterations between a trial's checkpoints: at the full horizon the stage's ``eval_every`` (default
    ``evaluation.eval_every``); a short trial is scored once, at its end."""
    stage = suite.tuning
    if stage.horizon != "full":
        return trial_horizon(suite, entry)
    return min(stage.eval_every or suite.evaluation.eval_every, trial_horizon(suite, entry))


def trial_suite(suite: Suite, entry: SourceEntry) -> Suite:
    """The suite a tuning trial meta-trains under: checks every ``checkpoint_every`` outer iterations, each and
    the final score by ``tuning.learners`` fresh learners of the first evaluation architecture."""
    ev = suite.evaluation
    learners = suite.tuning.learners
    evaluation = ev.model_copy(update={"eval_every": checkpoint_every(suite, entry), "eval_learners": learners,
                                       "final_learners": learners,
                                       "architectures": ev.architectures[:1] if ev.architectures else None})
    return suite.model_copy(update={"evaluation": evaluation})


def values_as_written(suite: Suite, entry: SourceEntry, space: dict[str, SearchDimension]) -> tuple[dict, list[str]]:
    """(values, notes): the arm's settings as the suite writes them for every key of ``space`` — its published
    or official defaults, the first trial of a full-horizon study. A value outside its range is clipped to the
    nearest end (the study can only model values inside its space; rounded for an integer dimension); a value
    not among a dimension's choices is left to the sampler. ``notes`` says which keys were clipped or left."""
    settings = {"inner": suite.inner_for(entry), "outer": suite.outer_for(entry),
                "params": methods.get(entry.method).Params.model_validate(entry.params)}
    values, notes = {}, []
    for key, dim in space.items():
        section, _, leaf = key.partition(".")
        value = getattr(settings[section], leaf)
        if dim.choices is not None:
            if value in dim.choices:
                values[key] = value
            else:
                notes.append(f"{key}={value!r} is not among the choices: sampled")
            continue
        inside = min(max(value, dim.low), dim.high)
        inside = int(round(inside)) if dim.integer else float(inside)
        if inside != value:
            notes.append(f"{key}={value!r} clipped to {inside!r}")
        values[key] = inside
    return values, notes


def stage_spec(suite: Suite, profile: str, entry: SourceEntry, dataset_resolved: str) -> StudySpec:
    """The study of ``entry`` in the suite's tuning stage."""
    stage = suite.tuning
    spec = StudySpec(name=tuning_study_name(suite, profile, entry),
                     config_hash=stage_hash(suite, entry, dataset_resolved), settings=stage)
    if stage.horizon != "full":
        return spec
    horizon, every = trial_horizon(suite, entry), checkpoint_every(suite, entry)
    first, notes = values_as_written(suite, entry, stage.space_for(entry))
    pruner = optuna.pruners.NopPruner()
    if stage.pruner is not None and horizon > 1:  # (a one-iteration trial has no checkpoint before its end)
        pruner = SlotPruner(optuna.pruners.SuccessiveHalvingPruner(
            min_resource=stage.pruner.min_resource or every, reduction_factor=stage.pruner.reduction_factor,
            min_early_stopping_rate=stage.pruner.min_early_stopping_rate,
            bootstrap_count=stage.pruner.bootstrap_count))
    # an arm with one outer iteration (nothing meta-learned) is never pruned and a run costs one iteration: it
    # gets `trials` trials, as many as any arm may launch, rather than `budget_runs` of them
    budget = None if horizon == 1 else int(stage.budget_runs * horizon)
    return dataclasses.replace(spec, pruner=pruner, first_trial=first or None, first_trial_note=notes,
                               budget=budget, min_trial_cost=every)


def stage_plan(suite: Suite, entry: SourceEntry, space: dict[str, SearchDimension], budget: int | None) -> TrialPlan:
    return TrialPlan(suite=trial_suite(suite, entry), entry=entry, space=space, scoring=STAGE_SCORING,
                     seed_offset=TUNING_SEED_OFFSET, iterations=trial_horizon(suite, entry), budget=budget)


WAIT_SECONDS = 5   # how often a process whose unfinished arms are all held elsewhere looks at them again
RELEASED = "released: its worker stopped working on the study"   # the error of a claim closed by its worker


def stage_claims_name(suite: Suite, profile: str) -> str:
    """The study holding the stage's claims (one per arm a process is tuning; ``tgbench.store``'s protocol). Not
    the suite's cell study: a claim is no cell, and every reader of cell records (reports, export, teach) would
    have to skip it; not the arm's study either, whose trials the sampler counts."""
    return f"{suite.name}@{profile}/tuning"


def arm_claim_key(entry: SourceEntry) -> str:
    return f"tuning/{entry.name}"


def tune_stage(store: Store, suite: Suite, profile: str, dataset: Dataset, log=print,
               tune_arms: Callable[[list[SourceEntry]], Any] | None = None) -> dict[str, dict]:
    """Run (or resume) every arm's tuning study, sharing the stage with any other process on the store (module
    docstring); returns arm name -> its best values (``{}`` for an arm with nothing to tune).

    Each round takes the arms that are neither finished nor claimed by a live process: ``tune_arms(entries)`` runs
    them (the ``--jobs`` worker processes: ``tgbench.kinds.fewstep``), or, without it, :func:`tune_arm` runs them
    one after another here. When every unfinished arm is held elsewhere the stage waits (``WAIT_SECONDS``) until
    they are finished, or their claims go stale and are taken over here."""
    claims = store.study(stage_claims_name(suite, profile))
    todo, held, done = stage_arms(store, claims, suite, profile, dataset.resolved)
    for spec in done.values():
        log(study_progress(spec, optuna.load_study(study_name=spec.name, storage=store.storage)))
    waiting: list[str] = []
    while todo or held:
        if not todo:  # only arms other processes are tuning: wait until they are done, or stale (then tune here)
            if [e.name for e in held] != waiting:
                waiting = [e.name for e in held]
                log(f"tuning stage: waiting for {len(held)} arm(s) other workers are tuning ({', '.join(waiting)})",
                    file=sys.stderr)
            time.sleep(WAIT_SECONDS)
        elif tune_arms is not None:
            tune_arms(todo)
        else:
            for entry in todo:
                interrupt.check()
                tune_arm(store, suite, profile, entry, dataset, log)
        todo, held, _ = stage_arms(store, claims, suite, profile, dataset.resolved)
    chosen = tuned_values(store, suite, profile, dataset.resolved)
    if chosen is None:  # (every arm's study was finished a moment ago, and no process un-finishes one)
        raise RuntimeError(f"{suite.name}@{profile}: the tuning stage ended with an unfinished study")
    for entry in suite.sources:
        if suite.tuning.space_for(entry):
            best = optuna.load_study(study_name=tuning_study_name(suite, profile, entry), storage=store.storage)
            log(f"  {entry.name}: chose {chosen[entry.name]} (validation error {best.best_value:.4f})")
    return chosen


def stage_arms(store: Store, claims: optuna.Study, suite: Suite, profile: str, dataset_resolved: str) \
        -> tuple[list[SourceEntry], list[SourceEntry], dict[str, StudySpec]]:
    """(arms to tune here, arms a live process holds, finished arm name -> its study spec) among the arms with
    something to tune. An arm whose study was run under another configuration is "to tune": its claimant is
    refused by :func:`open_study`. Stale claims are failed first (``Store.busy_cells``)."""
    busy = store.busy_cells(claims)
    todo, held, done = [], [], {}
    for entry in suite.sources:
        if not suite.tuning.space_for(entry):
            continue
        spec = stage_spec(suite, profile, entry, dataset_resolved)
        if finished_study(store, spec) is not None:
            done[entry.name] = spec
        elif (arm_claim_key(entry), spec.config_hash) in busy:
            held.append(entry)
        else:
            todo.append(entry)
    return todo, held, done


def tune_arm(store: Store, suite: Suite, profile: str, entry: SourceEntry, dataset: Dataset,
             log=print) -> optuna.Study | None:
    """Claim ``entry``'s tuning study and run (or resume) it to its end under the claim's heartbeat; None when a
    live process holds it, or took it over from this one while it was silent (this process then stops at once).
    Whatever stops the study (Ctrl-C, SIGTERM, a bug) releases the claim, so the next run takes the arm over
    without waiting."""
    spec = stage_spec(suite, profile, entry, dataset.resolved)
    claims = store.study(stage_claims_name(suite, profile))
    key = arm_claim_key(entry)
    claim = store.claim(claims, key, spec.config_hash)
    if claim is None:
        return None

    def still_held() -> bool:
        return store.storage.get_trial(claim._trial_id).state == TrialState.RUNNING

    plan = stage_plan(suite, entry, suite.tuning.space_for(entry), spec.budget)
    try:
        with store.heartbeat(claim):
            study = run_study(store, spec, study_objective(plan, dataset, store), log, still_held)
    except BaseException as exc:
        if still_held():
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            _release(store, claims, claim, FewstepCell(cell=key, config_hash=spec.config_hash, status=Status.FAILED,
                                                       error=f"{RELEASED} ({reason})"))
            raise
        if not isinstance(exc, (LostClaim, optuna.exceptions.UpdateFinishedTrialError)):
            raise
        log(f"tgbench: warning: {spec.name}: this worker was silent for longer than {store.grace_period} s and lost "
            "its claim; another worker tunes the arm", file=sys.stderr)
        return None
    _release(store, claims, claim, FewstepCell(cell=key, config_hash=spec.config_hash, status=Status.FAILED,
                                               error=f"{RELEASED} (finished)"))
    return study


def _release(store: Store, claims: optuna.Study, claim: optuna.Trial, record: FewstepCell) -> None:
    """Close a claim (its record, status last, then FAIL); nothing to do when another process failed it first."""
    try:
        store.finish(claims, claim, record)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass


@dataclass(frozen=True)
class ArmTask:
    """Everything a ``--jobs`` worker process needs to tune one arm (top-level and picklable): the suite as the run
    resolved it, its profile, the arm, the study's configuration hash as the run computed it (a worker that
    resolves another — a different dataset, say — refuses rather than tune a study nobody waits for), and where
    it runs (``env``; ``tgbench.pool`` sets its device to a worker slot's)."""

    resolved_suite: dict
    profile: str
    arm: str
    config_hash: str
    env: WorkerEnv


def tune_arm_task(task: ArmTask) -> bool:
    """:func:`tune_arm` in a worker process (top-level): set the worker up (``tgbench.worker.set_up_worker``: the
    plug-ins, the suite, the dataset on the slot's device, the store), then claim and tune the arm; True when this
    process tuned it, False when another held it."""
    with interrupt.handled():  # (a worker process handles Ctrl-C/SIGTERM as `tgbench run` does: claim released)
        worker = set_up_worker(task.env, task.resolved_suite)
        suite, dataset = worker.suite, worker.dataset
        entry = next(e for e in suite.sources if e.name == task.arm)
        if stage_hash(suite, entry, dataset.resolved) != task.config_hash:
            raise RuntimeError(f"tuning worker for {task.arm!r}: the suite or dataset resolved differently here "
                               f"({dataset.resolved!r}) than in the run that started it")
        return tune_arm(worker.store, suite, task.profile, entry, dataset) is not None


def best_values(study: optuna.Study) -> dict[str, Any]:
    """The best trial's values, floats rounded to 4 significant digits: they become per-arm overrides, shown in
    every table's variant column and hashed, and 4 digits are far finer than a TPE study resolves anyway."""
    return {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in study.best_params.items()}


def study_progress(spec: StudySpec, study: optuna.Study) -> str:
    """One log line: trials finished and left to run (and the budget spent, with one)."""
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    budget = "" if spec.budget is None else f", {spent(study)} of {spec.budget} outer iterations spent"
    return f"{study.study_name}: {finished} trials done, {max(0, spec.settings.trials - finished)} to run{budget}"


def study_done(spec: StudySpec, study: optuna.Study) -> bool:
    """Whether ``run_study`` would launch no further trial: ``settings.trials`` finished, or the budget spent."""
    return (len(study.get_trials(deepcopy=False, states=FINISHED)) >= spec.settings.trials
            or (spec.budget is not None and spec.budget - spent(study) < spec.min_trial_cost))


def finished_study(store: Store, spec: StudySpec) -> optuna.Study | None:
    """``spec``'s study when it is finished under its configuration hash; None when it is missing, unfinished or
    was run under another configuration."""
    try:
        study = optuna.load_study(study_name=spec.name, storage=store.storage)
    except KeyError:
        return None
    if study.user_attrs.get("config_hash") != spec.config_hash or not study_done(spec, study):
        return None
    return study


def tuned_values(store: Store, suite: Suite, profile: str, dataset_resolved: str) -> dict[str, dict] | None:
    """Each arm's chosen values read from finished tuning studies (no training), or None when some arm's study
    is missing, unfinished or was run under another configuration (then the stage has to run first)."""
    chosen = {}
    for entry in suite.sources:
        if not suite.tuning.space_for(entry):
            chosen[entry.name] = {}
            continue
        study = finished_study(store, stage_spec(suite, profile, entry, dataset_resolved))
        if study is None:
            return None
        chosen[entry.name] = best_values(study)
    return chosen


STOPPED_BY_BUDGET = "stopped by the budget"   # a pruned trial's status in the report when the budget stopped it
NEAR_BEST = 0.01   # "within 1 point of the best" (validation accuracy, as a fraction): how flat an optimum is


def tuning_frame(store: Store, suite: Suite, profile: str) -> pd.DataFrame:
    """One row per arm for the report: the tuned space, the budget, the chosen values and their validation
    accuracy, the stage's meta-training seconds, and how the study went — the budget it used in runs of the
    arm's horizon (outer iterations summed over its trials / the trial horizon), its diverged and pruned
    trials (those the budget stopped among them), the share of its trials run to the end within 1 point of the
    best, and every trial's validation accuracy, outer iterations reached and status (JSON lists, in trial order;
    a pruned trial the budget stopped says so)."""
    stage, rows = suite.tuning, []
    columns = ["arm", "space", "trials", "outer_iterations_per_trial", "chosen", "best_val_acc", "tuning_seconds",
               "budget_runs_used", "budget_runs", "diverged", "pruned", "near_best_share", "trial_val_acc",
               "trial_outer_iterations", "trial_status"]
    for entry in suite.sources:
        space = stage.space_for(entry)
        horizon = trial_horizon(suite, entry)
        row = {"arm": entry.name, "space": describe_space(space) or "(nothing to tune)", "trials": 0,
               "outer_iterations_per_trial": horizon, "chosen": "as written", "best_val_acc": math.nan,
               "tuning_seconds": 0.0, "budget_runs_used": 0.0, "diverged": 0, "pruned": 0,
               "near_best_share": math.nan, "trial_val_acc": "[]", "trial_outer_iterations": "[]",
               "trial_status": "[]",
               "budget_runs": stage.budget_runs if stage.horizon == "full" and horizon > 1 else math.nan}
        if space:
            try:
                study = optuna.load_study(study_name=tuning_study_name(suite, profile, entry), storage=store.storage)
            except KeyError:
                continue
            finished = study.get_trials(deepcopy=False, states=FINISHED)
            if not finished:
                continue
            records = [trial_record(t, study.study_name) for t in finished]
            accuracy = [1.0 - t.value if t.value is not None else math.nan for t in finished]
            full = [a for a, r in zip(accuracy, records) if r.status != Status.PRUNED]
            row.update(trials=len(finished), chosen=", ".join(f"{k}={v}" for k, v in best_values(study).items()),
                       best_val_acc=1.0 - study.best_value,
                       tuning_seconds=sum(r.meta_train_seconds or 0.0 for r in records),
                       budget_runs_used=sum(trial_cost(t) for t in finished) / horizon,
                       diverged=sum(r.status == Status.DIVERGED for r in records),
                       pruned=sum(r.status == Status.PRUNED for r in records),
                       near_best_share=stats.share_near_best(full, NEAR_BEST),
                       trial_val_acc=json.dumps([round(a, 4) for a in accuracy]),
                       trial_outer_iterations=json.dumps([trial_cost(t) for t in finished]),
                       trial_status=json.dumps([STOPPED_BY_BUDGET if (r.error or "").startswith(BUDGET_STOP)
                                                else r.status.value for r in records]))
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def describe_stage(stage) -> str:
    """One line on what the tuning stage ran (the run log and the report's header)."""
    if stage.horizon != "full":
        return (f"{stage.trials} TPE trials ({stage.startup_trials} random start-up) x {stage.outer_iterations} "
                f"outer iterations each, objective = validation error of {stage.learners} fresh learners "
                f"({describe_sampler(stage.sampler)})")
    pruner = "no pruning" if stage.pruner is None else (
        f"successive-halving pruning (reduction factor {stage.pruner.reduction_factor}, first rung "
        + (f"{stage.pruner.min_resource} outer iterations" if stage.pruner.min_resource else "the first checkpoint")
        + ")")
    return (f"full horizon: every trial meta-trains the arm's own outer iterations, the arm's settings as written "
            f"first; at most {stage.budget_runs:g} runs of the arm's horizon (outer iterations summed over its "
            f"trials) and {stage.trials} trials per arm ({stage.startup_trials} random start-up), {pruner} on the "
            f"validation error of {stage.learners} fresh learners at every checkpoint "
            f"({describe_sampler(stage.sampler)})")


def describe_sampler(settings) -> str:
    return (f"TPE multivariate={settings.multivariate}, constant_liar={settings.constant_liar}, "
            f"n_ei_candidates={settings.n_ei_candidates}, optuna {optuna.__version__}")


def describe_space(space: dict[str, SearchDimension]) -> str:
    return ", ".join(f"{k} ∈ {d.choices}" if d.choices is not None else
                     f"{k} ∈ [{d.low:g}, {d.high:g}]{' log' if d.log else ''}" for k, d in space.items())



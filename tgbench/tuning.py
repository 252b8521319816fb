"""Optuna studies in the experiment store, and a fewstep suite's tuning stage.

``open_study`` / ``optimize`` run a TPE study to a trial budget, resuming what the store holds; both the ``tune``
suite kind (``tgbench.kinds.tune``) and the tuning stage below use them. The tuning stage (a fewstep suite's
``tuning:`` section) tunes every arm on validation with the same budget before its final seeds run: a trial
meta-trains with the sampled values (seed ``TUNING_SEED_OFFSET + k``, never a final cell's seed; the seed streams
are in ``tgbench.identity``) and scores the validation error of fresh reference learners; the best values become
per-arm overrides of the final cells.
"""
from __future__ import annotations

import math
import time
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from tgbench import interrupt
from tgbench.builders import build_trainer
from tgbench.config import SearchDimension, SourceEntry, Suite, arm_with
from tgbench.data import Dataset
from tgbench.errors import BadInput, Diverged
from tgbench.identity import EVAL_SEED_OFFSET, TUNING_SEED_OFFSET, stage_hash
from tgbench.records import Status, TuneTrial
from tgbench.store import Store, trial_record, write_record

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)



def suggest(trial: optuna.Trial, name: str, dim: SearchDimension) -> Any:
    if dim.choices is not None:
        return trial.suggest_categorical(name, dim.choices)
    if dim.integer:
        return trial.suggest_int(name, int(dim.low), int(dim.high), log=dim.log)
    return trial.suggest_float(name, dim.low, dim.high, log=dim.log)


def open_study(store: Store, name: str, chash: str) -> optuna.Study:
    """The study ``name`` in the store, created if new; refused (``BadInput``) when it was run under another
    configuration hash. Trials left RUNNING by a killed run are marked failed so they are re-sampled (one
    process per study)."""
    study = optuna.create_study(study_name=name, storage=store.storage, direction="minimize", load_if_exists=True)
    if study.user_attrs.get("config_hash", chash) != chash:
        raise BadInput(f"study {name!r} in {store.url} was run under a different configuration of this arm; "
                       "keep both by using another --storage, or delete the study (optuna delete-study)")
    study.set_user_attr("config_hash", chash)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        store.storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    return study


def optimize(study: optuna.Study, objective, budget, log=print) -> None:
    """Run ``study`` up to ``budget.trials`` finished trials with TPE (``budget``: a ``TuneConfig`` or a
    ``TuningStage``: trials, seed, startup_trials, and ``pruning`` where it has one)."""
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    todo = max(0, budget.trials - done)
    log(f"{study.study_name}: {done} trials done, {todo} to run")
    if not todo:
        return
    pruning = getattr(budget, "pruning", False)
    # a fresh sampler seed per resumption, so a resumed study does not replay its random start-up trials
    settings = budget.sampler
    study.sampler = optuna.samplers.TPESampler(seed=budget.seed + len(study.trials),
                                               n_startup_trials=budget.startup_trials,
                                               multivariate=settings.multivariate,
                                               constant_liar=settings.constant_liar,
                                               n_ei_candidates=settings.n_ei_candidates)
    study.set_user_attr("sampler", {"name": "TPESampler", "n_startup_trials": budget.startup_trials,
                                    "optuna": optuna.__version__, **settings.model_dump(mode="json")})
    study.pruner = optuna.pruners.MedianPruner() if pruning else optuna.pruners.NopPruner()
    study.optimize(objective, n_trials=todo, show_progress_bar=False,
                   callbacks=[lambda s, t: log(f"  trial {t.number}: {trial_record(t, s.study_name).status} "
                                               f"objective {t.value if t.value is not None else float('nan'):.4f} "
                                               f"{t.params}")])


# ------------------------------------------------------------------------ a fewstep suite's tuning stage
def tuning_study_name(suite: Suite, profile: str, entry: SourceEntry) -> str:
    return f"{suite.name}@{profile}/tuning/{entry.name}"


def trial_arm(suite: Suite, entry: SourceEntry, values: dict[str, Any]) -> SourceEntry:
    """The arm a tuning trial meta-trains: ``values`` applied, at the stage's per-trial outer budget."""
    arm = arm_with(suite, entry, values)
    iterations = min(suite.outer_for(arm).iterations, suite.tuning.outer_iterations)
    return arm.model_copy(update={"outer": {**arm.outer, "iterations": iterations}})


def tuning_objective(suite: Suite, entry: SourceEntry, dataset: Dataset, space: dict[str, SearchDimension]):
    """Objective of one arm's tuning study: meta-train with the sampled values, then the validation error of
    fresh reference learners after the last inner step (test is never scored). A diverged run scores 1.0. The
    trial's record (a ``TuneTrial``: meta-training seconds, validation scores) is written when the trial is
    scored, its status last."""
    stage = suite.tuning

    def objective(trial: optuna.Trial) -> float:
        values = {key: suggest(trial, key, dim) for key, dim in space.items()}
        arm = trial_arm(suite, entry, values)
        seed = TUNING_SEED_OFFSET + trial.number
        trainer = build_trainer(suite, arm, dataset, seed)
        start = time.perf_counter()
        try:
            for _ in range(suite.outer_for(arm).iterations):
                interrupt.check()
                trainer.step()
        except Diverged as exc:
            write_record(trial, TuneTrial(status=Status.DIVERGED, error=str(exc),
                                          meta_train_seconds=time.perf_counter() - start))
            return 1.0
        seconds = time.perf_counter() - start
        specs = suite.evaluation.learner_specs(suite.learner, trainer.teacher.source.learner_weight_norm)[:1]
        # val in both of evaluate's slots: the stage must never score the test split
        result = trainer.evaluate(dataset.val, dataset.val, specs, stage.learners, seed=EVAL_SEED_OFFSET + seed,
                                  per_step=False).final
        write_record(trial, TuneTrial(status=Status.COMPLETE, meta_train_seconds=seconds,
                                      val_acc_final=result["val_acc"], val_loss_final=result["val_loss"]))
        value = 1.0 - result["val_acc"]
        return value if math.isfinite(value) else 1.0

    return objective


def tune_stage(store: Store, suite: Suite, profile: str, dataset: Dataset, log=print) -> dict[str, dict]:
    """Run (or resume) every arm's tuning study; returns arm name -> its best values (``{}`` for an arm with
    nothing to tune). Arms are tuned one after another in this process."""
    chosen = {}
    for entry in suite.sources:
        space = suite.tuning.space_for(entry)
        if not space:
            chosen[entry.name] = {}
            continue
        study = open_study(store, tuning_study_name(suite, profile, entry),
                           stage_hash(suite, entry, dataset.resolved))
        optimize(study, tuning_objective(suite, entry, dataset, space), suite.tuning, log)
        chosen[entry.name] = best_values(study)
        log(f"  {entry.name}: chose {chosen[entry.name]} (validation error {study.best_value:.4f})")
    return chosen


def best_values(study: optuna.Study) -> dict[str, Any]:
    """The best trial's values, floats rounded to 4 significant digits: they become per-arm overrides, shown in
    every table's variant column and hashed, and 4 digits are far finer than a TPE study resolves anyway."""
    return {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in study.best_params.items()}


def tuned_values(store: Store, suite: Suite, profile: str, dataset_resolved: str) -> dict[str, dict] | None:
    """Each arm's chosen values read from finished tuning studies (no training), or None when some arm's study
    is missing, unfinished or was run under another configuration (then the stage has to run first)."""
    chosen = {}
    for entry in suite.sources:
        if not suite.tuning.space_for(entry):
            chosen[entry.name] = {}
            continue
        try:
            study = optuna.load_study(study_name=tuning_study_name(suite, profile, entry), storage=store.storage)
        except KeyError:
            return None
        finished = study.get_trials(deepcopy=False, states=FINISHED)
        if (study.user_attrs.get("config_hash") != stage_hash(suite, entry, dataset_resolved)
                or len(finished) < suite.tuning.trials):
            return None
        chosen[entry.name] = best_values(study)
    return chosen


def tuning_frame(store: Store, suite: Suite, profile: str) -> pd.DataFrame:
    """One row per arm for the report: the tuned space, the budget, the chosen values and their validation
    accuracy, and the stage's meta-training seconds."""
    stage, rows = suite.tuning, []
    for entry in suite.sources:
        space = stage.space_for(entry)
        row = {"arm": entry.name, "space": describe_space(space) or "(nothing to tune)", "trials": 0,
               "outer_iterations_per_trial": min(suite.outer_for(entry).iterations, stage.outer_iterations),
               "chosen": "as written", "best_val_acc": math.nan, "tuning_seconds": 0.0}
        if space:
            try:
                study = optuna.load_study(study_name=tuning_study_name(suite, profile, entry), storage=store.storage)
            except KeyError:
                continue
            finished = study.get_trials(deepcopy=False, states=FINISHED)
            if not finished:
                continue
            row.update(trials=len(finished), chosen=", ".join(f"{k}={v}" for k, v in best_values(study).items()),
                       best_val_acc=1.0 - study.best_value,
                       tuning_seconds=sum(trial_record(t, study.study_name).meta_train_seconds or 0.0
                                          for t in finished))
        rows.append(row)
    return pd.DataFrame(rows, columns=["arm", "space", "trials", "outer_iterations_per_trial", "chosen",
                                       "best_val_acc", "tuning_seconds"])


def describe_sampler(settings) -> str:
    return (f"TPE multivariate={settings.multivariate}, constant_liar={settings.constant_liar}, "
            f"n_ei_candidates={settings.n_ei_candidates}, optuna {optuna.__version__}")


def describe_space(space: dict[str, SearchDimension]) -> str:
    return ", ".join(f"{k} ∈ {d.choices}" if d.choices is not None else
                     f"{k} ∈ [{d.low:g}, {d.high:g}]{' log' if d.log else ''}" for k, d in space.items())



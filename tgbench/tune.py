"""Tune suites (``kind: tune``): hyperparameter sensitivity of each arm, measured by Optuna's TPE sampler.

The GTN paper's Fig. 2 argument: tune GTN with and without weight normalisation by Bayesian optimisation and
box-plot the final validation loss of *every* run made during tuning; the spread is the sensitivity. Here each
arm (source entry) gets its own Optuna study ``<suite>@<profile>/<arm>`` in the experiment store:

* a trial samples ``tune.space`` (dotted keys ``inner.lr``, ``outer.lr``, ``params.noise_dim`` ...), applies the
  values as per-arm overrides and meta-trains one teacher with ``tgbench.cells.meta_train`` (the same meta-step as
  every suite), meta-training seed = trial number;
* objective = validation loss of fresh learners after the last inner step on the final teacher (minimised),
  reported per evaluation so that ``tune.pruning: true`` can prune (off by default: pruning would stop exactly
  the unstable runs whose final loss is being measured);
* a diverged trial (NaN/inf meta-loss, meta-gradient or parameters, or a non-finite final loss) is not an
  error: it completes with value min(last finite validation loss, ``tune.divergence_cap``) and user attribute
  ``status=diverged``, and counts towards ``tune.trials``;
* resume: a study counts its finished (complete or pruned) trials and runs only the rest. A trial left
  ``RUNNING`` by a killed process is marked failed when the arm starts again (one process per tune study).
"""
from __future__ import annotations

import datetime as dt
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from tgbench import device as devices
from tgbench import interrupt, stats
from tgbench.builders import build_trainer
from tgbench.cells import EVAL_SEED_OFFSET, cell_hash, meta_train
from tgbench.config import SearchDimension, SourceEntry, Suite, arm_with, sampler_key
from tgbench.data import Dataset, load_dataset
from tgbench.errors import BadInput, Diverged
from tgbench.kinds import RunOptions, SuiteKind
from tgbench.locations import writable_out_dir
from tgbench.provenance import command_line, git_revision, machine
from tgbench.report import md_table
from tgbench.store import Store, config_hash

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def arm_study_name(suite: Suite, profile: str, entry: SourceEntry) -> str:
    return f"{suite.name}@{profile}/{entry.name}"


def tune_hash(suite: Suite, entry: SourceEntry, dataset_resolved: str) -> str:
    """What makes two tune trials comparable: everything but the number of trials (raising it adds trials)."""
    return config_hash({"cell": cell_hash(suite.model_copy(update={"tune": None}), entry, dataset_resolved),
                        "tune": {**suite.tune.model_dump(mode="json", exclude={"trials", "sampler"}),
                                 **({"sampler": key} if (key := sampler_key(suite.tune.sampler)) else {})}})


def suggest(trial: optuna.Trial, name: str, dim: SearchDimension) -> Any:
    if dim.choices is not None:
        return trial.suggest_categorical(name, dim.choices)
    if dim.integer:
        return trial.suggest_int(name, int(dim.low), int(dim.high), log=dim.log)
    return trial.suggest_float(name, dim.low, dim.high, log=dim.log)


def objective_value(record: dict, cap: float) -> tuple[float, str]:
    """(objective, status) of a meta-training record: final validation loss, or for a diverged run its last
    finite validation loss capped at ``cap``."""
    final = record.get("val_loss_final")
    if record["status"] == "complete" and final is not None and math.isfinite(final):
        return float(final), "complete"
    finite = [p["val_loss"] for p in record.get("curve", []) if p.get("val_loss") is not None
              and math.isfinite(p["val_loss"])]
    return (min(finite[-1], cap) if finite else cap), "diverged"


def make_objective(suite: Suite, entry: SourceEntry, dataset: Dataset, progress: bool):
    tune = suite.tune

    def objective(trial: optuna.Trial) -> float:
        values = {key: suggest(trial, key, dim) for key, dim in tune.space.items()}
        arm = arm_with(suite, entry, values)

        def on_eval(point: dict) -> None:
            loss = point["val_loss"]
            if loss is not None and math.isfinite(loss) and point["outer_iter"] > 0:
                trial.report(loss, point["outer_iter"])
                if tune.pruning and trial.should_prune():
                    raise optuna.TrialPruned()

        try:
            _, record = meta_train(suite, arm, dataset, seed=trial.number, progress=progress, on_eval=on_eval)
        except KeyboardInterrupt:  # Optuna marks the trial FAIL and re-raises; say why, as fewstep cells do
            trial.set_user_attr("status", "failed")
            trial.set_user_attr("error", "KeyboardInterrupt: ")
            raise
        value, status = objective_value(record, tune.divergence_cap)
        for key in ("val_acc_final", "test_acc_final", "val_loss_final", "meta_train_seconds", "outer_iterations",
                    "error"):
            trial.set_user_attr(key, record.get(key))
        trial.set_user_attr("status", status)
        trial.set_user_attr("curve", record["curve"])
        trial.set_user_attr("dataset_resolved", dataset.resolved)
        trial.set_user_attr("revision", git_revision())
        trial.set_user_attr("device", str(dataset.train.x.device))
        trial.set_user_attr("finished", dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        return value

    return objective


def tune_arm(store: Store, suite: Suite, profile: str, entry: SourceEntry, dataset: Dataset, progress: bool,
             log=print) -> optuna.Study:
    """Run the arm's study up to ``tune.trials`` finished trials (resuming what is in the store)."""
    tune = suite.tune
    name = arm_study_name(suite, profile, entry)
    study = open_study(store, name, tune_hash(suite, entry, dataset.resolved))
    optimize(study, make_objective(suite, entry, dataset, progress), tune, log)
    return study


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
                   callbacks=[lambda s, t: log(f"  trial {t.number}: {t.user_attrs.get('status', t.state.name)} "
                                               f"objective {t.value if t.value is not None else float('nan'):.4f} "
                                               f"{t.params}")])


# ------------------------------------------------------------------------ a fewstep suite's tuning stage
TUNING_SEED_OFFSET = 1000  # tuning trial k meta-trains with seed 1000 + k: never one of the final cells' seeds


def tuning_study_name(suite: Suite, profile: str, entry: SourceEntry) -> str:
    return f"{suite.name}@{profile}/tuning/{entry.name}"


def trial_arm(suite: Suite, entry: SourceEntry, values: dict[str, Any]) -> SourceEntry:
    """The arm a tuning trial meta-trains: ``values`` applied, at the stage's per-trial outer budget."""
    arm = arm_with(suite, entry, values)
    iterations = min(suite.outer_for(arm).iterations, suite.tuning.outer_iterations)
    return arm.model_copy(update={"outer": {**arm.outer, "iterations": iterations}})


def tuning_objective(suite: Suite, entry: SourceEntry, dataset: Dataset, space: dict[str, SearchDimension]):
    """Objective of one arm's tuning study: meta-train with the sampled values, then the validation error of
    fresh reference learners after the last inner step (test is never scored). A diverged run scores 1.0."""
    stage = suite.tuning

    def objective(trial: optuna.Trial) -> float:
        values = {key: suggest(trial, key, dim) for key, dim in space.items()}
        arm = trial_arm(suite, entry, values)
        seed = TUNING_SEED_OFFSET + trial.number
        trainer = build_trainer(suite, arm, dataset, seed)
        start, status = time.perf_counter(), "complete"
        try:
            for _ in range(suite.outer_for(arm).iterations):
                interrupt.check()
                trainer.step()
        except Diverged as exc:
            status = "diverged"
            trial.set_user_attr("error", str(exc))
        trial.set_user_attr("meta_train_seconds", time.perf_counter() - start)
        trial.set_user_attr("status", status)
        if status == "diverged":
            return 1.0
        specs = suite.evaluation.learner_specs(suite.learner, trainer.teacher.source.learner_weight_norm)[:1]
        # val in both of evaluate's slots: the stage must never score the test split
        result = trainer.evaluate(dataset.val, dataset.val, specs, stage.learners, seed=EVAL_SEED_OFFSET + seed,
                                  per_step=False).final
        trial.set_user_attr("val_acc_final", result["val_acc"])
        trial.set_user_attr("val_loss_final", result["val_loss"])
        value = 1.0 - result["val_acc"]
        return value if math.isfinite(value) else 1.0

    return objective


def stage_hash(suite: Suite, entry: SourceEntry, dataset_resolved: str) -> str:
    """What makes two tuning trials of an arm comparable: the arm and protocol as written (before tuning) and
    the stage's settings except the number of trials (raising it adds trials)."""
    stage = suite.tuning.model_dump(mode="json", exclude={"trials", "space", "sampler"})
    if sampler_key(suite.tuning.sampler) is not None:
        stage["sampler"] = sampler_key(suite.tuning.sampler)
    space = {k: v.model_dump(mode="json") for k, v in suite.tuning.space_for(entry).items()}
    return config_hash({"cell": cell_hash(suite.model_copy(update={"tuning": None}), entry, dataset_resolved),
                        "stage": stage, "space": space})


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
                       tuning_seconds=sum(t.user_attrs.get("meta_train_seconds") or 0.0 for t in finished))
        rows.append(row)
    return pd.DataFrame(rows, columns=["arm", "space", "trials", "outer_iterations_per_trial", "chosen",
                                       "best_val_acc", "tuning_seconds"])


def describe_sampler(settings) -> str:
    return (f"TPE multivariate={settings.multivariate}, constant_liar={settings.constant_liar}, "
            f"n_ei_candidates={settings.n_ei_candidates}, optuna {optuna.__version__}")


def describe_space(space: dict[str, SearchDimension]) -> str:
    return ", ".join(f"{k} ∈ {d.choices}" if d.choices is not None else
                     f"{k} ∈ [{d.low:g}, {d.high:g}]{' log' if d.log else ''}" for k, d in space.items())


def run_tune_suite(suite_path: str, suite: Suite, profile: str, opts: RunOptions, log=print) -> Path:
    """``tgbench run`` of a tune suite: every arm's study up to ``tune.trials``, then the report."""
    if opts.seeds:
        raise BadInput(f"{suite_path}: --seeds: tune suites run tune.trials trials per arm, not seeds")
    out_dir = writable_out_dir(opts.out, suite, profile)
    device = devices.resolve(opts.device)
    devices.prepare(device, opts.tf32)
    dataset = devices.on_device(load_dataset(suite.dataset.name, data_root=opts.data_root,
                                             download=suite.dataset.download, fallback=suite.dataset.fallback,
                                             seed=0), device)
    if dataset.fallback_reason:
        log(f"WARNING: {dataset.fallback_reason}\nWARNING: falling back to {dataset.resolved!r}", file=sys.stderr)
    store = Store(opts.storage, opts.artifacts_dir)
    start = time.perf_counter()
    for entry in suite.sources:
        tune_arm(store, suite, profile, entry, dataset, opts.progress, log)
    log(f"tuned {len(suite.sources)} arms in {time.perf_counter() - start:.0f} s")
    write_tune_report(suite, profile, store, out_dir, command=command_line())
    log(f"report: {out_dir / 'report.md'}")
    return out_dir


def report_tune_suite(suite_path: str, suite: Suite, profile: str, opts: RunOptions, log=print) -> Path:
    """``tgbench report`` of a tune suite: the report from its studies alone."""
    out_dir = writable_out_dir(opts.out, suite, profile)
    write_tune_report(suite, profile, Store(opts.storage, opts.artifacts_dir), out_dir, command=command_line())
    log(f"report: {out_dir / 'report.md'}")
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
            status = "pruned" if t.state == TrialState.PRUNED else t.user_attrs.get("status", "complete")
            rows.append({"arm": entry.name, "trial": t.number, "status": status, "value": t.value,
                         **{f"param:{k}": v for k, v in t.params.items()},
                         "val_acc_final": t.user_attrs.get("val_acc_final"),
                         "test_acc_final": t.user_attrs.get("test_acc_final"),
                         "meta_train_seconds": t.user_attrs.get("meta_train_seconds"),
                         "dataset_resolved": t.user_attrs.get("dataset_resolved"),
                         "revision": t.user_attrs.get("revision")})
    return pd.DataFrame(rows)


def summary_frame(trials: pd.DataFrame) -> pd.DataFrame:
    """Per arm: trials, diverged, median and IQR of the final loss over all trials (diverged at their recorded
    value), best, and the median over the non-diverged trials only."""
    rows = []
    for arm, g in trials.groupby("arm", sort=False):
        values = g["value"].to_numpy(dtype=float)
        ok = g.loc[g["status"] == "complete", "value"].to_numpy(dtype=float)
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        rows.append({"arm": arm, "trials": len(g), "diverged": int((g["status"] == "diverged").sum()),
                     "pruned": int((g["status"] == "pruned").sum()), "median": median, "q1": q1, "q3": q3,
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


def box_plot(trials: pd.DataFrame, cap: float):
    """Fig. 2: final validation loss per arm, a box over all trials and every trial as a point; diverged trials
    are red crosses (at their recorded value, capped at ``cap``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    arms = list(dict.fromkeys(trials["arm"]))
    fig, ax = plt.subplots(figsize=(2.2 + 1.8 * len(arms), 4.5))
    ax.boxplot([trials.loc[trials["arm"] == a, "value"].to_numpy(dtype=float) for a in arms],
               showfliers=False, widths=0.5)
    ax.set_xticks(range(1, len(arms) + 1), arms)
    rng = np.random.default_rng(0)
    for i, arm in enumerate(arms, start=1):
        g = trials[trials["arm"] == arm]
        xs = i + rng.uniform(-0.12, 0.12, len(g))
        diverged = (g["status"] == "diverged").to_numpy()
        ax.scatter(xs[~diverged], g["value"].to_numpy(dtype=float)[~diverged], s=18, color="k", alpha=0.7,
                   zorder=3, label="trial" if i == 1 else None)
        if diverged.any():
            ax.scatter(xs[diverged], g["value"].to_numpy(dtype=float)[diverged], s=40, marker="x", color="red",
                       zorder=4, label="diverged")
    ax.axhline(cap, color="red", linestyle=":", linewidth=1, label=f"divergence cap {cap:g}")
    ax.set(ylabel="final validation loss (lower is better)", title="Hyperparameter sensitivity (all tuning trials)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
    ax.grid(alpha=0.3, axis="y")
    handles, labels = ax.get_legend_handles_labels()
    by_label = dict(zip(labels, handles))
    ax.legend(by_label.values(), by_label.keys(), fontsize=8)
    fig.tight_layout()
    return fig


def write_tune_report(suite: Suite, profile: str, store: Store, out_dir: Path, command: str = "") -> Path:
    import matplotlib.pyplot as plt

    trials = trials_frame(store, suite, profile)
    if trials.empty:
        raise BadInput(f"no finished tune trials for suite {suite.name!r} at profile {profile!r} in {store.url}")
    summary = summary_frame(trials)
    imp = importances(store, suite, profile)
    trials.to_csv(out_dir / "trials.csv", index=False)
    summary.to_csv(out_dir / "summary.csv", index=False)
    imp.to_csv(out_dir / "importances.csv", index=False)
    fig = box_plot(trials, suite.tune.divergence_cap)
    fig.savefig(out_dir / "final_loss_boxplot.png", dpi=100)
    plt.close(fig)

    space = describe_space(suite.tune.space)
    lines = [f"# tgbench tune report: {suite.name}", "",
             f"- **profile**: {profile}",
             f"- **revision**: {', '.join(sorted({str(r) for r in trials['revision'].dropna()}))}",
             f"- **command**: `{command or f'tgbench run {suite.name} --profile {profile}'}`",
             *([f"- **overrides**: `{' '.join(f'--set {o}' for o in suite.overrides)}`"] if suite.overrides else []),
             f"- **machine**: {machine()}",
             f"- **dataset**: {', '.join(sorted({str(d) for d in trials['dataset_resolved'].dropna()}))}",
             f"- **created**: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}",
             f"- **protocol**: {suite.inner.steps} inner steps x batch {suite.inner.batch_size}, "
             f"{suite.outer.iterations} outer iterations per trial, {suite.tune.trials} TPE trials per arm "
             f"({suite.tune.startup_trials} random start-up; {describe_sampler(suite.tune.sampler)}), pruning "
             f"{'on' if suite.tune.pruning else 'off'}",
             f"- **search space**: {space}",
             f"- **store**: {store.url} (studies `{suite.name}@{profile}/<arm>`; `optuna-dashboard {store.url}`)",
             "",
             "## Final validation loss over all tuning trials (paper Fig. 2)", "",
             "Objective: validation loss of fresh learners after the last inner step, trained on the trial's "
             f"final teacher. Diverged trials count at min(last finite validation loss, {suite.tune.divergence_cap:g}).",
             ""]
    rows = [[r.arm, r.trials, r.diverged, f"{r.median:.4f}", f"{r.q1:.4f} – {r.q3:.4f} ({r.iqr:.4f})",
             f"{r.best:.4f}", "–" if math.isnan(r.median_non_diverged) else f"{r.median_non_diverged:.4f}"]
            for r in summary.itertuples()]
    lines += md_table(["arm", "trials", "diverged", "median", "IQR (q1 – q3)", "best", "median (non-diverged)"],
                       rows) + [""]
    if len(summary) == 2:
        a, b = summary["arm"]
        va = trials.loc[trials["arm"] == a, "value"]
        vb = trials.loc[trials["arm"] == b, "value"]
        lines += [f"Mann-Whitney U (two-sided) on the final losses of `{a}` vs `{b}`: "
                  f"p = {stats.mann_whitney_p(va, vb):.3g}.", ""]
    lines += ["## Parameter importances (Optuna fANOVA, per arm)", ""]
    if imp.empty:
        lines += ["Too few finished trials to estimate importances.", ""]
    else:
        table = imp.pivot(index="param", columns="arm", values="importance").fillna(0.0)
        lines += md_table(["param", *table.columns], [[p, *[f"{v:.3f}" for v in row]]
                                                        for p, row in zip(table.index, table.to_numpy())]) + [""]
    lines += ["## Figures", "", "![final_loss_boxplot](final_loss_boxplot.png)", ""]
    (out_dir / "report.md").write_text("\n".join(lines), encoding="utf-8")
    return out_dir


TUNE = SuiteKind(run=run_tune_suite, report=report_tune_suite)

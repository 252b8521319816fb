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
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from pydantic import Field, PositiveFloat, PositiveInt

from tgbench import stats
from tgbench.cells import cell_hash, meta_train
from tgbench.config import SamplerSettings, SearchSpace, SourceEntry, Strict, Suite, arm_with, check_space, sampler_key
from tgbench.data import Dataset
from tgbench.errors import BadInput
from tgbench.kinds import RunContext, SuiteKind
from tgbench.provenance import git_revision, machine
from tgbench.records import Status, TuneTrial
from tgbench.report import md_table
from tgbench.store import Store, config_hash, trial_record, write_record
from tgbench.tuning import FINISHED, describe_sampler, describe_space, open_study, optimize, suggest


class TuneConfig(Strict):
    """The ``tune:`` section of a tune suite: an Optuna study per arm, TPE over ``space``; objective = final
    validation loss (minimised)."""

    trials: PositiveInt = 20
    seed: int = 0                        # TPE sampler seed; trial k meta-trains with seed k
    startup_trials: PositiveInt = 10     # random trials before TPE models the space (Optuna's default)
    pruning: bool = False                # off by default: pruning would hide the instability being measured
    divergence_cap: PositiveFloat = 5.0  # a diverged trial scores min(last finite val loss, cap); ln 10 = 2.30
    space: SearchSpace = Field(min_length=1)
    sampler: SamplerSettings = Field(default_factory=SamplerSettings)


def check_tune(path: Path, suite: Suite, where: str) -> None:
    """Every dimension of ``tune.space`` names a setting of every arm, with both ends of its range legal."""
    for i in range(len(suite.sources)):
        check_space(path, suite, i, suite.tune.space, f"{where}tune.space")


def arm_study_name(suite: Suite, profile: str, entry: SourceEntry) -> str:
    return f"{suite.name}@{profile}/{entry.name}"


def tune_hash(suite: Suite, entry: SourceEntry, dataset_resolved: str) -> str:
    """What makes two tune trials comparable: everything but the number of trials (raising it adds trials)."""
    return config_hash({"cell": cell_hash(suite.model_copy(update={"tune": None}), entry, dataset_resolved),
                        "tune": {**suite.tune.model_dump(mode="json", exclude={"trials", "sampler"}),
                                 **({"sampler": key} if (key := sampler_key(suite.tune.sampler)) else {})}})


def objective_value(record: dict, cap: float) -> tuple[float, Status]:
    """(objective, status) of what ``meta_train`` returned: final validation loss, or for a diverged run its last
    finite validation loss capped at ``cap``."""
    final = record.get("val_loss_final")
    if record["status"] == Status.COMPLETE and final is not None and math.isfinite(final):
        return float(final), Status.COMPLETE
    finite = [p["val_loss"] for p in record.get("curve", []) if p.get("val_loss") is not None
              and math.isfinite(p["val_loss"])]
    return (min(finite[-1], cap) if finite else cap), Status.DIVERGED


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
            _, record = meta_train(suite, arm, dataset, seed=trial.number, progress=progress, on_eval=on_eval,
                                   report_extras=False)   # a trial keeps only the endpoints
        except optuna.TrialPruned:  # Optuna closes the trial PRUNED; its record says so
            write_record(trial, TuneTrial(status=Status.PRUNED))
            raise
        except KeyboardInterrupt:  # Optuna marks the trial FAIL and re-raises; say why, as fewstep cells do
            write_record(trial, TuneTrial(status=Status.FAILED, error="KeyboardInterrupt: "))
            raise
        value, status = objective_value(record, tune.divergence_cap)
        write_record(trial, TuneTrial(
            **{key: record.get(key) for key in ("val_acc_final", "test_acc_final", "val_loss_final",
                                                "meta_train_seconds", "outer_iterations", "error")},
            status=status, curve=record["curve"], dataset_resolved=dataset.resolved, revision=git_revision(),
            device=str(dataset.train.x.device),
            finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")))
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


def run_tune_suite(ctx: RunContext) -> Path:
    """``tgbench run`` of a tune suite: every arm's study up to ``tune.trials``, then the report."""
    suite, profile, log = ctx.suite, ctx.profile, ctx.log
    if ctx.opts.seeds:
        raise BadInput(f"{ctx.suite_path}: --seeds: tune suites run tune.trials trials per arm, not seeds")
    out_dir = ctx.out_dir()
    dataset = ctx.dataset()
    store = ctx.store()
    start = time.perf_counter()
    for entry in suite.sources:
        tune_arm(store, suite, profile, entry, dataset, ctx.opts.progress, log)
    log(f"tuned {len(suite.sources)} arms in {time.perf_counter() - start:.0f} s")
    write_tune_report(suite, profile, store, out_dir, command=ctx.command)
    log(f"report: {out_dir / 'report.md'}")
    return out_dir


def report_tune_suite(ctx: RunContext) -> Path:
    """``tgbench report`` of a tune suite: the report from its studies alone."""
    out_dir = ctx.out_dir()
    write_tune_report(ctx.suite, ctx.profile, ctx.store(), out_dir, command=ctx.command)
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
        diverged = (g["status"] == Status.DIVERGED.value).to_numpy()
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


TUNE = SuiteKind(run=run_tune_suite, report=report_tune_suite, validate=check_tune, section="tune",
                 section_model=TuneConfig, summary="an Optuna study per arm: the spread of final losses (sensitivity)")

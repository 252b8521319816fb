"""Tune suites (kind: tune) and sweeps: config validation, the objective, divergence handling, resume after a
kill, the Fig. 2 report, and the metagrad_stability sweep report."""
from __future__ import annotations

import io
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from tgbench.cli import main
from tgbench.suite.loading import load_suite
from tgbench.errors import ConfigError
from tgbench.kinds.fewstep.analysis import sweep_frame
from tgbench.identity import cell_hash
from tgbench.kinds.tune.run import arm_study_name, objective_value, summary_frame

REPO = Path(__file__).resolve().parents[1]
SMALL_GTN = {"curriculum": "full", "noise_dim": 8, "fc_hidden": 16, "channels": [8, 4]}


def _tune_suite(tmp: Path, trials: int = 2, space: dict | None = None, **top) -> Path:
    """A tiny tune suite written into tmp (seconds per trial)."""
    suite = {
        "name": "tiny_tune", "kind": "tune",
        "dataset": {"name": "mnist-5k"},
        "learner": {"conv_channels": [[4, 8]], "fc_hidden": [[16]]},
        "inner": {"steps": 4, "batch_size": 16},
        "outer": {"iterations": 2, "meta_batch_size": 32},
        "evaluation": {"eval_every": 1, "eval_learners": 1, "final_learners": 1},
        "sources": [{"method": "gtn", "label": "wn", "params": {**SMALL_GTN, "weight_norm": True}}],
        "tune": {"trials": trials, "startup_trials": 1,
                 "space": space or {"outer.lr": {"low": 0.001, "high": 0.05, "log": True}}},
        **top,
    }
    path = tmp / "tiny_tune.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def _run(path: Path, tmp: Path, *extra: str) -> int:
    return main(["run", str(path), "--profile", "smoke", "--no-progress", "--storage", f"sqlite:///{tmp}/t.db",
                 "--out", str(tmp / "out"), *extra])


def _study(tmp: Path, arm: str = "wn", name: str = "tiny_tune") -> optuna.Study:
    return optuna.load_study(study_name=f"{name}@smoke/{arm}", storage=f"sqlite:///{tmp}/t.db")


def _with_smoke(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    raw["profiles"] = {"smoke": {}}
    path.write_text(yaml.safe_dump(raw))


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("space, fragment", [
    ({"outer.lrr": {"low": 0.1, "high": 1}}, "did you mean 'lr'"),
    ({"inner.momentum": {"low": 0.5, "high": 1.0}}, "tune.space.inner.momentum: 1.0 is not a legal value"),
    ({"params.noise_dimm": {"choices": [8, 16]}}, "did you mean 'params.noise_dim'"),
    ({"outer.lr": {"low": 0.0, "high": 1.0, "log": True}}, "log scale needs low > 0"),
    ({"outer.lr": {"low": 1.0, "high": 0.1}}, "needs low < high"),
    ({"lr": {"low": 0.1, "high": 1.0}}, "must be inner.<setting>, outer.<setting> or params.<setting>"),
    ({"params.curriculum": {"choices": ["full", "bogus"]}}, "'bogus' is not a legal value"),
])
def test_bad_search_space_is_one_line_config_error(tmp_path, space, fragment):
    path = _tune_suite(tmp_path, space=space)
    with pytest.raises(ConfigError) as err:
        load_suite(path)
    assert fragment in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_kind_tune_needs_a_tune_section(tmp_path):
    path = _tune_suite(tmp_path)
    raw = yaml.safe_load(path.read_text())
    del raw["tune"]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="needs a `tune:` section"):
        load_suite(path)


def test_sweep_expands_each_source_into_one_arm_per_value():
    suite = load_suite(REPO / "suites" / "metagrad_stability.yaml", "cpu")
    names = [e.name for e in suite.sources]
    assert len(names) == 16 and "hybrid[steps=64]" in names and "backprop_wn[steps=8]" in names
    arm = next(e for e in suite.sources if e.name == "es[steps=16]")
    assert (arm.arm, arm.sweep_value, suite.inner_for(arm).steps) == ("es", 16, 16)
    assert suite.outer_for(arm).meta_gradient == "es" and suite.inner_for(arm).batch_size == 32
    # every sweep point is its own experiment
    assert len({cell_hash(suite, e, "mnist-5k") for e in suite.sources}) == 16
    # re-validating an expanded suite does not expand twice
    again = type(suite).model_validate(suite.model_dump())
    assert [e.name for e in again.sources] == names


PINNED_SUITE = """
name: pinned
dataset: {name: mnist-5k}
learner: {conv_channels: [[8, 16]], fc_hidden: [[32]]}
inner: {steps: 8, batch_size: 32}
sources:
  - {method: real}
  - {method: gtn, label: g, params: {curriculum: full, noise_dim: 16}, outer: {iterations: 7}}
"""


def test_unset_new_settings_keep_old_cell_hashes(tmp_path):
    """Stores written before per-arm `inner:`, `sweep:`, `tune:` and `nas:` existed must still resume and report:
    these are the hashes revision 6d3dafd (before any of them) gave this suite's cells."""
    path = tmp_path / "pinned.yaml"
    # the BN-statistics protocol of those stores, named explicitly (the default changed to lesson statistics)
    path.write_text(PINNED_SUITE.replace("fc_hidden: [[32]]}", "fc_hidden: [[32]], bn_statistics: scored_batch}"))
    suite = load_suite(path)
    assert [cell_hash(suite, e, "mnist-5k") for e in suite.sources] == ["383b3717524c6086", "0f75f91a219386a9"]
    # ... while setting one of them does change the experiment
    swept = load_suite(path).model_copy(update={"sweep": None})
    arm = suite.sources[1].model_copy(update={"inner": {"steps": 4}})
    assert cell_hash(swept, arm, "mnist-5k") != "0f75f91a219386a9"


def test_the_lesson_statistics_protocol_is_a_different_experiment(tmp_path):
    """The default BN protocol changed the scores, so cells under it must never share a hash (and a table)
    with cells of the old, transductive protocol."""
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(PINNED_SUITE.replace("fc_hidden: [[32]]}", "fc_hidden: [[32]], bn_statistics: scored_batch}"))
    new.write_text(PINNED_SUITE)
    old_hashes = {cell_hash(load_suite(old), e, "mnist-5k") for e in load_suite(old).sources}
    new_hashes = {cell_hash(load_suite(new), e, "mnist-5k") for e in load_suite(new).sources}
    assert load_suite(new).learner.bn_statistics == "lesson"
    assert len(new_hashes) == 2 and not old_hashes & new_hashes


# ------------------------------------------------------------------------------------------ objective
def test_objective_value_rules():
    curve = [{"val_loss": 2.3}, {"val_loss": 1.7}, {"val_loss": float("nan")}]
    assert objective_value({"status": "complete", "val_loss_final": 0.4, "curve": curve}, 5.0) == (0.4, "complete")
    assert objective_value({"status": "diverged", "curve": curve}, 5.0) == (1.7, "diverged")
    assert objective_value({"status": "diverged", "curve": [{"val_loss": 9.0}]}, 5.0) == (5.0, "diverged")
    assert objective_value({"status": "diverged", "curve": []}, 5.0) == (5.0, "diverged")
    # a run whose final evaluation is not finite diverged, whatever the meta-loss did
    assert objective_value({"status": "complete", "val_loss_final": float("inf"), "curve": curve}, 5.0)[1] == "diverged"


def test_tune_run_writes_studies_and_report(tmp_path, single_thread):
    path = _tune_suite(tmp_path, trials=2)
    _with_smoke(path)
    assert _run(path, tmp_path) == 0
    study = _study(tmp_path)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2 and study.direction == optuna.study.StudyDirection.MINIMIZE
    for t in trials:  # the objective is the final validation loss recorded for that trial
        assert t.value == pytest.approx(t.user_attrs["val_loss_final"]) and t.user_attrs["status"] == "complete"
        assert 0.001 <= t.params["outer.lr"] <= 0.05
        assert [p["outer_iter"] for p in t.user_attrs["curve"]] == [0, 1, 2]
        assert sorted(t.intermediate_values) == [1, 2]  # reported for optional pruning
    out = tmp_path / "out"
    for name in ("report.md", "trials.csv", "summary.csv", "importances.csv", "final_loss_boxplot.png"):
        assert (out / name).stat().st_size > 0
    table = pd.read_csv(out / "trials.csv")
    assert sorted(table["value"]) == pytest.approx(sorted(t.value for t in trials))
    assert "| wn | 2 | 0 |" in (out / "report.md").read_text()
    # `tgbench report` rebuilds the same table from the store alone
    (out / "trials.csv").unlink()
    assert main(["report", str(path), "--profile", "smoke", "--storage", f"sqlite:///{tmp_path}/t.db",
                 "--out", str(out)]) == 0
    assert pd.read_csv(out / "trials.csv").equals(table)


def test_a_huge_lr_gives_a_diverged_trial_not_a_crash(tmp_path, single_thread):
    # an outer lr of 1e6 throws the learned inner lr to exp(1e6) = inf after one Adam step: NaN meta-loss
    path = _tune_suite(tmp_path, trials=2, space={"outer.lr": {"low": 1e6, "high": 1e7, "log": True}})
    _with_smoke(path)
    assert _run(path, tmp_path) == 0
    trials = _study(tmp_path).get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2
    for t in trials:
        assert t.user_attrs["status"] == "diverged"
        finite = [p["val_loss"] for p in t.user_attrs["curve"] if math.isfinite(p["val_loss"])]
        assert t.value == pytest.approx(min(finite[-1], 5.0))
    assert "| wn | 2 | 2 |" in (tmp_path / "out" / "report.md").read_text()


def test_more_trials_later_runs_only_the_new_ones(tmp_path, single_thread):
    path = _tune_suite(tmp_path, trials=1)
    _with_smoke(path)
    assert _run(path, tmp_path) == 0
    first = _study(tmp_path).get_trials()[0]
    raw = yaml.safe_load(path.read_text())
    raw["tune"]["trials"] = 2
    path.write_text(yaml.safe_dump(raw))
    assert _run(path, tmp_path) == 0
    trials = _study(tmp_path).get_trials()
    assert len(trials) == 2 and trials[0].value == first.value and trials[0].datetime_complete == first.datetime_complete


def test_a_changed_protocol_refuses_to_mix_with_old_trials(tmp_path, single_thread, capsys):
    path = _tune_suite(tmp_path, trials=1)
    _with_smoke(path)
    assert _run(path, tmp_path) == 0
    raw = yaml.safe_load(path.read_text())
    raw["outer"]["iterations"] = 3
    path.write_text(yaml.safe_dump(raw))
    assert _run(path, tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different configuration" in err[0] and "tiny_tune@smoke/wn" in err[0]
    assert len(_study(tmp_path).get_trials()) == 1


@pytest.mark.slow
@pytest.mark.system   # a tgbench process, SIGKILLed, then run again
def test_killed_study_continues_where_it_stopped(tmp_path):
    """SIGKILL a tune run after its first trial finished; the same command completes the rest: the finished
    trial is untouched, the interrupted one is marked failed, and exactly `trials` trials finish."""
    path = _tune_suite(tmp_path, trials=3, outer={"iterations": 6, "meta_batch_size": 32})
    _with_smoke(path)
    cmd = [sys.executable, "-m", "tgbench.cli", "run", str(path), "--profile", "smoke", "--no-progress",
           "--storage", f"sqlite:///{tmp_path}/t.db", "--out", str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    first = None
    while time.time() < deadline and proc.poll() is None:
        try:
            done = _study(tmp_path).get_trials(states=(TrialState.COMPLETE,))
        except KeyError:
            done = []
        if done:
            first = done[0]
            break
        time.sleep(0.2)
    assert first is not None, "no trial finished before the deadline"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _study(tmp_path).get_trials()
    assert len([t for t in before if t.state == TrialState.COMPLETE]) < 3
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    trials = _study(tmp_path).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3
    kept = next(t for t in trials if t.number == first.number)
    assert kept.value == first.value and kept.datetime_complete == first.datetime_complete
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials)


def test_ctrl_c_mid_trial_exits_130_with_the_trial_failed_and_no_traceback(tmp_path, single_thread, capsys,
                                                                              monkeypatch):
    from tgbench import engine

    step = engine.MetaTrainer.step

    def step_then_ctrl_c(self):
        if self.iteration == 1:  # a real SIGINT, in the second meta-iteration of the first trial
            signal.raise_signal(signal.SIGINT)
        return step(self)

    monkeypatch.setattr(engine.MetaTrainer, "step", step_then_ctrl_c)
    optuna_log = io.StringIO()   # Optuna's handler keeps the stderr it found at import: point it here
    streams = [h for h in logging.getLogger("optuna").handlers if type(h) is logging.StreamHandler]
    assert streams
    for handler in streams:
        monkeypatch.setattr(handler, "stream", optuna_log)
    path = _tune_suite(tmp_path, trials=2, outer={"iterations": 4, "meta_batch_size": 32})
    _with_smoke(path)
    assert _run(path, tmp_path) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("tgbench: interrupted") and "Traceback" not in err
    assert "Traceback" not in optuna_log.getvalue() and "failed" not in optuna_log.getvalue()
    [trial] = _study(tmp_path).get_trials()
    assert trial.state == TrialState.FAIL and trial.user_attrs["status"] == "failed"
    assert trial.user_attrs["error"].startswith("KeyboardInterrupt")


# A system test (`pytest -m system`, CI's second command): the shipped suite's smoke as written, 2 arms x 3 trials
# to the report, ~10 s of the default command's 5 min. What it runs through, the default command runs in
# test_tune_run_writes_studies_and_report (a tune suite's studies, objective, report files and report rebuild),
# and test_identity.py loads and hashes every profile of this suite.
@pytest.mark.slow
@pytest.mark.system
def test_shipped_wn_sensitivity_smoke(tmp_path, single_thread):
    path = REPO / "suites" / "wn_sensitivity.yaml"
    assert _run(path, tmp_path) == 0
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert list(summary["arm"]) == ["gtn_wn", "gtn_no_wn"] and list(summary["trials"]) == [3, 3]
    study = _study(tmp_path, "gtn_no_wn", "wn_sensitivity")
    assert study.study_name == arm_study_name(load_suite(path, "smoke"), "smoke",
                                              load_suite(path, "smoke").sources[1])


# ------------------------------------------------------------------------------------------ report
def test_summary_frame_statistics():
    values = [0.3, 0.5, 0.9, 5.0, 0.4]
    trials = pd.DataFrame({"arm": ["a"] * 5 + ["b"] * 2, "value": values + [1.0, 2.0],
                           "status": ["complete", "complete", "complete", "diverged", "complete", "complete",
                                      "pruned"]})
    s = summary_frame(trials).set_index("arm")
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    assert s.loc["a", "median"] == pytest.approx(med) and s.loc["a", "iqr"] == pytest.approx(q3 - q1)
    assert s.loc["a", "diverged"] == 1 and s.loc["a", "best"] == 0.3
    assert s.loc["a", "median_non_diverged"] == pytest.approx(np.median([0.3, 0.5, 0.9, 0.4]))
    assert s.loc["b", "pruned"] == 1 and s.loc["b", "median_non_diverged"] == 1.0


def test_sweep_frame_counts_divergence_and_averages_the_rest():
    rows = []
    for arm in ("bp", "wn"):
        for value in (8, 64):
            for seed in range(3):
                diverged = arm == "bp" and value == 64 and seed < 2
                rows.append({"source": f"{arm}[steps={value}]", "arm": arm, "sweep_value": value, "seed": seed,
                             "status": "diverged" if diverged else "complete", "dataset_resolved": "mnist-5k",
                             "test_acc_final": 0.1 if diverged else 0.8 + 0.01 * seed,
                             "meta_train_seconds": 10.0 * value})
    frame = sweep_frame(pd.DataFrame(rows)).set_index(["arm", "value"])
    assert frame.loc[("bp", 64), "diverged"] == 2 and frame.loc[("bp", 64), "diverged_fraction"] == pytest.approx(2 / 3)
    assert frame.loc[("bp", 64), "test_acc_mean"] == pytest.approx(0.82)  # the diverged runs' 0.1 is excluded
    assert frame.loc[("wn", 8), "test_acc_mean"] == pytest.approx(0.81) and frame.loc[("wn", 8), "diverged"] == 0
    assert frame.loc[("wn", 64), "meta_train_seconds"] == 640.0


@pytest.mark.slow
def test_shipped_metagrad_stability_smoke(tmp_path, single_thread):
    # every arm at every swept T, end to end to the sweep report; without the held-out learners' scores (half of a
    # cell's time, nothing the sweep report reads; the shipped mnist_fewstep / mnist_curriculum smokes of
    # test_store.py and test_suites.py score theirs, and the last test of this file the default held-out set)
    assert _run(REPO / "suites" / "metagrad_stability.yaml", tmp_path, "--set", "evaluation.held_out={}") == 0
    out = tmp_path / "out"
    sweep = pd.read_csv(out / "sweep.csv")
    assert sorted(set(sweep["arm"])) == ["backprop", "backprop_wn", "es", "hybrid"]
    assert sorted(set(sweep["value"])) == [2, 4] and (sweep["runs"] == 1).all()
    assert (out / "sweep.png").stat().st_size > 0 and "## Sweep over `inner.steps`" in (out / "report.md").read_text()


def test_the_tpe_settings_are_explicit_recorded_and_hashed_only_when_changed(tmp_path):
    """Optuna 5 changed TPE's defaults; tgbench passes its own (SamplerSettings), records them on the study, and a
    suite that changes them gets new hashes while every existing one keeps its own."""
    from tgbench.identity import cell_hash
    from tgbench.suite.schema import SamplerSettings, TuningStage
    from tgbench.store import Store
    from tgbench.tuning import StudySpec, run_study

    budget = TuningStage(trials=1, startup_trials=1, sampler=SamplerSettings(multivariate=False))
    study = run_study(Store(f"sqlite:///{tmp_path}/s.db"), StudySpec("x", "h", budget),
                      lambda trial: trial.suggest_float("a", 0, 1), log=lambda *a, **k: None)
    assert study.sampler._multivariate is False and study.sampler._constant_liar is True
    assert study.user_attrs["sampler"]["multivariate"] is False and study.user_attrs["sampler"]["optuna"]
    suite = load_suite(Path(__file__).parents[1] / "suites" / "mnist_fewstep.yaml", "cpu")
    entry = suite.sources[0]
    changed = suite.model_copy(update={"tuning": suite.tuning.model_copy(
        update={"sampler": SamplerSettings(constant_liar=False)})})
    same = suite.model_copy(update={"tuning": suite.tuning.model_copy(update={"sampler": SamplerSettings()})})
    assert cell_hash(same, entry, "mnist-5k") == cell_hash(suite, entry, "mnist-5k")
    assert cell_hash(changed, entry, "mnist-5k") != cell_hash(suite, entry, "mnist-5k")


def test_a_tune_trial_skips_the_report_extras_and_records_the_same_endpoints(tmp_path, single_thread):
    """A tune trial keeps only a meta-training's endpoints, so ``meta_train(report_extras=False)`` skips the
    per-step final curve, the sample grid and the held-out learners — and every number a trial records is the
    one the full run computes."""
    from tgbench.cells import meta_train
    from tgbench.data import load_dataset

    suite = load_suite(_tune_suite(tmp_path), "smoke")
    dataset = load_dataset("mnist-5k")
    _, full = meta_train(suite, suite.sources[0], dataset, seed=3, progress=False)
    _, lean = meta_train(suite, suite.sources[0], dataset, seed=3, progress=False, report_extras=False)
    for key in ("status", "test_acc_final", "val_acc_final", "test_loss_final", "val_loss_final", "curve",
                "outer_iterations", "eval_architectures"):
        assert lean[key] == full[key], key
    assert {"held_out", "samples", "steps_test_acc"} <= set(full) and not {"held_out", "samples",
                                                                            "steps_test_acc"} & set(lean)
    assert len(full["steps_test_acc"]) == suite.inner.steps + 1 and full["held_out"]

"""The one tuning system (issue 25) and full-horizon tuning with multi-fidelity pruning (issue 24): every stored
tuning hash unchanged, both study kinds through one objective over ``meta_train``, the full-horizon stage
(official defaults first, successive-halving pruning, the budget in runs, test never scored, resume), and the
report's tuning section."""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
from pathlib import Path

import optuna
import pandas as pd
import pytest

from tgbench.identity import STUDY_OMISSIONS, cell_hash, omit
import yaml
from optuna.trial import TrialState

import tgbench.tuning as tuning
from tgbench import engine, stats
from tgbench.cli import main
from tgbench.suite.loading import load_suite
from tgbench.data import load_dataset
from tgbench.errors import ConfigError
from tgbench.kinds.fewstep.report import tuning_section
from tgbench.store import Store

REPO = Path(__file__).resolve().parents[1]
SMALL_GTN = {"curriculum": "full", "noise_dim": 8, "fc_hidden": 16, "channels": [8, 4]}
HORIZON = 6   # outer iterations of the tiny suite's arms
EVERY = 2     # ... between the checkpoints of a full-horizon trial
OMIT = object()


def _suite(tmp: Path, stage: dict | None = None, sources: list | None = None) -> Path:
    """A tiny fewstep suite with a full-horizon tuning stage (seconds per trial); a key of ``stage`` set to
    ``OMIT`` is left out."""
    suite = {
        "name": "tiny_full", "dataset": {"name": "mnist-5k"},
        "learner": {"conv_channels": [[4, 8]], "fc_hidden": [[16]]},
        "inner": {"steps": 4, "batch_size": 16, "lr": 0.05, "momentum": 0.5},
        "outer": {"iterations": HORIZON, "meta_batch_size": 32, "lr": 0.5},
        "evaluation": {"seeds": 1, "eval_every": EVERY, "eval_learners": 1, "final_learners": 1, "held_out": {}},
        "tuning": {"trials": 8, "startup_trials": 2, "learners": 1, "horizon": "full", "budget_runs": 3,
                   # a space wide enough that some trials are clearly worse than others at their first rung
                   "space": {"inner.lr": {"low": 0.001, "high": 0.3, "log": True},
                             "outer.lr": {"low": 0.003, "high": 0.1, "log": True}},
                   **(stage or {})},
        "sources": sources or [{"method": "real"}],
        "profiles": {"smoke": {}},
    }
    suite["tuning"] = {k: v for k, v in suite["tuning"].items() if v is not OMIT}
    path = tmp / "tiny_full.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


class Untouchable:
    """A split no code may look at: any attribute, its length or iteration fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the tuning stage touched the test split ({name})")

    def __len__(self):
        raise AssertionError("the tuning stage touched the test split (len)")


def _trials(store: Store, suite, entry) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=tuning.tuning_study_name(suite, "smoke", entry),
                             storage=store.storage).get_trials()


@pytest.fixture(scope="module")
def full_stage(tmp_path_factory):
    """One full-horizon stage of the tiny suite, run on a dataset whose test split may not be touched."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("full")
    suite = load_suite(_suite(tmp), "smoke")
    dataset = load_dataset("mnist-5k", seed=0)
    store = Store(f"sqlite:///{tmp}/t.db")
    chosen = tuning.tune_stage(store, suite, "smoke", dataclasses.replace(dataset, test=Untouchable()),
                               log=lambda *a, **k: None)
    yield tmp, suite, store, chosen
    torch.set_num_threads(threads)


# (every stage, tune and cell hash of the shipped suites is pinned by tests/test_identity.py's golden file)


def test_full_horizon_settings_are_hashed_only_when_set(tmp_path):
    short = load_suite(_suite(tmp_path, {"horizon": "short", "budget_runs": OMIT}), "smoke")
    (tmp_path / "b").mkdir()
    full = load_suite(_suite(tmp_path / "b"), "smoke")
    entry = short.sources[0]
    assert short.tuning.horizon == "short" and full.tuning.horizon == "full"
    # left at their defaults, the full-horizon settings are left out (tgbench.identity's omission tables): the
    # short stage's hash is the one of a stage dumped without them
    assert "horizon" not in omit(short.tuning.model_dump(mode="json"), STUDY_OMISSIONS)
    assert tuning.stage_hash(short, entry, "m") != tuning.stage_hash(full, entry, "m")
    assert cell_hash(short, entry, "m") != cell_hash(full, entry, "m")
    # raising budget_runs extends the same study (as raising trials does), but the cells it feeds are others
    more = full.model_copy(update={"tuning": full.tuning.model_copy(update={"budget_runs": 5.0})})
    assert tuning.stage_hash(more, entry, "m") == tuning.stage_hash(full, entry, "m")
    assert cell_hash(more, entry, "m") != cell_hash(full, entry, "m")


def test_full_horizon_settings_without_full_horizon_are_a_config_error(tmp_path):
    path = _suite(tmp_path, {"horizon": "short", "budget_runs": 4})   # (its default, 3, would change nothing)
    with pytest.raises(ConfigError, match=r"tiny_full.yaml: tuning: budget_runs: only used with `horizon: full`"):
        load_suite(path)


# ------------------------------------------------------------------------------------------ one system
def test_both_study_kinds_run_through_the_one_objective_over_meta_train(tmp_path, single_thread, monkeypatch):
    """The stage and ``kind: tune`` trials both meta-train through ``study_objective`` -> ``meta_train``; the
    stage's private ``trainer.step()`` loop is gone."""
    source = inspect.getsource(tuning)
    assert "tuning_objective" not in source and ".step()" not in source and "build_trainer" not in source
    calls = []
    real = tuning.meta_train

    def counting(suite, entry, dataset, seed, **kw):
        calls.append((suite.name, seed, kw["report_extras"]))
        return real(suite, entry, dataset, seed, **kw)

    monkeypatch.setattr(tuning, "meta_train", counting)
    stage = _suite(tmp_path, {"horizon": OMIT, "budget_runs": OMIT, "trials": 1, "startup_trials": 1,
                              "outer_iterations": 1})
    raw = yaml.safe_load(stage.read_text())
    # the trials are what this test watches: the stage's final cell meta-trains one outer iteration, not the
    # tiny suite's six, and no run counts FLOPs (tests/test_equal_compute.py does)
    raw["outer"]["iterations"] = 1
    raw["evaluation"]["count_flops"] = False
    stage.write_text(yaml.safe_dump(raw))
    tune = tmp_path / "tiny_tune.yaml"
    raw.update(name="tiny_tune", kind="tune", tune={"trials": 1, "startup_trials": 1,
                                                   "space": {"outer.lr": {"low": 0.01, "high": 0.05}}})
    del raw["tuning"]
    tune.write_text(yaml.safe_dump(raw))
    for path in (stage, tune):
        assert main(["run", str(path), "--profile", "smoke", "--no-progress", "--storage",
                     f"sqlite:///{tmp_path}/t.db", "--out", str(tmp_path / path.stem)]) == 0
    assert ("tiny_full", tuning.TUNING_SEED_OFFSET, False) in calls and ("tiny_tune", 0, False) in calls


# ------------------------------------------------------------------------------------------ full horizon
def test_the_first_trial_runs_the_arm_as_written(full_stage):
    _, suite, store, _ = full_stage
    first = _trials(store, suite, suite.sources[0])[0]
    # inner.lr 0.05 as written; outer.lr 0.5 lies above the space and is clipped to its top end
    assert first.params == {"inner.lr": 0.05, "outer.lr": 0.1}
    assert first.user_attrs[tuning.AS_WRITTEN] == ["outer.lr=0.5 clipped to 0.1"]


def test_values_as_written_clip_round_and_leave_unknown_choices_to_the_sampler(tmp_path):
    suite = load_suite(_suite(tmp_path, sources=[{"method": "gtn", "params": SMALL_GTN}]), "smoke")
    space = {"inner.momentum": {"low": 0.6, "high": 0.9}, "params.noise_dim": {"low": 2, "high": 4, "integer": True},
             "params.curriculum": {"choices": ["none", "per_step"]}, "inner.lr": {"low": 0.01, "high": 0.1}}
    from tgbench.suite.schema import SearchDimension
    values, notes = tuning.values_as_written(suite, suite.sources[0],
                                             {k: SearchDimension(**v) for k, v in space.items()})
    assert values == {"inner.momentum": 0.6, "params.noise_dim": 4, "inner.lr": 0.05}
    assert isinstance(values["params.noise_dim"], int) and len(notes) == 3
    assert any("params.curriculum='full' is not among the choices" in n for n in notes)


def test_full_horizon_trials_are_pruned_and_the_budget_in_runs_is_respected(full_stage):
    _, suite, store, chosen = full_stage
    entry = suite.sources[0]
    trials = _trials(store, suite, entry)
    finished = [t for t in trials if t.state in tuning.FINISHED]
    pruned = [t for t in finished if t.state == TrialState.PRUNED]
    assert [t for t in pruned if t.user_attrs["error"].startswith("pruned at")], "successive halving pruned nothing"
    assert all(t.user_attrs["status"] == "pruned" and 0 < t.user_attrs["outer_iterations"] < HORIZON
               and t.user_attrs["outer_iterations"] % EVERY == 0 for t in pruned)
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    assert all(t.user_attrs["outer_iterations"] == HORIZON for t in complete
               if t.user_attrs["status"] == "complete")   # a complete trial ran the arm's whole horizon
    budget = 3 * HORIZON
    used = sum(t.user_attrs["outer_iterations"] for t in finished)
    assert used <= budget   # never more than budget_runs x the horizon ...
    assert budget - used < EVERY or len(finished) == suite.tuning.trials   # ... and launched until it is spent
    # checkpoints: validation error reported every EVERY outer iterations, for successive halving
    assert sorted(complete[0].intermediate_values) == list(range(EVERY, HORIZON + 1, EVERY))
    assert chosen[entry.name] == tuning.best_values(optuna.load_study(
        study_name=tuning.tuning_study_name(suite, "smoke", entry), storage=store.storage))


def test_the_full_horizon_stage_records_no_test_score(full_stage):
    """The stage ran on a dataset whose test split fails any access (the fixture): nothing read it; and no trial
    records a test number."""
    _, suite, store, _ = full_stage
    for t in _trials(store, suite, suite.sources[0]):
        assert t.user_attrs.get("test_acc_final") is None
        assert all(not k.startswith("test_") for p in t.user_attrs["curve"] for k in p)


def test_a_plain_sgd_arm_gets_the_trial_cap_not_the_budget(tmp_path):
    suite = load_suite(_suite(tmp_path, sources=[
        {"method": "real"}, {"method": "real", "label": "sgd", "inner": {"learn_lr": False, "learn_momentum": False},
                             "outer": {"iterations": 1}, "tune_space": {"inner.lr": {"low": 0.01, "high": 0.3}}}]),
        "smoke")
    real, sgd = (tuning.stage_spec(suite, "smoke", e, "mnist-5k") for e in suite.sources)
    assert (real.budget, real.min_trial_cost, real.settings.trials) == (3 * HORIZON, EVERY, 8)
    assert sgd.budget is None and isinstance(sgd.pruner, optuna.pruners.NopPruner)  # nothing to stop early
    halving = real.pruner.pruner   # (inside tuning.SlotPruner)
    assert halving._min_resource == EVERY and halving._reduction_factor == 3


def _stage_saving_every_iteration(tmp: Path, trials: int, pruner=None) -> tuple:
    """(suite, dataset, store) of a stage of ``trials`` trials (no pruner, or ``pruner``'s settings; ``OMIT``: the
    default one) whose trials save their state at every outer iteration (so a kill anywhere leaves one to resume)."""
    path = _suite(tmp, {"trials": trials, "budget_runs": 10, "pruner": pruner})
    raw = yaml.safe_load(path.read_text())
    raw["outer"]["save_every"] = 1
    path.write_text(yaml.safe_dump(raw))
    return load_suite(path, "smoke"), load_dataset("mnist-5k", seed=0), Store(f"sqlite:///{tmp}/t.db")


def test_a_study_killed_mid_trial_resumes_that_trial_and_samples_nothing_twice(tmp_path, single_thread,
                                                                               monkeypatch, capsys):
    """Ctrl-C in the third trial's fourth outer iteration, then the same stage again: the finished trials are
    kept as they were, the interrupted one runs again with its own values and seed and continues from its saved
    state (``outer.save_every``) with the checkpoint it had reported replayed for the pruner, its saved state is
    removed once it finished, and no value set is sampled twice."""
    suite, dataset, store = _stage_saving_every_iteration(tmp_path, trials=4)
    step, seeds = engine.MetaTrainer.step, []

    def step_then_ctrl_c(self):
        if len(seeds) == 3 and self.iteration == 3:
            seeds.append("interrupted")
            raise KeyboardInterrupt
        return step(self)

    real_meta_train = tuning.meta_train

    def seed_noting(suite, entry, dataset, seed, **kw):
        seeds.append(seed)
        return real_meta_train(suite, entry, dataset, seed, **kw)

    monkeypatch.setattr(engine.MetaTrainer, "step", step_then_ctrl_c)
    monkeypatch.setattr(tuning, "meta_train", seed_noting)
    with pytest.raises(KeyboardInterrupt):
        tuning.tune_stage(store, suite, "smoke", dataset, log=lambda *a, **k: None)
    before = _trials(store, suite, suite.sources[0])
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL]
    assert list(before[2].intermediate_values) == [2]
    states = list((store.artifacts_dir / "saved_states").rglob("*.pt"))
    assert len(states) == 1 and "trial-2" in states[0].name
    capsys.readouterr()
    tuning.tune_stage(store, suite, "smoke", dataset, log=lambda *a, **k: None)
    assert "resuming tiny_full@smoke/tuning/real trial 2 from iteration 3" in capsys.readouterr().err
    after = _trials(store, suite, suite.sources[0])
    assert [(t.params, t.value, t.datetime_complete) for t in after[:2]] == [
        (t.params, t.value, t.datetime_complete) for t in before[:2]]
    rerun = after[3]
    assert rerun.params == before[2].params and rerun.user_attrs[tuning.RETRY_OF] == 2
    assert sorted(rerun.intermediate_values) == [2, 4, 6] and rerun.user_attrs["outer_iterations"] == HORIZON
    assert seeds[-2:] == [tuning.TUNING_SEED_OFFSET + 2, tuning.TUNING_SEED_OFFSET + 4]  # its own seed again
    finished = [t for t in after if t.state in tuning.FINISHED]
    assert len(finished) == 4 and len({json.dumps(t.params, sort_keys=True) for t in finished}) == 4
    assert not list((store.artifacts_dir / "saved_states").rglob("*.pt"))


def test_a_rerun_killed_again_is_run_again_not_replaced_by_a_fresh_sample(tmp_path, single_thread, monkeypatch,
                                                                         capsys):
    """A trial killed, then killed again in its re-run, is re-run a second time from its latest saved state with
    its own values, seed and first-trial mark, and the rung it passed before the kills is passed, at the value it
    was passed at, in every re-run. (The settled run's GTN lost its official-values trial this way: killed at
    iteration ~550 and again at ~1,000 of 2,000, the next start sampled a fresh trial instead; with that fixed, the
    re-run was pruned at 1,100 against its own killed runs' values.)"""
    suite, dataset, store = _stage_saving_every_iteration(tmp_path, trials=2, pruner=OMIT)   # first rung: EVERY
    step, kills = engine.MetaTrainer.step, [3, 5]   # the outer iterations after which the two kills come

    def step_then_ctrl_c(self):
        if kills and self.iteration == kills[0]:
            kills.pop(0)
            raise KeyboardInterrupt
        return step(self)

    monkeypatch.setattr(engine.MetaTrainer, "step", step_then_ctrl_c)
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            tuning.tune_stage(store, suite, "smoke", dataset, log=lambda *a, **k: None)
    killed = _trials(store, suite, suite.sources[0])
    assert [t.state for t in killed] == [TrialState.FAIL, TrialState.FAIL]
    assert killed[1].user_attrs[tuning.RETRY_OF] == 0 and sorted(killed[1].intermediate_values) == [2, 4]
    capsys.readouterr()
    tuning.tune_stage(store, suite, "smoke", dataset, log=lambda *a, **k: None)
    assert "resuming tiny_full@smoke/tuning/real trial 0 from iteration 5" in capsys.readouterr().err
    after = _trials(store, suite, suite.sources[0])
    rerun = after[2]
    assert rerun.state == TrialState.COMPLETE and rerun.params == killed[0].params
    assert rerun.user_attrs[tuning.RETRY_OF] == 0 and tuning.AS_WRITTEN in rerun.user_attrs
    assert sorted(rerun.intermediate_values) == [2, 4, 6] and rerun.user_attrs["outer_iterations"] == HORIZON
    assert [tuning.trial_slot(t) for t in after] == [0, 0, 0, 3]   # then one fresh sample: 2 trials finished
    assert after[3].state in tuning.FINISHED
    passed = killed[0].intermediate_values[EVERY]                # the first rung, passed before the first kill
    assert [t.system_attrs["completed_rung_0"] for t in after[:3]] == [passed] * 3


def test_the_pruner_leaves_killed_trials_out():
    """A killed trial's rung values do not compete: its re-run stands for it (successive halving alone compares
    with every trial that recorded a rung, failed ones included)."""
    halving = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    study = optuna.create_study(pruner=tuning.SlotPruner(halving))
    killed = study.ask()
    killed.report(0.1, 1)
    assert not killed.should_prune()             # alone at the rung: promoted, rung value 0.1 recorded
    study.tell(killed, state=TrialState.FAIL)
    rerun = study.ask()
    rerun.report(0.2, 1)
    assert not rerun.should_prune()              # (successive halving alone: 0.2 is not the best of 0.1, 0.2)
    other = study.ask()
    other.report(0.3, 1)
    assert other.should_prune()                  # the pruner still prunes among the live trials


# ------------------------------------------------------------------------------------------ the report
def test_the_tuning_section_shows_budget_flatness_pruned_and_every_trial(full_stage):
    tmp, suite, store, _ = full_stage
    frame = tuning.tuning_frame(store, suite, "smoke")
    [row] = frame.itertuples()
    statuses = json.loads(row.trial_status)
    assert row.trials == len(statuses) and row.pruned == len([s for s in statuses if s not in ("complete", "diverged")])
    assert "pruned" in statuses
    assert row.budget_runs == 3 and 0 < row.budget_runs_used <= 3
    assert row.budget_runs_used == pytest.approx(sum(json.loads(row.trial_outer_iterations)) / HORIZON)
    full = [a for a, s in zip(json.loads(row.trial_val_acc), statuses) if s in ("complete", "diverged")]
    assert row.near_best_share == stats.share_near_best(full, 0.01) and 0 < row.near_best_share <= 1
    lines = "\n".join(tuning_section(frame))
    assert "budget used (runs)" in lines and f"{row.budget_runs_used:.2f} / 3" in lines and "(pruned)" in lines
    from tgbench.reporting.figures import save_figure, tuning_trials_figure
    assert save_figure(tuning_trials_figure(frame), tmp / "tuning.png").stat().st_size > 0


def test_share_near_best():
    assert stats.share_near_best([0.72, 0.71, 0.70, float("nan")], 0.01) == 0.5
    assert stats.share_near_best([0.5], 0.01) == 1.0 and math.isnan(stats.share_near_best([], 0.01))
    assert math.isnan(stats.share_near_best([float("nan")], 0.01))


@pytest.mark.slow
def test_a_full_horizon_suite_runs_reports_and_rereports_from_the_store(tmp_path, single_thread):
    """`tgbench run` end to end at the full horizon: the stage, then the final cells with the chosen values, the
    tuning section and figure; `tgbench report` then finds the stage finished (by its budget, before `trials`).
    8 trials: the budget (3 runs of 6 iterations; the first trial runs all 6, a pruned one at least EVERY = 2)
    stops the real arm after at most 1 + 12 / 2 = 7, so it ends below the cap only if the budget stopped it, while
    the one-iteration sgd arm, which has no budget, must run all 8. The final cells count no FLOPs (an eighth of
    the run; nothing here reads them, tests/test_equal_compute.py does)."""
    path = _suite(tmp_path, {"trials": 8}, sources=[
        {"method": "real"}, {"method": "real", "label": "sgd", "inner": {"learn_lr": False, "learn_momentum": False},
                             "outer": {"iterations": 1}, "tune_space": {"inner.lr": {"low": 0.01, "high": 0.3}}}])
    raw = yaml.safe_load(path.read_text())
    raw["evaluation"]["count_flops"] = False
    path.write_text(yaml.safe_dump(raw))
    storage = f"sqlite:///{tmp_path}/t.db"
    assert main(["run", str(path), "--profile", "smoke", "--no-progress", "--storage", storage,
                 "--out", str(tmp_path / "out")]) == 0
    frame = pd.read_csv(tmp_path / "out" / "tuning.csv").merge(pd.read_csv(tmp_path / "out" / "tuning_budget.csv"))
    real, sgd = frame.itertuples()
    assert real.trials < 8 and real.budget_runs_used <= 3 and sgd.trials == 8   # the budget, the trial cap
    report = (tmp_path / "out" / "report.md").read_text()
    assert "full horizon: every trial meta-trains the arm's own outer iterations" in report
    assert "budget used (runs)" in report and (tmp_path / "out" / "tuning.png").stat().st_size > 0
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert f"inner.lr={real.chosen.split('inner.lr=')[1].split(',')[0]}" in summary.loc[
        summary["source"] == "real", "variant"].iloc[0]
    assert main(["report", str(path), "--profile", "smoke", "--storage", storage, "--out", str(tmp_path / "r")]) == 0
    assert pd.read_csv(tmp_path / "r" / "summary.csv")["variant"].tolist() == summary["variant"].tolist()

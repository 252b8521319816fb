"""The fair protocol's tuning stage (fewstep ``tuning:``), per-arm learner spaces, and the evaluation fast path
(channels-last scoring, the per-step curve subset): every arm tuned with the same budget on validation only,
chosen values carried into the final cells and the report, resume, and scores unchanged by the fast path."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
import yaml

from tgbench.cli import main
from tgbench.suite.loading import load_suite
from tgbench.data import Split, load_dataset
from tgbench.engine import CURVE_SUBSET, EvalPlan, evaluate
from tgbench.errors import ConfigError
from tgbench.nn import Learner, LearnerSpec
from tgbench.problem import Problem
from tgbench.builders import build_teacher, build_trainer
from tgbench.identity import cell_hash
from tgbench.store import Store
from tgbench.tuning import tune_stage, tuned_values, tuning_study_name

SMALL_GTN = {"curriculum": "full", "noise_dim": 8, "fc_hidden": 16, "channels": [8, 4]}
LR = {"low": 0.02, "high": 0.4, "log": True}


def _suite(tmp: Path, **top) -> Path:
    """A tiny fewstep suite with a tuning stage: a meta-learned real arm, plain SGD with its own space, GTN."""
    suite = {
        "name": "tiny_fair", "dataset": {"name": "mnist-5k"},
        "learner": {"conv_channels": [[4, 8]], "fc_hidden": [[16]]},
        "inner": {"steps": 4, "batch_size": 16},
        "outer": {"iterations": 3, "meta_batch_size": 32},
        "evaluation": {"seeds": 1, "eval_every": 3, "eval_learners": 1, "final_learners": 1, "held_out": {}},
        "tuning": {"trials": 2, "startup_trials": 2, "outer_iterations": 2, "learners": 1,
                   "space": {"inner.lr": LR, "outer.lr": {"low": 0.003, "high": 0.05, "log": True}}},
        "sources": [
            {"method": "real"},
            {"method": "real", "label": "real_sgd", "inner": {"learn_lr": False, "learn_momentum": False},
             "outer": {"iterations": 1}, "tune_space": {"inner.lr": LR}},
            {"method": "gtn", "params": SMALL_GTN,
             "learner": {"conv_channels": [[4, 8], [2, 4]], "activation": ["leaky_relu", "relu"]}},
        ],
        "profiles": {"smoke": {}},
        **top,
    }
    path = tmp / "tiny_fair.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def _run(path: Path, tmp: Path, *extra: str) -> int:
    return main(["run", str(path), "--profile", "smoke", "--no-progress", "--storage", f"sqlite:///{tmp}/t.db", "--out", str(tmp / "out"),
                 *extra])


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """One run of the tiny suite from an empty store (its folder: suite, store, artifacts, report), shared by the
    tests that read it and the rerun test, which works on a copy: the same first run was made twice before."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = tmp_path_factory.mktemp("fair_first_run")
        assert _run(_suite(folder), folder) == 0
    finally:
        torch.set_num_threads(threads)
    return folder


def test_every_arm_is_tuned_with_the_same_budget_and_its_choice_reaches_cells_and_report(first_run):
    tmp_path = first_run
    path = tmp_path / "tiny_fair.yaml"
    storage = f"sqlite:///{tmp_path}/t.db"
    suite = load_suite(path)
    for entry in suite.sources:
        study = optuna.load_study(study_name=tuning_study_name(suite, "smoke", entry), storage=storage)
        trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        assert len(trials) == 2  # the same number of trials for every arm
        assert set(trials[0].params) == set(suite.tuning.space_for(entry))
    chosen = tuned_values(Store(storage), suite, "smoke", "mnist-5k")
    assert set(chosen["real_sgd"]) == {"inner.lr"} and set(chosen["gtn"]) == {"inner.lr", "outer.lr"}
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    for arm, values in chosen.items():  # the final cells ran with the chosen values
        variant = summary.loc[summary["source"] == arm, "variant"].iloc[0]
        for key, value in values.items():
            assert f"{key}={value}" in variant
    tuning = pd.read_csv(tmp_path / "out" / "tuning.csv")
    assert list(tuning["arm"]) == ["real", "real_sgd", "gtn"] and list(tuning["trials"]) == [2, 2, 2]
    assert list(tuning["outer_iterations_per_trial"]) == [2, 1, 2]  # the arm's own budget where it is smaller
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Tuning stage (validation split)" in report
    # every cell's wall time split by phase, in the report and phases.csv (issue 19)
    assert "## Where the time went" in report
    phases = pd.read_csv(tmp_path / "out" / "phases.csv")
    assert {"meta_training", "checks", "final_evaluation", "held_out", "samples", "flop_counting",
            "teacher_save"} <= set(phases["phase"]) and (phases["seconds"] >= 0).all()
    assert f"inner.lr={chosen['real_sgd']['inner.lr']}" in report


@pytest.mark.slow
def test_a_rerun_resumes_the_stage_and_the_cells_without_new_trials(first_run, tmp_path, single_thread, capsys):
    tmp_path = tmp_path / "run"
    shutil.copytree(first_run, tmp_path)   # the finished first run's store, artifacts and suite, left as they were
    path = tmp_path / "tiny_fair.yaml"
    capsys.readouterr()
    assert _run(path, tmp_path) == 0
    out = capsys.readouterr().out
    assert out.count("2 trials done, 0 to run") == 3 and "0 to run on mnist-5k" in out
    # the report alone (no training) finds the same tuned cells
    assert main(["report", str(path), "--profile", "smoke", "--storage", f"sqlite:///{tmp_path}/t.db", "--out", str(tmp_path / "r")]) == 0
    assert (pd.read_csv(tmp_path / "r" / "summary.csv")["source"].tolist()
            == pd.read_csv(tmp_path / "out" / "summary.csv")["source"].tolist())


def test_the_stage_never_scores_the_test_split(tmp_path, single_thread):
    """Poisoning every test image (NaN) must not change one trial's objective: tuning sees validation only."""
    suite = load_suite(_suite(tmp_path))
    suite = suite.model_copy(update={"sources": suite.sources[:2]})
    dataset = load_dataset("mnist-5k", seed=0)
    values = []
    for name, test in (("clean", dataset.test), ("poisoned", Split(torch.full_like(dataset.test.x, float("nan")),
                                                                     dataset.test.y))):
        store = Store(f"sqlite:///{tmp_path}/{name}.db")
        tune_stage(store, suite, "cpu", replace(dataset, test=test), log=lambda *a, **k: None)
        values.append([t.value for e in suite.sources for t in optuna.load_study(
            study_name=tuning_study_name(suite, "cpu", e), storage=store.storage).trials])
    assert values[0] == values[1] and all(v == v and v < 1 for v in values[0])


def test_tune_space_needs_a_tuning_stage_and_legal_values(tmp_path):
    path = _suite(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw.pop("tuning")
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"sources\[1\]\.tune_space: only a suite with a `tuning:` stage"):
        load_suite(path)
    path = _suite(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["sources"][1]["tune_space"] = {"inner.momentum": {"low": 0.0, "high": 0.9}}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"sources\[1\]\.tune_space\.inner\.momentum: 0\.0 is not a legal value"):
        load_suite(path)


def test_an_arm_learner_space_is_sampled_in_meta_training_but_evaluation_uses_the_suite_reference(tmp_path):
    suite = load_suite(_suite(tmp_path))
    dataset = load_dataset("mnist-5k", seed=0)
    gtn = suite.sources[2]
    trainer = build_trainer(suite, gtn, dataset, seed=0)
    archs = {trainer.step().architecture for _ in range(8)}
    assert len(archs) > 1  # the arm's own options are drawn
    assert build_trainer(suite, suite.sources[0], dataset, seed=0).space == suite.learner
    # an arm without a learner override keeps the hash it had before the option existed
    plain = gtn.model_copy(update={"learner": {}})
    assert cell_hash(suite, plain, "mnist-5k") != cell_hash(suite, gtn, "mnist-5k")
    assert "learner" not in plain.model_dump(exclude_defaults=True)


# ------------------------------------------------------------------------------------ evaluation fast path
def test_no_grad_scoring_in_channels_last_gives_the_same_predictions_as_nchw():
    torch.manual_seed(0)
    spec = LearnerSpec((8, 16), (32,), 3, "leaky_relu", True, True, "lesson")
    for residual in (False, True):
        learner = Learner(replace(spec, residual=residual), Problem((1, 28, 28), 10))
        x, reference = torch.randn(64, 1, 28, 28), torch.randn(32, 1, 28, 28)
        with torch.enable_grad():  # the training path: NCHW throughout
            nchw = learner(x, reference)
        with torch.no_grad():      # the scoring path: channels-last feature maps
            fast = learner(x, reference)
        torch.testing.assert_close(fast, nchw.detach(), rtol=1e-5, atol=1e-5)
        assert torch.equal(fast.argmax(1), nchw.argmax(1))


def test_last_step_is_scored_on_the_whole_split_and_earlier_points_on_the_curve_subset(tmp_path):
    """Poisoning the examples beyond the curve subset (NaN) changes only the last step's score."""
    suite = load_suite(_suite(tmp_path))
    dataset = load_dataset("mnist-5k", seed=0)
    n = CURVE_SUBSET + 500
    clean = Split(dataset.train.x[:n], dataset.train.y[:n])
    x = clean.x.clone()
    x[CURVE_SUBSET:] = float("nan")
    poisoned = Split(x, clean.y)
    teacher = build_teacher(suite, suite.sources[0], dataset, seed=0)
    results = [evaluate(teacher, [suite.learner.reference()], split, split, EvalPlan(steps=4, learners=1),
                        generator=torch.Generator().manual_seed(5)) for split in (clean, poisoned)]
    assert results[0].test_loss[:-1] == results[1].test_loss[:-1]   # at init and steps 1..T-1: the subset
    assert all(v == v for v in results[0].test_loss)
    assert results[1].test_loss[-1] != results[1].test_loss[-1]     # after the last step: the whole split (NaN)
    endpoints = evaluate(teacher, [suite.learner.reference()], clean, clean,
                         EvalPlan(steps=4, learners=1, per_step=False), generator=torch.Generator().manual_seed(5))
    assert endpoints.test_acc == [results[0].test_acc[0], results[0].test_acc[-1]]


def test_leaderboard_provenance_names_no_scratch_folder_of_this_machine(tmp_path, monkeypatch):
    from tgbench.leaderboard import portable

    monkeypatch.chdir(tmp_path)
    assert portable(f"sqlite:///{tmp_path}/stores/a.db") == "sqlite:///stores/a.db"
    assert portable("sqlite:////scratch/of/one/machine/b.db") == "sqlite:///<b.db>"
    assert portable("/scratch/x/LEADERBOARD.md") == "<LEADERBOARD.md>"
    assert portable("--storage") == "--storage" and portable("sqlite:///rel.db") == "sqlite:///rel.db"

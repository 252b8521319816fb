"""NAS proxy-quality suite: metrics against scipy on known rankings, random search, the search space, every
zero-cost proxy, the ground-truth cache (a second run trains nothing) and the smoke suite end to end via the CLI."""
from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats as st

from tgbench import stats
from tgbench.kinds.nas_proxy import analysis
from tgbench.kinds.nas_proxy import run as nas
from tgbench.cli import main
from tgbench.suite.loading import load_suite
from tgbench.data import load_dataset
from tgbench.identity import arch_id
from tgbench.nn import LearnerSpec
from tgbench.proxies import ProxyContext, train_real
from tgbench.registry import proxies
from tgbench.records import DONE, NasProxyScores
from tgbench.store import Store

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "suites" / "mnist_nas_proxy.yaml"


# ------------------------------------------------------------------------------------------- metrics
def test_correlations_match_scipy():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=40)
    score = truth + rng.normal(scale=1.0, size=40)
    assert analysis.METRICS["spearman"](score, truth) == pytest.approx(st.spearmanr(score, truth).statistic)
    assert analysis.METRICS["kendall"](score, truth) == pytest.approx(st.kendalltau(score, truth).statistic)
    top = np.argsort(-score)[:20]
    assert stats.top_half_spearman(score, truth) == pytest.approx(st.spearmanr(score[top], truth[top]).statistic)


def test_top_half_spearman_by_hand():
    # ten architectures, proxy ranks them 0..9; the true order agrees on the bottom half and is exactly reversed
    # on the top half: over all of them rho is clearly positive, over the proxy's top 50 % it is -1
    score = np.arange(10.0)
    truth = np.array([0, 1, 2, 3, 4, 9, 8, 7, 6, 5], dtype=float)
    assert analysis.METRICS["spearman"](score, truth) > 0.5
    assert stats.top_half_spearman(score, truth) == pytest.approx(-1.0)
    # odd n: the top ceil(n/2) = 3 of 5 are kept, and they agree perfectly
    assert stats.top_half_spearman([1, 2, 3, 4, 5], [5, 4, 1, 2, 3]) == pytest.approx(1.0)


def test_top10_precision_by_hand():
    truth = np.arange(20.0)                  # true top 10 % = indices 19, 18
    assert stats.top_precision(truth, truth) == 1.0
    assert stats.top_precision(-truth, truth) == 0.0
    score = np.zeros(20)
    score[19], score[3] = 10, 9              # proxy's top 2 = {19, 3}: one of the two true best
    assert stats.top_precision(score, truth) == 0.5
    # k = round(0.1 * 35) = 4 (3.5 rounds to even: 4); proxy finds 3 of the true top 4
    truth = np.arange(35.0)
    score = truth.copy()
    score[31] = -1
    assert stats.top_precision(score, truth) == 0.75


def test_bootstrap_ci_over_architectures():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=60)
    score = truth + rng.normal(scale=0.7, size=60)
    m = analysis.proxy_metrics(score, truth, resamples=300)
    for name in analysis.METRICS:
        assert m[f"{name}_low"] <= m[name] <= m[f"{name}_high"], name
    assert m["spearman_high"] - m["spearman_low"] > 0.05
    perfect = analysis.proxy_metrics(truth, truth, resamples=200)
    assert perfect["spearman_low"] == pytest.approx(1.0) and perfect["spearman_high"] == pytest.approx(1.0)
    assert math.isnan(stats.paired_bootstrap_ci(analysis.METRICS["spearman"], [1, 2], [1, 2])[0])


def test_random_search():
    truth = np.linspace(0.5, 0.9, 30)
    oracle = analysis.random_search(truth, truth, [5, 30], repeats=50)
    assert np.all(oracle[30] == truth.max())                     # every candidate drawn: the global best
    assert oracle[5].mean() > truth.mean()
    blind = analysis.random_search(np.zeros(30), truth, [5], repeats=400)[5]   # constant score: a random pick
    assert abs(blind.mean() - truth.mean()) < 0.02
    anti = analysis.random_search(-truth, truth, [30], repeats=5)[30]
    assert np.all(anti == truth.min())


# ------------------------------------------------------------------------------------------- search space
def test_search_space_has_200_distinct_stable_ids():
    suite = load_suite(SUITE)
    space = nas.enumerate_space(suite.learner)
    ids = [arch_id(s) for s in space]
    assert len(space) >= 200 and len(set(ids)) == len(space) == len(set(space))
    assert len({s.describe() for s in space}) == len(space)
    assert any(not s.conv_channels for s in space) and any(len(s.conv_channels) == 3 for s in space)
    # stable across processes and machines: a content hash, pinned here
    assert arch_id(LearnerSpec((16, 32), (64,), 3, "relu", True, True)) == "6c943b172b7a776d"
    assert nas.enumerate_space(suite.learner) == space
    scored = nas.scored_architectures(suite)
    assert len(scored) == suite.nas.n_architectures == len(set(scored))
    assert nas.scored_architectures(suite) == scored


# ------------------------------------------------------------------------------------------- zero-cost proxies
ZERO_COST = [n for n in proxies.names() if proxies.get(n).family == "zero-cost"]
ARCHS = [LearnerSpec((4,), (32,), 3, "relu"), LearnerSpec((8, 8), (), 5, "tanh"),
         LearnerSpec((), (64,), 3, "elu"), LearnerSpec((4, 8, 8), (32,), 3, "leaky_relu")]


@pytest.fixture(scope="module")
def proxy_ctx():
    suite = load_suite(SUITE, "smoke")
    return ProxyContext(load_dataset("mnist-5k"), suite, {})


def test_zero_cost_proxies_are_registered(capsys):
    assert set(ZERO_COST) >= {"synflow", "grad_norm", "snip", "jacob_cov", "nwot", "param_count"}
    assert main(["list", "proxies"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")}
    assert listed == set(proxies.names()) >= set(ZERO_COST) | {"teaching", "real_epochs"}


@pytest.mark.parametrize("name", ZERO_COST)
def test_zero_cost_proxy_finite_and_architecture_dependent(name, proxy_ctx, single_thread):
    cls = proxies.get(name)
    params = cls.Params.model_validate({"batch_size": 16} if "batch_size" in cls.Params.model_fields else {})
    proxy = cls(params, proxy_ctx)
    scores = [proxy.score(spec, seed=3) for spec in ARCHS]
    assert all(math.isfinite(s) for s in scores), scores
    assert len(set(scores)) == len(ARCHS), scores           # every architecture gets its own score
    assert proxy.score(ARCHS[0], seed=3) == scores[0]       # deterministic under a seed


def test_synflow_matches_its_closed_form_on_a_relu_mlp(proxy_ctx, single_thread):
    # with |W| weights, an all-ones input and ReLU, the (BN-free) MLP is linear with positive activations:
    # R = 1' |W2| |W1| 1 (+ zero biases), and sum(W * dR/dW) over each of the two layers is R itself, so S = 2R
    from tgbench.proxies import SynFlow, _plain_learner

    spec = LearnerSpec((), (32,), 3, "relu")
    learner = _plain_learner(spec, proxy_ctx, seed=5).double()
    with torch.no_grad():
        w1, w2 = learner.fcs[0].weight.abs(), learner.classifier.weight.abs()
        expected = 2 * float(w2.sum(0) @ (w1 @ torch.ones(784, dtype=torch.float64)))
    assert SynFlow(SynFlow.Params(), proxy_ctx).score(spec, seed=5) == pytest.approx(expected, rel=1e-9)


def test_nwot_matches_a_scipy_hamming_reference(proxy_ctx, single_thread):
    from scipy.spatial.distance import pdist, squareform

    from tgbench.proxies import NWOT, _plain_learner, _train_batch

    spec = LearnerSpec((), (64,), 3, "tanh")
    learner = _plain_learner(spec, proxy_ctx, seed=2)
    x = _train_batch(proxy_ctx, 16, seed=2).x
    with torch.no_grad():
        h = learner.fcs[0](x.flatten(1))
        codes = ((h - h.mean(0)) > 0).numpy()          # sign of the (mean-only BN) pre-activation
    kernel = codes.shape[1] * (1 - squareform(pdist(codes, "hamming")))
    expected = np.linalg.slogdet(kernel)[1]
    assert NWOT(NWOT.Params(batch_size=16), proxy_ctx).score(spec, seed=2) == pytest.approx(expected, rel=1e-9)


def test_train_real_learns_and_stops_early(proxy_ctx, single_thread):
    schedule = proxy_ctx.suite.nas.ground_truth.model_copy(update={"epochs": 2})
    result = train_real(LearnerSpec((4,), (32,), 3, "relu"), proxy_ctx.dataset, schedule, seed=0)
    assert result["val_acc"] > 0.5 and result["epochs_run"] == 2 and len(result["curve"]) == 2
    short = train_real(LearnerSpec((4,), (32,), 3, "relu"), proxy_ctx.dataset, schedule, seed=0, epochs=1.5,
                       evaluate_test=False, every_epoch=False)
    assert short["epochs_run"] == pytest.approx(1.5, abs=0.05) and short["test_acc"] is None
    assert len(short["curve"]) == 1
    patient = schedule.model_copy(update={"epochs": 12, "patience": 1})
    stopped = train_real(LearnerSpec((4,), (32,), 3, "relu"), proxy_ctx.dataset, patient, seed=0)
    curve = [p["val_acc"] for p in stopped["curve"]]
    # stops at the first epoch that does not beat the best so far, and reports the best epoch's accuracies
    assert stopped["epochs_run"] < 12 and curve[-1] <= max(curve[:-1])
    assert all(b > a for a, b in zip(curve[:-2], curve[1:-1])) and stopped["val_acc"] == max(curve)


# ------------------------------------------------------------------------------------------- config errors
def _write(tmp_path: Path, edit) -> Path:
    text = edit(SUITE.read_text())
    path = tmp_path / "nas.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace("{proxy: synflow}\n        - {proxy: grad_norm}",
                         "{proxy: synflw}\n        - {proxy: grad_norm}"), "did you mean 'synflow'"),
    (lambda t: t.replace("params: {source: gtn, steps: 8}", "params: {source: gtm, steps: 8}"), "no source labelled"),
    (lambda t: t.replace("n_architectures: 6", "n_architectures: 600"), "exceeds the 34 distinct"),
    (lambda t: t.replace("{proxy: param_count}\n      search",
                         "{proxy: param_count, params: {bacth: 1}}\n      search"), "params.bacth: unknown key"),
    (lambda t: t.replace("{proxy: jacob_cov, params: {batch_size: 16}}", "{proxy: jacob_cov, params: {batch_sze: 16}}"),
     "did you mean 'batch_size'"),
    (lambda t: t.replace("n_architectures: 6", "n_architecture: 6"), "did you mean 'n_architectures'"),
    (lambda t: t.replace("kind: nas_proxy", "kind: fewstep"), "only nas_proxy suites may have one"),
    (lambda t: t.split("\nnas:")[0] + "\n", "needs a `nas:` section"),
])
def test_bad_nas_config_is_one_line_exit_2(tmp_path, capsys, edit, expected):
    path = _write(tmp_path, edit)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and str(path) in err[0], err


# ------------------------------------------------------------------------------------------- end to end
def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


# Every run and report below (all on one store: the same settings, so the same hashes): none of these end-to-end
# tests is about what the teachers' cells measure beyond the teacher itself, nor about the CI's width. So the
# teachers skip FLOP counting and the held-out learners (a third of the fixture's time; test_equal_compute.py
# counts FLOPs, test_tune.py and test_suites.py run held-out learners), and the report's bootstraps take 20 resamples, not 200 (the report is written
# six times here; test_bootstrap_ci_over_architectures tests the CI itself).
LEAN = ("--set", "evaluation.count_flops=false", "--set", "evaluation.held_out={}",
        "--set", "nas.bootstrap_resamples=20")


def _run_args(folder: Path, suite: Path = SUITE) -> list[str]:
    return ["run", str(suite), "--profile", "smoke", "--no-progress", *LEAN, "--storage", f"sqlite:///{folder}/t.db",
            "--out", str(folder / "out")]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """One run of the shipped smoke suite from an empty store (its exit code, and the architectures trained for
    the ground truth and the sources meta-trained for teachers on the way). Tests work on a copy of its folder
    (store, teacher artifacts next to it, report), so that the suite's one expensive run is done once."""
    folder = tmp_path_factory.mktemp("nas_first_run")
    trainings, meta_trainings = [], []
    real_train, real_run_cell = nas.train_real, nas.run_cell
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nas, "train_real", lambda *a, **k: trainings.append(a[0]) or real_train(*a, **k))
        mp.setattr(nas, "run_cell", lambda task: meta_trainings.append(task.spec.arm) or real_run_cell(task))
        code = main(_run_args(folder))
    return folder, code, trainings, meta_trainings


def _copy_of(first_run, tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    shutil.copytree(first_run[0], folder)
    return folder


@pytest.mark.slow
def test_smoke_suite_end_to_end_and_cache(first_run, tmp_path, monkeypatch):
    folder = _copy_of(first_run, tmp_path)
    _, code, first_trainings, first_meta_trainings = first_run
    trainings = []
    real_train = nas.train_real
    monkeypatch.setattr(nas, "train_real", lambda *a, **k: trainings.append(a[0]) or real_train(*a, **k))
    meta_trainings = []
    real_run_cell = nas.run_cell
    monkeypatch.setattr(nas, "run_cell", lambda task: meta_trainings.append(task.spec.arm) or real_run_cell(task))
    args = _run_args(folder)
    suite = load_suite(SUITE, "smoke", LEAN[1::2])
    n_arch, n_seeds = suite.nas.n_architectures, suite.nas.ground_truth.seeds

    assert code == 0
    assert len(first_trainings) == n_arch * n_seeds
    assert sorted(first_meta_trainings) == ["dataset_distillation", "gtn", "real"]
    tmp_path = folder   # (the paths below are the copy's)
    out = tmp_path / "out"
    for name in ("report.md", "scatter.png", "cost.png", "random_search.png"):
        assert (out / name).stat().st_size > 0, name
    metrics = _rows(out / "metrics.csv")
    assert [r["proxy"] for r in metrics] == [e.name for e in suite.nas.proxies]
    assert all(-1 <= float(r["spearman"]) <= 1 and float(r["seconds_per_arch"]) > 0 for r in metrics)
    archs = _rows(out / "architectures.csv")
    assert len(archs) == n_arch and all(0 < float(a["test_acc"]) <= 1 for a in archs)
    search = _rows(out / "random_search.csv")
    assert {r["proxy"] for r in search} >= {analysis.ORACLE, analysis.RANDOM}
    report = (out / "report.md").read_text()
    assert "Spearman" in report and "Random-search" in report
    store = Store(f"sqlite:///{tmp_path}/t.db")
    trials = {s: len(store.study(s).trials) for s in store.study_names()}

    # second run: the ground truth, the teachers and every proxy score come from the store
    trainings.clear(), meta_trainings.clear()
    assert main(args) == 0
    assert trainings == [] and meta_trainings == []
    assert {s: len(store.study(s).trials) for s in store.study_names()} == trials
    assert _rows(out / "architectures.csv") == archs

    # a teacher stored by another suite's study is loaded by reference: the same teacher, the same scores
    extra = "        - {proxy: teaching, label: gtn-stored, params: {source: mnist_nas_proxy@smoke/gtn, steps: 8}}\n"
    text = SUITE.read_text().replace("        - {proxy: param_count}\n      search", "        - {proxy: param_count}\n"
                                     + extra + "      search")
    assert "gtn-stored" in text
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "nas.yaml").write_text(text)
    assert main([*args[:1], str(tmp_path / "suite" / "nas.yaml"), *args[2:-1], str(tmp_path / "out2")]) == 0
    assert trainings == [] and meta_trainings == []
    archs2 = _rows(tmp_path / "out2" / "architectures.csv")
    assert [a["score:gtn-stored"] for a in archs2] == [a["score:gtn-8"] for a in archs2]

    # report-only rebuild from the store
    (out / "report.md").unlink()
    assert main(["report", str(SUITE), "--profile", "smoke", *LEAN, "--storage", f"sqlite:///{tmp_path}/t.db",
                 "--out", str(out)]) == 0
    assert (out / "report.md").read_text().split("## Proxy quality")[1] == report.split("## Proxy quality")[1]


@pytest.mark.slow
def test_a_kill_while_a_proxy_record_is_written_never_leaves_a_done_record_without_scores(first_run, tmp_path,
                                                                                        monkeypatch):
    """A proxy's record is written key by key; a kill in between (here: a KeyboardInterrupt when the scores are
    written) must leave a record that is not done, so the next run scores the proxy again. Before the fix its
    status was written second, so such a record counted as complete and every rerun failed on its scores.
    (On a copy of the finished smoke run, with one proxy added: ground truth and teachers come from the store,
    and the new proxy is the one whose record the kill interrupts.)"""
    import optuna

    folder = _copy_of(first_run, tmp_path)
    text = SUITE.read_text().replace("        - {proxy: param_count}\n      search",
                                     "        - {proxy: param_count}\n        - {proxy: grad_norm, label: killed}\n"
                                     "      search")
    assert "label: killed" in text
    (folder / "nas.yaml").write_text(text)
    args = _run_args(folder, folder / "nas.yaml")
    real_set = optuna.trial.Trial.set_user_attr
    killed = []

    def kill_at_scores(self, key, value):
        if key == "scores" and not killed:
            killed.append(key)
            raise KeyboardInterrupt
        return real_set(self, key, value)

    with monkeypatch.context() as mp:
        mp.setattr(optuna.trial.Trial, "set_user_attr", kill_at_scores)
        assert main(args) == 130
    assert killed
    store = Store(f"sqlite:///{folder}/t.db")
    proxy_records = [r for name in store.study_names() for r in store.records(store.study(name, create=False))
                     if isinstance(r, NasProxyScores)]
    for r in proxy_records:
        assert r.status != "complete" or "scores" in r.model_fields_set, r.cell
    assert [r.status in DONE for r in proxy_records if r.label == "killed"] == [False]   # interrupted: not done
    assert main(args) == 0   # the rerun scores the interrupted proxy and reports

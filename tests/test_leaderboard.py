"""The leaderboard: comparable studies share a table and nothing else does; numbers come from the store; records
written before the ``protocol`` / ``meta_train_flops`` fields existed still rank (protocol and FLOPs recovered
from their teacher artifacts, or a per-suite table when even that is missing); FLOP counts replay the trainer's
architecture sequence; the Pareto front.

Three tiny suites are run once into one store: ``alpha`` and ``beta`` share a protocol (they differ only in arms
and outer-loop budget), ``gamma`` changes the number of inner steps.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tgbench import stats
from tgbench.cli import main
from tgbench.suite.loading import load_suite
from tgbench.compute import meta_train_flops, synthetic_dataset
from tgbench.identity import protocol_of
from tgbench.leaderboard import Row, collect, mark_pareto
from tgbench.problem import Problem
from tgbench.builders import build_trainer
from tgbench.runner import RunOptions, run_suite
from tgbench.records import FewstepCell
from tgbench.store import Store

PROTOCOL = """
dataset: {name: mnist-5k}
learner: {conv_channels: [[4, 8]], fc_hidden: [[16]]}
inner: {steps: STEPS, batch_size: 20}
outer: {iterations: 2, lr: 0.01, meta_batch_size: 32}
evaluation: {seeds: 1, eval_every: 2, eval_learners: 1, final_learners: 1, held_out: {}}
profiles: {smoke: {}}
"""
SUITES = {
    # (a suite overrides the shared protocol's lines by replacing them: YAML duplicate keys are an error)
    "alpha": PROTOCOL.replace("STEPS", "4").replace("evaluation: {seeds: 1,", "evaluation: {seeds: 2,") + """
sources:
  - method: real
""",
    "beta": PROTOCOL.replace("STEPS", "4").replace("outer: {iterations: 2, lr: 0.01,",
                                                   "outer: {iterations: 3, lr: 0.02,") + """
sources:
  - method: dataset_distillation
  - method: real
""",
    "gamma": PROTOCOL.replace("STEPS", "6") + """
sources:
  - method: real
""",
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("board")
    url = f"sqlite:///{tmp}/store.db"
    try:
        for name, text in SUITES.items():
            path = tmp / f"{name}.yaml"
            path.write_text(f"name: {name}\n" + text)
            run_suite(str(path), RunOptions(profile="smoke", storage=url, out=str(tmp / name), progress=False),
                      log=lambda *a, **k: None)
    finally:
        torch.set_num_threads(old)
    return Store(url)


def records_of(store: Store, suite: str) -> list[FewstepCell]:
    return store.records(store.study(f"{suite}@smoke", create=False))


def test_two_comparable_studies_share_a_table_the_third_gets_its_own(store):
    tables = collect(store, log=lambda *a: None)
    assert len(tables) == 2
    arms = [{(r.suite, r.source) for r in t.rows} for t in tables]
    assert {("alpha", "real"), ("beta", "real"), ("beta", "dataset_distillation")} in arms
    assert {("gamma", "real")} in arms
    for table in tables:
        accs = [r.accuracy.mean for r in table.rows]
        assert accs == sorted(accs, reverse=True)  # ranked
        assert any(r.pareto for r in table.rows)
        assert all(r.flops > 0 and r.meta_train_seconds > 0 for r in table.rows)
    # the row's number is stats.mean_ci over the store's records of that arm (two seeds here)
    shared = next(t for t in tables if len(t.rows) == 3)
    row = next(r for r in shared.rows if (r.suite, r.source) == ("alpha", "real"))
    values = [r.test_acc_final for r in records_of(store, "alpha") if r.source == "real"]
    assert row.seeds_complete == 2 and row.accuracy == stats.mean_ci(values)
    assert shared.protocol["inner"]["steps"] == 4 and shared.protocol["dataset"] == "mnist-5k"


def test_cli_writes_markdown_csv_and_pareto_figures(store, tmp_path, capsys):
    out = tmp_path / "board" / "LEADERBOARD.md"
    assert main(["leaderboard", "--storage", store.url, "--out", str(out)]) == 0, capsys.readouterr().err
    md = out.read_text()
    assert md.count("\n## ") == 2 and "protocol" in md and "★" in md
    csv = pd.read_csv(out.with_suffix(".csv"))
    assert len(csv) == 4 and csv["table"].nunique() == 2
    assert csv.groupby("table")["rank"].apply(lambda r: sorted(r) == list(range(1, len(r) + 1))).all()
    figures = sorted((out.parent / "LEADERBOARD_figures").glob("pareto_*.png"))
    assert len(figures) == 2 and all(f.stat().st_size > 1000 for f in figures)
    assert all(f"LEADERBOARD_figures/{f.name}" in md for f in figures)
    # the web page of the same frame beside it (its own test: tests/test_leaderboard_page.py)
    page = (out.parent / "LEADERBOARD_site" / "index.html").read_text()
    assert page.count("<section class=\"protocol-table\"") == 2 and all(f'src="{f.name}"' in page for f in figures)


def copy_without(src: Store, url: str, drop: set[str], artifacts_dir) -> Store:
    """A store whose records look like those written before ``drop`` existed (same trials, fewer fields)."""
    dst = Store(url, artifacts_dir)
    for name in src.study_names():
        study = dst.study(name)
        for trial in src.study(name, create=False).get_trials(deepcopy=False):
            new = study.ask()
            for key, value in trial.user_attrs.items():
                if key not in drop:
                    new.set_user_attr(key, value)
            study.tell(new, trial.value)
    return dst


def test_records_from_before_the_protocol_fields_rank_the_same(store, tmp_path):
    new = collect(store, log=lambda *a: None)
    old_store = copy_without(store, f"sqlite:///{tmp_path}/old.db", {"protocol", "meta_train_flops"},
                             store.artifacts_dir)
    old = collect(old_store, log=lambda *a: None)
    assert [t.key for t in old] == [t.key for t in new]  # protocol recovered from the teacher artifacts
    for t_old, t_new in zip(old, new):
        assert [(r.suite, r.source, r.accuracy) for r in t_old.rows] == [(r.suite, r.source, r.accuracy)
                                                                        for r in t_new.rows]
        # FLOPs measured now from the artifact's suite == FLOPs recorded at run time
        assert [r.flops for r in t_old.rows] == [r.flops for r in t_new.rows]


def test_without_artifacts_unknown_protocols_never_mix_suites(store, tmp_path, capsys):
    empty = tmp_path / "no-artifacts"
    empty.mkdir()
    old_store = copy_without(store, f"sqlite:///{tmp_path}/old.db", {"protocol", "meta_train_flops"}, empty)
    messages = []
    tables = collect(old_store, log=messages.append)
    assert sorted({r.suite for r in t.rows}.pop() for t in tables) == ["alpha", "beta", "gamma"]
    assert all(len({r.suite for r in t.rows}) == 1 for t in tables)
    assert all(math.isnan(r.flops) for t in tables for r in t.rows)
    assert messages and "unavailable" in messages[0]
    out = tmp_path / "LEADERBOARD.md"
    assert main(["leaderboard", "--storage", old_store.url, "--artifacts", str(empty), "--out", str(out)]) == 0
    assert "not recorded" in out.read_text() and "n/a" in out.read_text()


def test_protocol_covers_exactly_the_comparability_fields(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: p\n" + SUITES["alpha"])
    base = load_suite(path, "smoke").model_dump(mode="json")
    reference = protocol_of(base, "mnist-5k")
    free = [("outer", "iterations", 50), ("outer", "meta_batch_size", 8), ("evaluation", "seeds", 7),
            ("evaluation", "eval_every", 1), ("inner", "lr", 0.5)]
    fixed = [("inner", "steps", 8), ("inner", "batch_size", 10), ("inner", "optimizer", "adam"),
             ("learner", "fc_hidden", [[32]]), ("learner", "weight_norm", False),
             ("evaluation", "final_learners", 3), ("evaluation", "architectures", [{"fc_hidden": [8]}])]
    for section, key, value in free + fixed:
        changed = {**base, section: {**base[section], key: value}}
        assert (protocol_of(changed, "mnist-5k") == reference) == ((section, key, value) in free), (section, key)
    assert protocol_of(base, "mnist") != reference


def test_flop_count_replays_the_trainers_architecture_sequence(tmp_path, single_thread):
    path = tmp_path / "space.yaml"
    two_archs = SUITES["gamma"].replace("conv_channels: [[4, 8]]", "conv_channels: [[4, 8], [8]]")
    path.write_text("name: space\n" + two_archs)
    suite = load_suite(path, "smoke")
    entry = suite.sources[0]
    data = synthetic_dataset(Problem((1, 28, 28), 10), suite.inner.batch_size, suite.outer.meta_batch_size)
    trainer = build_trainer(suite, entry, data, seed=3)
    per_step, archs = [], []
    for _ in range(6):
        counter = FlopCounterMode(display=False)
        with counter:
            archs.append(trainer.step().architecture)
        per_step.append(counter.get_total_flops())
    assert len(set(archs)) == 2 and len(set(per_step)) == 2  # both architectures drawn, different costs
    assert meta_train_flops(suite, entry, Problem((1, 28, 28), 10), seed=3, iterations=6) == sum(per_step)


def _row(name: str, acc: float, flops: float) -> Row:
    return Row("s", "s", "smoke", name, "m", "", "h", stats.MeanCI(acc, acc, acc, 1), 1, 1, 0, 1.0, flops, "", "")


def test_pareto_front():
    rows = [_row("cheap", 0.80, 1e9), _row("best", 0.95, 1e12), _row("dominated", 0.79, 1e10),
            _row("middle", 0.90, 1e10), _row("tie_worse", 0.90, 2e10), _row("unknown", 0.99, math.nan)]
    mark_pareto(rows)
    assert {r.source for r in rows if r.pareto} == {"cheap", "best", "middle"}


def test_leaderboard_of_a_missing_store_is_bad_input(tmp_path, capsys):
    missing = tmp_path / "nope.db"
    assert main(["leaderboard", "--storage", f"sqlite:///{missing}", "--out", str(tmp_path / "L.md")]) == 2
    assert "no store at" in capsys.readouterr().err and not missing.exists()


def test_keep_carries_a_committed_leaderboard_whose_stores_are_gone(tmp_path, capsys):
    """``--keep`` with a store that holds none of its tables: every row of the earlier CSV is on the new board,
    unchanged; a file that is no leaderboard CSV is exit 2 naming the flag and the file."""
    committed = Path(__file__).resolve().parents[1] / "results" / "LEADERBOARD.csv"
    url = f"sqlite:///{tmp_path}/empty.db"
    Store(url).study("nothing@smoke")
    out = tmp_path / "LEADERBOARD.md"
    assert main(["leaderboard", "--storage", url, "--keep", str(committed), "--out", str(out)]) == 0
    read = lambda path: pd.read_csv(path, keep_default_na=False, na_values=[""])  # noqa: E731
    pd.testing.assert_frame_equal(read(tmp_path / "LEADERBOARD.csv")[read(committed).columns], read(committed))
    bad = tmp_path / "not.csv"
    bad.write_text("a,b\n1,2\n")
    code = main(["leaderboard", "--storage", url, "--keep", str(bad), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--keep" in err[0] and str(bad) in err[0]

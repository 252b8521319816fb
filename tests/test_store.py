"""The experiment store end to end: records written by ``tgbench run``, resume (done cells are never re-run),
new seeds, config-hash keyed re-runs, report-only rebuilds, failed and diverged cells.

One module fixture runs the shipped ``suites/mnist_fewstep.yaml`` smoke profile once (3 cells); every other
scenario uses a tiny suite written to tmp_path (2-step inner loop, 1 outer iteration, 4-channel learner) so the
file stays fast. Everything goes through ``tgbench.cli.main`` in-process, into tmp storage.
"""
from __future__ import annotations

import csv
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from tgbench import cells, engine, identity
from tgbench.kinds.fewstep import run as fewstep
from tgbench.cli import main
from tgbench.suite.loading import load_suite
from tgbench.errors import BadInput
from tgbench.records import DONE, FewstepCell, Status, cell_key
from tgbench.store import Store, config_hash
from tgbench.tuning import tuned_values

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "suites" / "mnist_fewstep.yaml"

TINY = """\
name: {name}
dataset: {{name: mnist-5k}}
learner: {{conv_channels: [[4]], fc_hidden: [[8]], batch_norm: false}}
inner: {{steps: 2, batch_size: 10}}
outer: {{iterations: 1, meta_batch_size: 16}}
evaluation: {{seeds: 1, eval_every: 1, eval_learners: 1, final_learners: 1, held_out: {{}}, count_flops: false}}
sources:
{sources}
profiles:
  smoke: {smoke}
"""
TINY_GTN = "  - method: gtn\n    params: {noise_dim: 4, fc_hidden: 8, channels: [4, 4]}\n"


def tiny_suite(path: Path, name: str, sources: str, smoke: str = "{}") -> Path:
    path.write_text(TINY.format(name=name, sources=sources, smoke=smoke))
    return path


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("TGBENCH_STORAGE", "TGBENCH_ARTIFACTS", "TGBENCH_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster than two fighting over 2 cores
    yield
    torch.set_num_threads(threads)


def _run(suite: Path, tmp: Path, *extra: str, command: str = "run") -> int:
    argv = [command, str(suite), "--profile", "smoke", "--storage", f"sqlite:///{tmp}/t.db", "--out", str(tmp / "out")]
    if command == "run":
        argv.append("--no-progress")
    return main(argv + list(extra))


def _trials(tmp: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    return Store(f"sqlite:///{tmp}/t.db").study(study, create=False).get_trials(deepcopy=False)


def _summary(tmp: Path) -> list[dict]:
    with open(tmp / "out" / "summary.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _forbid_work(monkeypatch) -> None:
    def no_work(task):
        raise AssertionError(f"cell {task.spec.arm} seed {task.spec.seed} was re-run")

    monkeypatch.setattr(fewstep, "run_cell", no_work)


def _report_table(report: Path) -> dict[str, dict[str, str]]:
    """source -> {column: cell} of the first results table in report.md."""
    lines = report.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| source |") and "diverged" in line)
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


# ------------------------------------------------------------------------------------------ the shipped suite
@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """`tgbench run suites/mnist_fewstep.yaml --profile smoke --seeds 1` into a tmp store, once."""
    tmp = tmp_path_factory.mktemp("shipped")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("TGBENCH_STORAGE", "TGBENCH_ARTIFACTS", "TGBENCH_DEBUG"):
            mp.delenv(var, raising=False)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            code = _run(SHIPPED, tmp, "--seeds", "1")
        finally:
            torch.set_num_threads(threads)
    return code, tmp


def test_shipped_smoke_run_writes_report(shipped):
    code, tmp = shipped
    assert code == 0
    assert (tmp / "out" / "report.md").is_file()
    rows = _summary(tmp)
    smoke = load_suite(SHIPPED, "smoke")
    assert sorted(r["source"] for r in rows) == sorted(s.name for s in smoke.sources)
    for r in rows:
        assert r["status"] == "complete"
        assert r["dataset_resolved"] == "mnist-5k"
        assert r["seed"] == "0"
        assert 0.0 <= float(r["test_acc_final"]) <= 1.0


def test_shipped_smoke_records_hold_the_required_fields(shipped):
    code, tmp = shipped
    assert code == 0
    smoke = load_suite(SHIPPED, "smoke")
    store = Store(f"sqlite:///{tmp}/t.db")
    study = store.study("mnist_fewstep@smoke", create=False)
    records = store.records(study)
    assert len(records) == len(smoke.sources)
    by_source = {r.source: r for r in records}
    chosen = tuned_values(store, smoke, "smoke", "mnist-5k")  # the shipped suite tunes every arm first
    for entry in smoke.sources:
        r = by_source[entry.name]
        assert r.status == "complete"
        assert r.cell == cell_key(entry.name, 0)
        assert r.config_hash == identity.cell_hash(smoke, cells.tuned_arm(smoke, entry, chosen[entry.name]),
                                                    "mnist-5k")
        assert r.dataset_resolved == "mnist-5k"
        assert r.dataset == "mnist-5k"
        # curve: one val/test point per evaluation, from outer iteration 0 to the last one
        iterations = smoke.outer_for(entry).iterations   # (real_sgd meta-trains for one iteration)
        assert [p["outer_iter"] for p in r.curve] == sorted({*range(0, iterations + 1,
                                                                       smoke.evaluation.eval_every), iterations})
        for point in r.curve:
            assert 0.0 <= point["val_acc"] <= 1.0 and 0.0 <= point["test_acc"] <= 1.0
        assert len(r.steps_test_acc) == smoke.inner.steps + 1
        assert len(r.steps_val_acc) == smoke.inner.steps + 1
        assert r.test_acc_final == r.steps_test_acc[-1]
        assert r.outer_iterations == iterations
        assert r.meta_train_seconds > 0
        assert r.peak_rss_mb > 0
        assert r.torch == torch.__version__
        assert isinstance(r.revision, str) and r.revision
        assert r.teacher_artifact
    # the saved teacher can be read back
    teacher = store.load_teacher(by_source["gtn"].teacher_artifact)
    assert teacher["method"] == "gtn" and teacher["dataset_resolved"] == "mnist-5k"
    # trials are closed: none is left 'running'
    assert all(t.state == TrialState.COMPLETE for t in study.get_trials())


def test_shipped_rerun_does_no_work_and_rebuilds_report(shipped, monkeypatch):
    code, tmp = shipped
    assert code == 0
    before = len(_trials(tmp, "mnist_fewstep@smoke"))
    (tmp / "out" / "report.md").unlink()
    (tmp / "out" / "summary.csv").unlink()
    _forbid_work(monkeypatch)
    assert _run(SHIPPED, tmp, "--seeds", "1") == 0
    assert len(_trials(tmp, "mnist_fewstep@smoke")) == before
    assert (tmp / "out" / "report.md").is_file()
    assert len(_summary(tmp)) == before


def test_shipped_report_rebuilds_from_store_alone(shipped, monkeypatch):
    code, tmp = shipped
    assert code == 0
    _forbid_work(monkeypatch)
    monkeypatch.setattr(cells, "meta_train", lambda *a, **k: pytest.fail("report trained something"))
    (tmp / "out" / "summary.csv").unlink()
    assert _run(SHIPPED, tmp, "--seeds", "1", command="report") == 0
    assert {r["status"] for r in _summary(tmp)} == {"complete"}


def test_report_for_a_profile_never_run(shipped, capsys):
    code, tmp = shipped
    assert code == 0
    capsys.readouterr()
    argv = ["report", str(SHIPPED), "--profile", "cpu", "--storage", f"sqlite:///{tmp}/t.db",
            "--out", str(tmp / "out_cpu")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mnist_fewstep@cpu" in err[0]


# ------------------------------------------------------------------------------------------ resume, seeds, hash
@pytest.mark.slow
def test_new_seed_and_changed_protocol(tmp_path, monkeypatch):
    sources = "  - method: real\n" + TINY_GTN
    suite = tiny_suite(tmp_path / "tiny.yaml", "tiny", sources)
    n_sources = 2

    assert _run(suite, tmp_path, "--seeds", "1") == 0
    first = _trials(tmp_path, "tiny@smoke")
    assert len(first) == n_sources

    # --seeds 2: exactly the new seed's cells run
    assert _run(suite, tmp_path, "--seeds", "2") == 0
    second = _trials(tmp_path, "tiny@smoke")
    new = second[len(first):]
    assert len(new) == n_sources
    assert sorted(t.user_attrs["cell"] for t in new) == sorted(cell_key(s, 1) for s in ("real", "gtn"))
    assert len(_summary(tmp_path)) == 2 * n_sources
    original = {t.user_attrs["cell"]: t.user_attrs for t in second}

    # same suite name, different outer.lr in the smoke profile: every cell runs again under a new hash
    changed = tiny_suite(tmp_path / "changed.yaml", "tiny", sources, smoke="{outer: {lr: 0.05}}")
    assert _run(changed, tmp_path, "--seeds", "1") == 0
    third = _trials(tmp_path, "tiny@smoke")
    redone = third[len(second):]
    assert len(redone) == n_sources
    for t in redone:
        assert t.user_attrs["config_hash"] != original[t.user_attrs["cell"]]["config_hash"]

    # the original suite still counts its own cells as done ...
    _forbid_work(monkeypatch)
    assert _run(suite, tmp_path, "--seeds", "2") == 0
    assert len(_trials(tmp_path, "tiny@smoke")) == len(third)
    # ... and its report holds only records run under its config, not the newer changed-protocol ones
    (tmp_path / "out" / "summary.csv").unlink()
    assert _run(suite, tmp_path, "--seeds", "2", command="report") == 0
    rows = _summary(tmp_path)
    assert len(rows) == 2 * n_sources
    for row in rows:
        expected = original[cell_key(row["source"], int(row["seed"]))]
        assert float(row["meta_train_seconds"]) == pytest.approx(expected["meta_train_seconds"], rel=1e-9)
    changed_seconds = {t.user_attrs["meta_train_seconds"] for t in redone}
    assert not changed_seconds & {float(r["meta_train_seconds"]) for r in rows}


# ------------------------------------------------------------------------------------------ failures
def test_failed_cell_is_recorded_and_rerun(tmp_path, monkeypatch, capsys):
    suite = tiny_suite(tmp_path / "fail.yaml", "failing", "  - method: dataset_distillation\n")

    def broken_step(self):
        raise RuntimeError("injected failure")

    with monkeypatch.context() as mp:
        mp.setattr(engine.MetaTrainer, "step", broken_step)
        capsys.readouterr()
        assert _run(suite, tmp_path) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert err[0].startswith("tgbench: error: RuntimeError: injected failure")
        assert "TGBENCH_DEBUG" in err[0]

        trials = _trials(tmp_path, "failing@smoke")
        assert len(trials) == 1
        assert trials[0].user_attrs["status"] == "failed"
        assert "RuntimeError: injected failure" in trials[0].user_attrs["error"]
        assert trials[0].state == TrialState.FAIL

        # under TGBENCH_DEBUG the exception propagates (with its traceback), still marking the cell failed
        mp.setenv("TGBENCH_DEBUG", "1")
        with pytest.raises(RuntimeError, match="injected failure"):
            _run(suite, tmp_path)
        trials = _trials(tmp_path, "failing@smoke")
        assert [t.user_attrs["status"] for t in trials] == ["failed", "failed"]

    # the fault is gone: the failed cell is re-run and completes
    assert _run(suite, tmp_path) == 0
    trials = _trials(tmp_path, "failing@smoke")
    assert [t.user_attrs["status"] for t in trials] == ["failed", "failed", "complete"]
    assert [r["status"] for r in _summary(tmp_path)] == ["complete"]
    assert not any(t.user_attrs["status"] == "running" for t in trials)


def test_diverged_cell_is_recorded_reported_and_not_rerun(tmp_path, monkeypatch):
    suite = tiny_suite(tmp_path / "div.yaml", "diverging", TINY_GTN, smoke="{inner: {lr: 1.0e30}}")
    assert _run(suite, tmp_path) == 0
    trials = _trials(tmp_path, "diverging@smoke")
    assert len(trials) == 1
    attrs = trials[0].user_attrs
    assert attrs["status"] == "diverged"
    assert attrs["error"]
    assert attrs["dataset_resolved"] == "mnist-5k"
    assert [r["status"] for r in _summary(tmp_path)] == ["diverged"]
    table = _report_table(tmp_path / "out" / "report.md")
    assert table["gtn"]["diverged"] == "1"
    assert table["gtn"]["failed"] == "0"

    _forbid_work(monkeypatch)
    assert _run(suite, tmp_path) == 0
    assert len(_trials(tmp_path, "diverging@smoke")) == 1


# ------------------------------------------------------------------------------------------ Store unit behaviour
def test_config_hash_is_stable_and_order_free():
    a = config_hash({"x": 1, "y": [1, 2], "z": {"p": 0.1}})
    assert a == config_hash({"z": {"p": 0.1}, "y": [1, 2], "x": 1})
    assert a != config_hash({"x": 1, "y": [1, 2], "z": {"p": 0.2}})
    assert len(a) == 16 and int(a, 16) >= 0


def test_records_prefer_finished_attempts_and_filter_by_hash(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/u.db", tmp_path / "artifacts")
    study = store.study("unit@smoke")
    k0, k1, k2 = cell_key("a", 0), cell_key("a", 1), cell_key("a", 2)

    def record(key: str, chash: str, status: Status, **fields) -> FewstepCell:
        return FewstepCell(cell=key, config_hash=chash, status=status, **fields)

    store.finish(study, store.begin(study, k0, "h1"), record(k0, "h1", Status.FAILED, error="x"))
    store.finish(study, store.begin(study, k0, "h1"), record(k0, "h1", Status.COMPLETE, test_acc_final=0.5))
    store.finish(study, store.begin(study, k0, "h1"), record(k0, "h1", Status.FAILED, error="later"))
    store.finish(study, store.begin(study, k1, "h1"), record(k1, "h1", Status.DIVERGED, test_acc_final=0.1))
    store.begin(study, k2, "h1")                       # interrupted: left running
    store.finish(study, store.begin(study, k1, "h2"), record(k1, "h2", Status.COMPLETE, test_acc_final=0.5))

    assert store.done_cells(study) == {(k0, "h1"), (k1, "h1"), (k1, "h2")}
    assert set(DONE) == {"complete", "diverged"}
    newest = {r.cell: r for r in store.records(study, {k0: {"h1"}, k1: {"h1"}, k2: {"h1"}})}
    assert newest[k0].status == "complete"            # a finished record beats a later failed attempt
    assert newest[k1].status == "diverged" and newest[k1].config_hash == "h1"
    assert newest[k2].status == "running"
    only_h2 = store.records(study, {k1: {"h2"}})
    assert [(r.cell, r.config_hash) for r in only_h2] == [(k1, "h2")]


def test_store_bad_inputs(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/u.db")
    with pytest.raises(BadInput, match="no study 'nothing'"):
        store.study("nothing", create=False)
    assert store.study_names() == []
    store.study("suite@cpu/tuning/gtn")   # a run still tuning: the report's study is not there yet, and says so
    with pytest.raises(BadInput, match=r"no study 'suite@cpu' .* yet, only suite@cpu/tuning/gtn: .*tuning stage"):
        store.study("suite@cpu", create=False)
    with pytest.raises(BadInput, match="--storage"):
        Store("notascheme://x")
    with pytest.raises(BadInput, match="not found"):
        store.load_teacher("no-such-artifact")


# ------------------------------------------------------------------------------------------ storage URLs
IN_MEMORY = ["sqlite://", "sqlite:///:memory:", "sqlite+pysqlite:///:memory:", "sqlite:///",
             "sqlite:///file::memory:?uri=true", "sqlite:///file:x?mode=memory&uri=true"]


@pytest.mark.parametrize("url", IN_MEMORY)
def test_in_memory_sqlite_storage_is_refused(url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadInput) as info:
        Store(url)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("--storage: ") and "in-memory" in msg and repr(url) in msg
    monkeypatch.setenv("TGBENCH_STORAGE", url)
    with pytest.raises(BadInput, match="in-memory"):
        Store()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", IN_MEMORY[:3])
@pytest.mark.parametrize("command", ["run", "report"])
def test_in_memory_storage_is_refused_by_the_cli_before_any_work(url, command, tmp_path, capsys, monkeypatch):
    """(`run` with such a store used to loop for ever: each cell wrote to its own private database)"""
    monkeypatch.chdir(tmp_path)
    suite = tiny_suite(tmp_path / "tiny.yaml", "tiny", "  - method: real\n")
    monkeypatch.setattr(fewstep, "run_cell", lambda task: pytest.fail("a cell ran"))
    argv = [command, str(suite), "--profile", "smoke", "--storage", url, "--out", str(tmp_path / "out")]
    assert main(argv + (["--no-progress"] if command == "run" else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--storage" in err[0] and "in-memory" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]  # no report dir, no database


def test_in_memory_storage_from_the_environment_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = tiny_suite(tmp_path / "tiny.yaml", "tiny", "  - method: real\n")
    monkeypatch.setattr(fewstep, "run_cell", lambda task: pytest.fail("a cell ran"))
    monkeypatch.setenv("TGBENCH_STORAGE", "sqlite://")
    assert main(["run", str(suite), "--profile", "smoke", "--no-progress", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "in-memory" in err[0], err


@pytest.mark.parametrize("default", [False, True], ids=["--storage", "default_store"])
def test_report_on_a_store_that_does_not_exist_creates_nothing(default, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = tiny_suite(tmp_path / "tiny.yaml", "tiny", "  - method: real\n")
    missing = Path("results/tgbench.db") if default else tmp_path / "sub" / "none.db"
    argv = ["report", str(suite), "--profile", "smoke", "--out", str(tmp_path / "out")]
    assert main(argv + ([] if default else ["--storage", f"sqlite:///{missing}"])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"no store at {missing}" in err[0] and "tgbench run" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]  # no database, no folder, no report dir


def test_report_on_an_existing_store_still_works(tmp_path, capsys):
    suite = tiny_suite(tmp_path / "tiny.yaml", "tiny", "  - method: real\n")
    assert _run(suite, tmp_path) == 0
    (tmp_path / "out" / "report.md").unlink()
    assert _run(suite, tmp_path, command="report") == 0
    assert (tmp_path / "out" / "report.md").is_file()


def test_load_teacher_refuses_payloads_that_are_not_teachers(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/u.db", tmp_path / "artifacts")
    study = store.study("unit@smoke")
    trial = store.begin(study, cell_key("a", 0), "h1")
    good = store.save_teacher(study, trial, {"method": "real", "state_dict": {"w": torch.ones(2)}, "seed": 0})
    assert torch.equal(store.load_teacher(good)["state_dict"]["w"], torch.ones(2))  # weights_only reads these
    for payload in ({"format": "tgbench-teacher/1"}, {"state_dict": {}}, {"state_dict": {"w": [1.0]}}, [1, 2]):
        artifact = store.save_teacher(study, trial, payload)
        with pytest.raises(BadInput, match=f"teacher artifact {artifact} .*not a tgbench teacher"):
            store.load_teacher(artifact)


def test_an_sqlite_store_commits_without_waiting_for_the_disk(tmp_path):
    """Hundreds of one-attribute transactions per run: in SQLite's default rollback mode each waited for several
    fsyncs (~10-20 ms here, a third of the quick start); the store runs in WAL mode with synchronous=NORMAL."""
    store = Store(f"sqlite:///{tmp_path}/s.db")
    store.study("s@smoke")
    with store.storage.engine.connect() as con:
        assert con.exec_driver_sql("pragma journal_mode").scalar() == "wal"
        assert con.exec_driver_sql("pragma synchronous").scalar() == 1   # NORMAL (FULL is 2)

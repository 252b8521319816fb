"""Reliability, in-process: every kind of bad input is exit 2 with one line and nothing in the store; a fuzzed
config loader raises nothing but ``BadInput``; the same suite, profile and seed give identical numbers; a
diverging arm never stops the suite; and the cell-claim protocol of ``tgbench.store`` (duplicate claims, stale
heartbeats, dead workers, claims revoked while running).

Runs through ``tgbench.cli.main`` into tmp storage. The multi-process scenarios (kill -9, Ctrl-C, concurrent
workers, PostgreSQL) are in ``test_reliability_workers.py``.
"""
from __future__ import annotations

import datetime as dt
import signal
import socket
import tempfile
import time
import warnings
import weakref
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from optuna.trial import TrialState

from tgbench import cells, engine, identity, interrupt
from tgbench.kinds.fewstep import run as fewstep
from tgbench.cli import main
from tgbench.suite.loading import load_suite
from tgbench.suite.schema import Evaluation, InnerLoop, LearnerSpace, OuterLoop, Suite
from tgbench.errors import BadInput
from tgbench.records import FewstepCell, Record, Status, cell_key
from tgbench.store import Store
from tgbench.worker import WorkerEnv

DUPLICATE = Status.DUPLICATE
from helpers import cli as _cli, studies as _studies

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "suites" / "mnist_fewstep.yaml"

TINY = """\
name: {name}
dataset: {{name: mnist-5k}}
learner: {{conv_channels: [[4]], fc_hidden: [[8]], batch_norm: false}}
inner: {{steps: 2, batch_size: 10}}
outer: {{iterations: 2, meta_batch_size: 16}}
evaluation: {{seeds: 2, eval_every: 1, eval_learners: 1, final_learners: 1, held_out: {{}}, count_flops: false}}
sources:
{sources}
profiles:
  smoke: {{}}
"""
REAL = "  - method: real\n"
GTN = "  - method: gtn\n    params: {noise_dim: 4, fc_hidden: 8, channels: [4, 4]}\n"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("TGBENCH_STORAGE", "TGBENCH_ARTIFACTS", "TGBENCH_DEBUG", "TGBENCH_DATA"):
        monkeypatch.delenv(var, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster than two fighting over 2 cores
    yield
    torch.set_num_threads(threads)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


# ------------------------------------------------------------------------------------------ bad input
GOOD = "name: t\ndataset: {name: mnist-5k}\nsources:\n  - method: real\n  - method: gtn\n"
SMOKE = "profiles:\n  smoke: {}\n"

# kind -> (suite text or None for the shipped suite, extra CLI flags, fragments the one error line must hold).
# "{tmp}" in flags is replaced by the test's tmp_path.
BAD_INPUT = {
    "malformed_yaml": ("name: t\nsources: [\n  - method: real\n", [], ["malformed YAML", "line 3"]),
    "not_a_mapping": ("- name: t\n", [], ["top level must be a mapping"]),
    "non_utf8_file": (b"name: t\n\xff\xfe\x00junk\n", [], ["not UTF-8 text"]),
    "misspelt_key": ("name: t\nouter: {iteratons: 3}\n" + GOOD[8:] + SMOKE, [],
                     ["outer.iteratons: unknown key", "did you mean 'iterations'"]),
    "misspelt_top_key": ("name: t\nsoruces: []\n" + GOOD[8:] + SMOKE, [], ["soruces: unknown key", "'sources'"]),
    "wrong_type": ('name: t\ninner: {steps: "many"}\n' + GOOD[8:] + SMOKE, [], ["inner.steps:", "integer"]),
    "steps_zero": ("name: t\ninner: {steps: 0}\n" + GOOD[8:] + SMOKE, [], ["inner.steps:", "greater than 0"]),
    "batch_zero": ("name: t\ninner: {batch_size: 0}\n" + GOOD[8:] + SMOKE, [], ["inner.batch_size:"]),
    "inner_lr_negative": ("name: t\ninner: {lr: -0.1}\n" + GOOD[8:] + SMOKE, [], ["inner.lr:", "greater than 0"]),
    "outer_lr_zero": ("name: t\nouter: {lr: 0}\n" + GOOD[8:] + SMOKE, [], ["outer.lr:", "greater than 0"]),
    "momentum_out_of_range": ("name: t\ninner: {momentum: 1.5}\n" + GOOD[8:] + SMOKE, [], ["inner.momentum:"]),
    "seeds_zero_in_yaml": ("name: t\nevaluation: {seeds: 0}\n" + GOOD[8:] + SMOKE, [], ["evaluation.seeds:"]),
    "seeds_flag_zero": (None, ["--seeds", "0"], ["--seeds", "must be > 0"]),
    "jobs_flag_negative": (None, ["--jobs", "-2"], ["--jobs", "must be > 0"]),
    "unknown_source": ("name: t\nsources:\n  - method: gtm\n" + SMOKE, [],
                       ["sources[0].method:", "unknown method 'gtm'", "did you mean 'gtn'"]),
    "unknown_source_param": ("name: t\nsources:\n  - method: gtn\n    params: {curriculm: full}\n" + SMOKE, [],
                             ["sources[0].params.curriculm: unknown key", "did you mean 'curriculum'"]),
    "unknown_dataset": ("name: t\ndataset: {name: mnsit}\nsources: [{method: real}]\n" + SMOKE, [],
                        ["dataset.name:", "unknown dataset 'mnsit'", "did you mean 'mnist'"]),
    "unknown_profile_flag": (None, ["--profile", "smok"], ["--profile", "smok"]),
    "profile_not_in_suite": (GOOD + "profiles:\n  cpu: {}\n", [], ["--profile", "no profile 'smoke'"]),
    "missing_suite_file": ("<missing>", [], ["no such suite file"]),
    "missing_include": ("include: nowhere.yaml\nname: t\n", [], ["include:", "nowhere.yaml"]),
    "duplicate_labels": ("name: t\nsources: [{method: gtn}, {method: gtn}]\n" + SMOKE, [],
                         ["two sources are named 'gtn'"]),
    "nas_kind_without_section": ("name: t\nkind: nas_proxy\n" + GOOD[8:] + SMOKE, [], ["needs a `nas:` section"]),
    "tune_kind_without_section": ("name: t\nkind: tune\n" + GOOD[8:] + SMOKE, [], ["needs a `tune:` section"]),
    "missing_data_no_fallback": ("name: t\ndataset: {name: fashion-mnist}\nsources: [{method: real}]\n" + SMOKE,
                                 ["--data-root", "{tmp}/empty"], ["dataset 'fashion-mnist' not found", "--data-root"]),
    "unwritable_out_dir": (None, ["--out", "{tmp}/a_file/report"], ["--out", "cannot write"]),
    "invalid_storage_url": (None, ["--storage", "notascheme://x"], ["--storage", "notascheme://x"]),
    "unreachable_storage": (None, ["--storage", "postgresql://tgbench@127.0.0.1:{port}/none"],
                            ["--storage", "cannot open", "127.0.0.1"]),
    "sqlite_under_a_file": (None, ["--storage", "sqlite:///{tmp}/a_file/sub/t.db"], ["--storage", "cannot create"]),
}


@pytest.mark.parametrize("kind", list(BAD_INPUT))
def test_run_refuses_bad_input_with_one_line_and_an_empty_store(kind, tmp_path, capsys, monkeypatch):
    text, flags, fragments = BAD_INPUT[kind]
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.cache/tgbench data from this machine
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("a file where a directory is needed")
    (tmp_path / "empty").mkdir()
    if text is None:
        suite = SHIPPED
    else:
        suite = tmp_path / "bad.yaml"
        if text != "<missing>":
            suite.write_bytes(text if isinstance(text, bytes) else text.encode())
    defaults = {"--profile": "smoke", "--storage": f"sqlite:///{tmp_path}/t.db", "--out": str(tmp_path / "out")}
    flags = [f.format(tmp=tmp_path, port=_closed_port()) for f in flags]
    for flag, value in defaults.items():
        if flag not in flags:
            flags += [flag, value]
    code, _, err = _cli(["run", str(suite), "--no-progress", *flags], capsys)

    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tgbench: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    if text is not None and text != "<missing>" and kind != "missing_data_no_fallback":
        assert str(suite) in lines[0]  # config problems name the file
    assert _studies(tmp_path / "t.db") == []  # nothing written to the store
    assert not list(tmp_path.rglob("*.db")) and not (tmp_path / "results").exists()


def test_at_least_twenty_kinds_of_bad_input():
    assert len(BAD_INPUT) >= 20


# ------------------------------------------------------------------------------------------ fuzzing the loader
FIELD_NAMES = sorted({*Suite.model_fields, *InnerLoop.model_fields, *OuterLoop.model_fields,
                      *Evaluation.model_fields, *LearnerSpace.model_fields, "method", "label", "params",
                      "smoke", "cpu", "paper", "include", "fallback", "curriculum", "noise_dim"})
SCALARS = (st.none() | st.booleans() | st.integers(-5, 300) | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from(["real", "gtn", "dataset_distillation", "mnist-5k", "full", "cosine", "sgd_momentum",
                              "fewstep", "2001-13-14", "", "."]) | st.text(max_size=8))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=5), inner, max_size=4),
                      max_leaves=20)
SUITES = st.dictionaries(st.sampled_from(FIELD_NAMES), VALUES, max_size=8)
PROFILE = st.sampled_from([None, "smoke", "cpu", "paper", "bogus"])


def _load_or_bad_input(path: Path, profile: str | None) -> None:
    try:
        assert isinstance(load_suite(path, profile), Suite)
    except BadInput as exc:
        assert "\n" not in str(exc)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=SUITES, profile=PROFILE)
def test_fuzzed_suite_structures_raise_only_bad_input(raw, profile):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_text(yaml.safe_dump(raw, allow_unicode=True))
        _load_or_bad_input(path, profile)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=120)
       | st.sampled_from(["a: 2001-13-14\n", "x: !!binary '%%%'\n", "[[[[[[[[", "a: &x [*x]\n", "? [a]\n: 1\n",
                          "name: t\nsources: [{method: real, outer: {lr: .nan}}]\n", "name: !!python/none x\n"]),
       profile=PROFILE)
def test_fuzzed_suite_text_raises_only_bad_input(text, profile):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_text(text)
        _load_or_bad_input(path, profile)


# ------------------------------------------------------------------------------------------ determinism
def _records(tmp: Path, study: str) -> dict[str, Record]:
    store = Store(f"sqlite:///{tmp}/t.db")
    return {r.cell: r for r in store.records(store.study(study, create=False))}


@pytest.mark.slow
def test_same_suite_profile_and_seed_give_identical_numbers(tmp_path):
    runs = []
    for attempt, sources in (("a", REAL + GTN), ("b", GTN + REAL)):  # b runs the cells in another order
        (tmp_path / attempt).mkdir()
        suite = tmp_path / attempt / "det.yaml"
        suite.write_text(TINY.format(name="det", sources=sources))
        argv = ["run", str(suite), "--profile", "smoke", "--no-progress", "--storage",
                f"sqlite:///{tmp_path}/{attempt}/t.db", "--out", str(tmp_path / attempt / "out")]
        assert main(argv) == 0
        runs.append(_records(tmp_path / attempt, "det@smoke"))
    a, b = runs
    assert sorted(a) == sorted(b) == sorted(cell_key(s, seed) for s in ("real", "gtn") for seed in (0, 1))
    numbers = ("test_acc_final", "val_acc_final", "test_loss_final", "steps_test_acc", "curve", "schedule", "samples")
    for cell in a:
        assert a[cell].status == "complete"
        for key in numbers:
            assert getattr(a[cell], key) == getattr(b[cell], key), (cell, key)
    # ... and the seed matters: the two seeds of a source differ
    for source in ("real", "gtn"):
        assert a[cell_key(source, 0)].curve != a[cell_key(source, 1)].curve


# ------------------------------------------------------------------------------------------ divergence
def test_a_diverging_arm_is_counted_and_the_suite_finishes(tmp_path, capsys):
    diverging = "  - {method: real, label: real_wild, outer: {lr: 1.0e+30}}\n"   # Adam steps of 1e30 on log-lr
    suite = tmp_path / "div.yaml"
    suite.write_text(TINY.format(name="div", sources=REAL + diverging).replace("seeds: 2", "seeds: 1"))
    code, _, err = _cli(["run", str(suite), "--profile", "smoke", "--no-progress", "--storage",
                         f"sqlite:///{tmp_path}/t.db", "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    records = _records(tmp_path, "div@smoke")
    assert records[cell_key("real", 0)].status == "complete"
    wild = records[cell_key("real_wild", 0)]
    assert wild.status == "diverged" and "outer iteration" in wild.error
    report = (tmp_path / "out" / "report.md").read_text().splitlines()
    header = next(line for line in report if line.startswith("| source |") and "diverged" in line)
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = {}
    for line in report[report.index(header) + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(columns, cells))
    assert (rows["real_wild"]["diverged"], rows["real"]["diverged"]) == ("1", "0")


# ------------------------------------------------------------------------------------------ interrupts
def _ctrl_c_that_python_drops() -> None:
    """A real SIGINT whose KeyboardInterrupt is raised inside a weakref callback, where Python drops it ("Exception
    ignored in ..."): what happens when Ctrl-C lands while torch or SQLAlchemy collect garbage."""
    class Thing:
        pass

    thing = Thing()
    ref = weakref.ref(thing, lambda _: signal.raise_signal(signal.SIGINT))
    del thing  # the callback runs here; its KeyboardInterrupt does not reach us
    assert ref() is None


def test_a_ctrl_c_python_drops_is_raised_at_the_next_check(capsys):
    before = signal.getsignal(signal.SIGINT)
    with interrupt.handled():
        _ctrl_c_that_python_drops()
        assert interrupt.received() == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
    assert signal.getsignal(signal.SIGINT) is before   # the caller's handler is back
    assert "Exception ignored" not in capsys.readouterr().err


def test_a_dropped_ctrl_c_mid_cell_exits_130_and_marks_the_cell_failed(tmp_path, capsys, monkeypatch):
    step, calls = engine.MetaTrainer.step, []

    def step_then_ctrl_c(self):
        calls.append(1)
        if len(calls) == 1:
            _ctrl_c_that_python_drops()
        return step(self)

    monkeypatch.setattr(engine.MetaTrainer, "step", step_then_ctrl_c)
    suite = tmp_path / "int.yaml"
    suite.write_text(TINY.format(name="int", sources=REAL).replace("iterations: 2", "iterations: 5"))
    code, _, err = _cli(["run", str(suite), "--profile", "smoke", "--no-progress", "--storage",
                         f"sqlite:///{tmp_path}/t.db", "--out", str(tmp_path / "out")], capsys)
    assert code == 130, err
    assert err.strip().splitlines()[-1].startswith("tgbench: interrupted;") and "Exception ignored" not in err
    assert len(calls) == 1   # stopped at the next meta-iteration, not after the run
    [trial] = Store(f"sqlite:///{tmp_path}/t.db").study("int@smoke", create=False).get_trials()
    assert trial.state == TrialState.FAIL and trial.user_attrs["error"].startswith("KeyboardInterrupt")
    assert not (tmp_path / "out" / "report.md").exists()


# ------------------------------------------------------------------------------------------ the claim protocol
def _store(tmp: Path, **kw) -> Store:
    return Store(f"sqlite:///{tmp}/c.db", tmp / "artifacts", **kw)


def _foreign_claim(store: Store, study: optuna.Study, key: str, chash: str, started: dt.datetime | None = None,
                   heartbeat: bool = True) -> int:
    """A RUNNING claim made by a worker on another machine (so no local process check applies)."""
    template = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs={
        "cell": key, "config_hash": chash, "status": "running",
        "worker": {"host": "elsewhere.example", "boot": "x", "pid": 1}})
    if started is not None:
        template.datetime_start = started
    trial_id = store.storage.create_new_trial(store.storage.get_study_id_from_name(study.study_name), template)
    if heartbeat:
        store.storage.record_heartbeat(trial_id)
    return trial_id


def test_a_second_claim_of_a_held_or_done_cell_is_refused(tmp_path):
    store = _store(tmp_path)
    study = store.study("claims@smoke")
    first = store.claim(study, "a|seed=0", "h")
    assert first is not None
    assert store.claim(study, "a|seed=0", "h") is None          # held by a live worker (this process)
    assert store.claim(study, "a|seed=0", "other-hash") is not None  # another config is another cell
    store.finish(study, first, FewstepCell(cell="a|seed=0", config_hash="h", status=Status.COMPLETE,
                                           test_acc_final=0.5))
    assert store.claim(study, "a|seed=0", "h") is None          # done
    statuses = [t.user_attrs["status"] for t in study.get_trials()]
    assert statuses == ["complete", DUPLICATE, "running", DUPLICATE]
    assert {t.state for t in study.get_trials() if t.user_attrs["status"] == DUPLICATE} == {TrialState.FAIL}
    # duplicates never reach a report
    assert [r.status for r in store.records(study, {"a|seed=0": {"h"}})] == ["complete"]


def test_the_earliest_running_claim_owns_the_cell(tmp_path):
    store = _store(tmp_path)
    study = store.study("claims@smoke")
    mine = store.begin(study, "a|seed=0", "h")
    theirs = optuna.Trial(study, _foreign_claim(store, study, "a|seed=0", "h"))
    assert (mine.number, theirs.number) == (0, 1)
    assert store.holder(study, mine) is None      # a later-numbered claim never blocks an earlier one ...
    assert store.holder(study, theirs) == 0       # ... and always sees it (it committed after it)
    assert store.busy_cells(study) == {("a|seed=0", "h")}


def test_a_silent_worker_goes_stale_and_its_cell_is_claimed_again(tmp_path):
    store = _store(tmp_path, heartbeat_interval=1, grace_period=1)
    study = store.study("stale@smoke")
    _foreign_claim(store, study, "a|seed=0", "h")
    assert store.claim(study, "a|seed=0", "h") is None         # fresh heartbeat: the other worker owns it
    time.sleep(2.5)                                             # ... then it stops beating
    assert store.busy_cells(study) == set()
    assert study.get_trials()[0].state == TrialState.FAIL
    [record] = store.records(study)                             # the stale attempt reports as failed
    assert record.status == "failed" and "no heartbeat" in record.error
    trial = store.claim(study, "a|seed=0", "h")
    assert trial is not None and trial.number == 2


def test_a_live_heartbeat_keeps_a_long_cell_owned(tmp_path):
    store = _store(tmp_path, heartbeat_interval=1, grace_period=2)
    study = store.study("beat@smoke")
    trial = store.claim(study, "a|seed=0", "h")
    with store.heartbeat(trial):
        time.sleep(4)                                           # twice the grace period
        other = _store(tmp_path, heartbeat_interval=1, grace_period=2)
        assert other.claim(other.study("beat@smoke"), "a|seed=0", "h") is None
    assert study.get_trials()[0].state == TrialState.RUNNING


def test_claims_without_heartbeat_or_worker_are_stale(tmp_path):
    store = _store(tmp_path, grace_period=30)
    study = store.study("legacy@smoke")
    long_ago = dt.datetime.now() - dt.timedelta(minutes=5)
    _foreign_claim(store, study, "never-beat|seed=0", "h", started=long_ago, heartbeat=False)
    _foreign_claim(store, study, "just-started|seed=0", "h", heartbeat=False)  # between create and first beat
    with warnings.catch_warnings():                             # Optuna: "heartbeat ... used with optimize"
        warnings.simplefilter("ignore")
        legacy = study.ask()                                    # what a tgbench without heartbeats left behind
    legacy.set_user_attr("cell", "legacy|seed=0")
    legacy.set_user_attr("config_hash", "h")
    legacy.set_user_attr("status", "running")
    assert store.busy_cells(study) == {("just-started|seed=0", "h")}


def test_a_dead_local_worker_is_stale_at_once(tmp_path):
    import subprocess
    import sys

    store = _store(tmp_path)
    study = store.study("dead@smoke")
    trial = store.begin(study, "a|seed=0", "h")
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(child.stdout)                               # exited and reaped: no such process now
    worker = dict(trial.user_attrs["worker"], pid=dead_pid)
    store.storage.set_trial_user_attr(trial._trial_id, "worker", worker)
    assert store.busy_cells(study) == set()
    assert study.get_trials()[0].state == TrialState.FAIL


def test_a_claim_revoked_while_running_discards_its_result(tmp_path, monkeypatch, capsys):
    suite = tmp_path / "rev.yaml"
    suite.write_text(TINY.format(name="rev", sources=REAL).replace("seeds: 2", "seeds: 1"))
    real_meta_train = cells.meta_train

    def revoked_midway(*args, **kwargs):
        out = real_meta_train(*args, **kwargs)
        other = Store(f"sqlite:///{tmp_path}/t.db")            # another worker decides this one went stale
        running = other.study("rev@smoke").get_trials(states=(TrialState.RUNNING,))
        other.storage.set_trial_state_values(running[0]._trial_id, state=TrialState.FAIL)
        return out

    monkeypatch.setattr(cells, "meta_train", revoked_midway)
    task = cells.cell_task(load_suite(suite, "smoke"), "smoke", "real", 0,
                           WorkerEnv(storage=f"sqlite:///{tmp_path}/t.db", artifacts_dir=str(tmp_path / "artifacts"),
                                     progress=False))
    assert cells.run_cell(task) is None
    assert "lost its claim" in capsys.readouterr().err
    trials = Store(f"sqlite:///{tmp_path}/t.db").study("rev@smoke").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL]
    assert Store(f"sqlite:///{tmp_path}/t.db").done_cells(Store(f"sqlite:///{tmp_path}/t.db").study("rev@smoke")) == set()


def test_a_record_is_written_before_its_status(tmp_path, monkeypatch):
    """A worker killed while writing its record must not leave one that counts as finished (every kind and every
    writer: tests/test_records.py)."""
    store = _store(tmp_path)
    study = store.study("order@smoke")
    trial = store.claim(study, "a|seed=0", "h")
    written = []
    original = optuna.Trial.set_user_attr
    monkeypatch.setattr(optuna.Trial, "set_user_attr", lambda self, k, v: (written.append(k), original(self, k, v)))
    store.finish(study, trial, FewstepCell(cell="a|seed=0", config_hash="h", status=Status.COMPLETE,
                                           test_acc_final=0.5, curve=[]))
    assert written[-1] == "status" and set(written) == {"kind", "schema_version", "cell", "config_hash", "status",
                                                        "test_acc_final", "curve"}


def test_a_waiting_worker_takes_over_the_cell_of_a_worker_that_went_silent(tmp_path, monkeypatch, capsys):
    """`tgbench run` finds a cell held by a live worker elsewhere: it waits, and when that worker's heartbeat
    stops it runs the cell itself; the suite ends complete, nothing lost."""
    from tgbench import store as store_module

    monkeypatch.setattr(store_module, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(store_module, "GRACE_PERIOD", 1)
    monkeypatch.setattr(fewstep, "WAIT_SECONDS", 0.5)
    suite = tmp_path / "take.yaml"
    suite.write_text(TINY.format(name="take", sources=REAL).replace("seeds: 2", "seeds: 1"))
    url = f"sqlite:///{tmp_path}/t.db"
    store = Store(url)
    study = store.study("take@smoke")
    chash = identity.cell_hash(load_suite(suite, "smoke"), load_suite(suite, "smoke").sources[0], "mnist-5k")
    _foreign_claim(store, study, cell_key("real", 0), chash)

    assert main(["run", str(suite), "--profile", "smoke", "--no-progress", "--storage", url,
                 "--out", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    assert "1 running elsewhere" in out and "waiting for 1 cell(s)" in err
    trials = study.get_trials()
    assert [(t.state, t.user_attrs["status"]) for t in trials] == [(TrialState.FAIL, "running"),
                                                                   (TrialState.COMPLETE, "complete")]
    assert (tmp_path / "out" / "summary.csv").read_text().count(",complete,") == 1

"""Typed store records (``tgbench.records``): a store written before them still loads and reports the same; every
writer puts the status last; a kill between a record's fields and its status leaves nothing done; each model
round-trips; a bad record is refused with one clear line.

``data/store_before_typed_records.json`` is a store written by the code *before* typed records (revision in its
``made_by``), dumped trial by trial (state, value, params and their distributions, intermediate values, user
attributes, study name and study attributes): ``tgbench run`` of ``mnist_fewstep`` (with its tuning stage),
``wn_sensitivity`` and ``mnist_nas_proxy`` at profile smoke, of a two-arm suite with a diverging arm (its text under
``div_suite``), and, written with the old ``Store`` API, a duplicate claim, a failed cell, a stale claim, a failed
ground truth, a failed proxy, an interrupted and a pruned tune trial. To keep the file small the sample-grid images
of every study but ``mnist_fewstep@smoke`` were trimmed to their first row (``samples``, ``sample_steps``) before
the old code built the reports from the rebuilt store. ``expected`` holds what the old code read from that store
(``Store.records`` per study) and the CSVs its reports and leaderboard wrote. Databases are not committed: the tests
rebuild an Optuna SQLite store from the JSON with plain Optuna calls.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import json_to_distribution
from optuna.trial import TrialState
from pydantic import ValidationError

from tgbench import records
from tgbench.cli import main
from tgbench.leaderboard import collect
from tgbench.records import (DONE, FewstepCell, NasGroundTruth, NasProxyScores, Record, RecordError, Status,
                             TuneTrial, cell_key, record_from_attrs)
from tgbench.store import Store, trial_record

REPO = Path(__file__).resolve().parents[1]
OLD_STORE = Path(__file__).parent / "data" / "store_before_typed_records.json"


def rebuild(dump: dict, url: str) -> None:
    """An Optuna store holding the dumped studies and trials (same numbers, states, values and attributes)."""
    storage = optuna.storages.RDBStorage(url)
    for s in dump["studies"]:
        study = optuna.create_study(study_name=s["study_name"], storage=storage, direction=s["direction"].lower())
        for key, value in s["user_attrs"].items():
            study.set_user_attr(key, value)
        for t in s["trials"]:
            study.add_trial(optuna.trial.create_trial(
                state=TrialState[t["state"]], value=t["value"], params=t["params"],
                distributions={k: json_to_distribution(d) for k, d in t["distributions"].items()},
                user_attrs=t["user_attrs"],
                intermediate_values={int(k): v for k, v in t["intermediate_values"].items()}))
    storage.engine.dispose()


@pytest.fixture(scope="module")
def old(tmp_path_factory):
    """(dump, Store over the rebuilt store, scratch folder)."""
    tmp = tmp_path_factory.mktemp("old_store")
    dump = json.loads(OLD_STORE.read_text())
    rebuild(dump, f"sqlite:///{tmp}/old.db")
    (tmp / "div.yaml").write_text(dump["div_suite"])
    return dump, Store(f"sqlite:///{tmp}/old.db", tmp / "no_artifacts"), tmp


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True)   # (NaN == NaN here, unlike in Python)


# ------------------------------------------------------------------------------------------ the old store
KINDS = {"div@smoke": FewstepCell, "mnist_fewstep@smoke": FewstepCell, "nas_ground_truth": NasGroundTruth,
         "mnist_nas_proxy@extra": NasProxyScores}


def test_every_record_of_a_store_made_before_typed_records_loads_as_its_kind(old):
    dump, store, _ = old
    studies = {s["study_name"]: s for s in dump["studies"]}
    assert set(store.study_names()) == set(studies)
    for name, s in studies.items():
        study = store.study(name, create=False)
        for frozen, raw in zip(study.get_trials(deepcopy=False), s["trials"]):
            record = trial_record(frozen, name)
            assert record.schema_version == records.LEGACY_SCHEMA_VERSION and record.trial_number == raw["number"]
            if "cell" not in raw["user_attrs"]:
                expected_kind = TuneTrial
            elif name == "mnist_nas_proxy@smoke":
                expected_kind = NasProxyScores if raw["user_attrs"]["cell"].startswith("proxy:") else FewstepCell
            else:
                expected_kind = KINDS[name]
            assert type(record) is expected_kind, (name, raw["number"])
            # every stored key reads back with its stored value (what a writer would store again)
            attrs = dict(raw["user_attrs"])
            if raw["state"] == "PRUNED":
                attrs["status"] = "pruned"
            if attrs.get("status") == "running" and raw["state"] == "FAIL":
                attrs.update(status="failed", error="interrupted: its worker stopped (no heartbeat)")
            stored = {**record.fields(), "status": record.status.value}
            named = {"source", "seed"} - set(attrs) if expected_kind is FewstepCell else set()
            assert _canonical({k: v for k, v in stored.items() if k not in {"kind", "schema_version", *named}}) \
                == _canonical(attrs), (name, raw["number"])


def test_store_records_of_the_old_store_are_what_the_old_code_read(old):
    dump, store, _ = old
    for name, expected in dump["expected"]["records"].items():
        got = sorted(store.records(store.study(name, create=False)), key=lambda r: r.trial_number)
        assert [[r.cell, r.status.value, r.error, r.trial_number] for r in got] == [e[:4] for e in expected], name
        for r, e in zip(got, expected):
            if isinstance(r, FewstepCell):
                assert (r.source, r.seed) == (e[4], e[5])
            if isinstance(r, NasGroundTruth) and r.status == Status.COMPLETE:
                assert r.seed == e[5] and r.arch_id == e[4]   # (the old code named them by their key too)
    gt = store.records(store.study("nas_ground_truth", create=False))
    assert sum(r.status == Status.COMPLETE for r in gt) == 12 and all(r.arch_id or r.error for r in gt)
    proxies = [r for r in store.records(store.study("mnist_nas_proxy@smoke", create=False))
               if isinstance(r, NasProxyScores)]
    assert len(proxies) == 10 and all(len(r.scores) == 6 and r.family for r in proxies)


def test_the_tune_trials_of_the_old_store_read_with_their_status(old):
    _, store, _ = old
    read = {name: [trial_record(t, name) for t in store.study(name, create=False).get_trials(deepcopy=False)]
            for name in store.study_names() if "/" in name}
    assert all(isinstance(r, TuneTrial) for rs in read.values() for r in rs)
    assert [r.status for r in read["wn_sensitivity@extra/gtn_wn"]] == [Status.FAILED, Status.PRUNED]
    assert read["wn_sensitivity@extra/gtn_wn"][0].error == "KeyboardInterrupt: "
    sens = read["wn_sensitivity@smoke/gtn_wn"]
    assert len(sens) == 3 and all(r.done and r.val_loss_final is not None and r.curve for r in sens)
    stage = read["mnist_fewstep@smoke/tuning/gtn"]
    assert [r.status for r in stage] == [Status.COMPLETE] and stage[0].val_acc_final is not None


@pytest.mark.slow
def test_reports_and_leaderboard_of_the_old_store_match_what_the_old_code_wrote(old, capsys):
    """The same CSVs, to the byte: fewstep (with its tuning table), a diverged/failed/stale study, tune, NAS proxy
    quality, and the leaderboard (fewstep cells picked by kind, the NAS suite's teachers among them)."""
    dump, store, tmp = old
    expected = dump["expected"]["csv"]
    storage = ["--storage", store.url]
    for suite, folder in (("suites/mnist_fewstep.yaml", "few"), (str(tmp / "div.yaml"), "div"),
                          ("suites/wn_sensitivity.yaml", "tune"), ("suites/mnist_nas_proxy.yaml", "nas")):
        path = suite if os.path.isabs(suite) else str(REPO / suite)
        code = main(["report", path, "--profile", "smoke", *storage, "--artifacts", str(tmp / "no_artifacts"),
                     "--out", str(tmp / folder)])
        assert code == 0, capsys.readouterr().err
    assert main(["leaderboard", *storage, "--artifacts", str(tmp / "no_artifacts"),
                 "--out", str(tmp / "lb" / "LEADERBOARD.md")]) == 0
    capsys.readouterr()
    assert set(expected) >= {"few/summary.csv", "lb/LEADERBOARD.csv", "nas/metrics.csv", "tune/trials.csv"}
    for name, text in expected.items():
        assert (tmp / name).read_text() == text, name


# ------------------------------------------------------------------------------------------ status last
TINY_FEWSTEP = {
    "name": "order_few", "dataset": {"name": "mnist-5k"},
    "learner": {"conv_channels": [[4]], "fc_hidden": [[8]], "batch_norm": False},
    "inner": {"steps": 2, "batch_size": 10}, "outer": {"iterations": 2, "meta_batch_size": 16},
    "evaluation": {"seeds": 1, "eval_every": 1, "eval_learners": 1, "final_learners": 1, "held_out": {}},
    "tuning": {"trials": 1, "startup_trials": 1, "outer_iterations": 1, "learners": 1,
               "space": {"inner.lr": {"low": 0.01, "high": 0.1, "log": True}}},
    "sources": [{"method": "real"}, {"method": "real", "label": "real_wild", "outer": {"lr": 1.0e30}}],
    "profiles": {"smoke": {}},
}
TINY_TUNE = {
    "name": "order_tune", "kind": "tune", "dataset": {"name": "mnist-5k"},
    "learner": {"conv_channels": [[4]], "fc_hidden": [[8]], "batch_norm": False},
    "inner": {"steps": 2, "batch_size": 10}, "outer": {"iterations": 2, "meta_batch_size": 16},
    "evaluation": {"eval_every": 1, "eval_learners": 1, "final_learners": 1, "held_out": {}},
    "sources": [{"method": "real"}],
    "tune": {"trials": 2, "startup_trials": 1, "space": {"outer.lr": {"low": 0.001, "high": 0.05, "log": True}}},
    "profiles": {"smoke": {}},
}
TINY_NAS = {
    "name": "order_nas", "kind": "nas_proxy", "dataset": {"name": "mnist-5k"},
    "learner": {"conv_channels": [[4], []], "fc_hidden": [[8]], "activation": ["relu"]},
    "inner": {"steps": 2, "batch_size": 10}, "outer": {"iterations": 1, "meta_batch_size": 16},
    "evaluation": {"seeds": 1, "eval_every": 1, "eval_learners": 1, "final_learners": 1, "held_out": {}},
    "sources": [{"method": "real"}],
    "nas": {"n_architectures": 2, "ground_truth": {"epochs": 1, "seeds": 1},
            "proxies": [{"proxy": "teaching", "label": "real-2", "params": {"source": "real", "steps": 2}},
                        {"proxy": "param_count"}],
            "search_budgets": [1], "search_repeats": 2, "bootstrap_resamples": 10},
    "profiles": {"smoke": {}},
}


@pytest.mark.slow
def test_every_writer_puts_the_status_last(tmp_path, monkeypatch, capsys):
    """Every user attribute written to the store, per trial, in order (at the storage, below every API): for
    fewstep cells (complete and diverged), tuning-stage trials, tune trials, ground truth and proxy scores, the
    status is the last key written and is written once (a claim's ``running`` comes with the trial itself)."""
    writes: dict[int, list[str]] = {}
    real_set = optuna.storages.RDBStorage.set_trial_user_attr

    def recording(self, trial_id, key, value):
        writes.setdefault(trial_id, []).append(key)
        return real_set(self, trial_id, key, value)

    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_user_attr", recording)
    url = f"sqlite:///{tmp_path}/t.db"
    for suite in (TINY_FEWSTEP, TINY_TUNE, TINY_NAS):
        path = tmp_path / f"{suite['name']}.yaml"
        path.write_text(yaml.safe_dump(suite))
        code = main(["run", str(path), "--profile", "smoke", "--no-progress", "--storage", url,
                     "--out", str(tmp_path / suite["name"])])
        assert code == 0, capsys.readouterr().err
    store = Store(url)
    kinds = set()
    for name in store.study_names():
        for t in store.study(name, create=False).get_trials(deepcopy=False):
            record = trial_record(t, name)
            kinds.add((type(record), record.status))
            keys = writes[t._trial_id]
            assert keys[-1] == "status" and keys.count("status") == 1, (name, t.number, keys)
            assert record.schema_version == records.SCHEMA_VERSION and t.user_attrs["kind"] == record.kind
    assert kinds >= {(FewstepCell, Status.COMPLETE), (FewstepCell, Status.DIVERGED), (TuneTrial, Status.COMPLETE),
                     (NasGroundTruth, Status.COMPLETE), (NasProxyScores, Status.COMPLETE)}


# ------------------------------------------------------------------------------------------ a kill mid-record
class Killed(BaseException):
    """What a SIGKILL looks like to the code that was running: nothing after it runs (no cleanup, no Optuna)."""


def _killed_after(monkeypatch, writes: int) -> None:
    """The process dies while writing its ``writes + 1``-th user attribute."""
    real_set = optuna.storages.RDBStorage.set_trial_user_attr
    done = []

    def dying(self, trial_id, key, value):
        if len(done) == writes:
            raise Killed(key)
        done.append(key)
        return real_set(self, trial_id, key, value)

    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_user_attr", dying)


CELLS = {
    FewstepCell: FewstepCell(cell=cell_key("a", 0), config_hash="h", status=Status.COMPLETE, source="a", seed=0,
                             test_acc_final=0.5, inner_steps=2, curve=[], profile="smoke", suite="s"),
    NasGroundTruth: NasGroundTruth(cell=cell_key("0123456789abcdef", 0), config_hash="h", status=Status.COMPLETE,
                                   arch_id="0123456789abcdef", seed=0, test_acc_final=0.5, test_acc=0.5, val_acc=0.4),
    NasProxyScores: NasProxyScores(cell=records.proxy_key("p"), config_hash="h", status=Status.COMPLETE, label="p",
                                   scores={"a": 1.0}, seconds={"a": 0.1}, cpu_seconds={"a": 0.1}, setup_seconds=0.0),
}


@pytest.mark.parametrize("kind", list(CELLS), ids=lambda k: k.__name__)
@pytest.mark.parametrize("writes", [0, 3, "all but the status"])
def test_a_kill_between_the_fields_and_the_status_leaves_nothing_done(tmp_path, monkeypatch, kind, writes):
    store = Store(f"sqlite:///{tmp_path}/t.db", grace_period=1)
    study = store.study("s@smoke" if kind is not NasGroundTruth else records.GROUND_TRUTH_STUDY)
    record = CELLS[kind]
    trial = store.claim(study, record.cell, record.config_hash, kind)
    _killed_after(monkeypatch, len(record.fields()) if writes == "all but the status" else writes)
    with pytest.raises(Killed):
        store.finish(study, trial, record)
    monkeypatch.undo()
    assert store.done_cells(study) == set() and collect(store, log=lambda *a: None) == []   # (the leaderboard)
    [partial] = store.records(study)
    assert partial.status == Status.RUNNING and not partial.done       # its worker might still be alive
    # the worker is gone: its claim goes stale, reads as failed, and the cell is claimed again
    store.storage.set_trial_user_attr(trial._trial_id, "worker", dict(partial.worker, pid=_dead_pid()))
    assert store.busy_cells(study) == set()
    [failed] = store.records(study)
    assert failed.status == Status.FAILED and "no heartbeat" in failed.error and not failed.done
    assert store.done_cells(study) == set() and collect(store, log=lambda *a: None) == []
    assert store.claim(study, record.cell, record.config_hash, kind) is not None


def test_a_tune_trial_killed_before_its_status_is_not_finished(tmp_path, monkeypatch):
    study = optuna.create_study(study_name="t@smoke/arm", storage=f"sqlite:///{tmp_path}/t.db")
    trial = study.ask()
    _killed_after(monkeypatch, 4)
    from tgbench.store import write_record
    with pytest.raises(Killed):
        write_record(trial, TuneTrial(status=Status.COMPLETE, val_loss_final=0.3, val_acc_final=0.9,
                                      meta_train_seconds=1.0, curve=[]))
    monkeypatch.undo()
    [frozen] = study.get_trials()
    assert "status" not in frozen.user_attrs and trial_record(frozen, study.study_name).status == Status.RUNNING
    study.tell(trial, state=TrialState.FAIL)     # what open_study does to a trial a killed run left RUNNING
    assert trial_record(study.get_trials()[0], study.study_name).status == Status.FAILED


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


# ------------------------------------------------------------------------------------------ the models
EXAMPLES = [
    CELLS[FewstepCell].model_copy(update={"phase_seconds": {"meta_training": 1.5}, "versions": {"torch": "2"},
                                          "held_out": [{"name": "mlp", "test_acc": 0.3}], "worker": {"pid": 1}}),
    CELLS[NasGroundTruth],
    CELLS[NasProxyScores],
    TuneTrial(status=Status.DIVERGED, error="meta-loss is nan", val_loss_final=5.0, curve=[{"val_loss": math.inf}]),
    FewstepCell(cell=cell_key("b", 1), config_hash="h", status=Status.FAILED, error="KeyboardInterrupt: "),
]


@pytest.mark.parametrize("record", EXAMPLES, ids=lambda r: f"{r.kind}-{r.status}")
def test_each_model_round_trips(record):
    attrs = {**json.loads(json.dumps(record.fields())), "status": record.status.value}   # as Optuna stores it
    assert attrs["kind"] == record.kind and attrs["schema_version"] == records.SCHEMA_VERSION
    back = record_from_attrs(attrs, records.GROUND_TRUTH_STUDY if isinstance(record, NasGroundTruth) else "s@x")
    assert type(back) is type(record)
    assert _canonical(back.model_dump()) == _canonical(
        record.model_dump() | ({"source": "b", "seed": 1} if record is EXAMPLES[-1] else {}))


def test_a_record_round_trips_through_the_store_with_unknown_keys(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/t.db")
    study = store.study("s@smoke")
    record = FewstepCell(cell=cell_key("a", 0), config_hash="h", status=Status.COMPLETE, test_acc_final=0.25,
                         written_by_a_later_tgbench={"x": 1})
    trial = store.claim(study, record.cell, record.config_hash)
    store.finish(study, trial, record)
    [back] = store.records(study)
    assert back.test_acc_final == 0.25 and back.model_extra["written_by_a_later_tgbench"] == {"x": 1}
    assert back.worker is not None and back.trial_number == 0 and study.get_trials()[0].value == 0.25
    assert store.done_cells(study) == {(record.cell, "h")}


def test_status_is_a_str_enum_with_the_stored_words():
    assert [s.value for s in Status] == ["running", "complete", "diverged", "failed", "duplicate", "pruned"]
    assert Status.COMPLETE == "complete" and "diverged" in DONE and set(DONE) == {"complete", "diverged"}
    assert f"{Status.FAILED}" == str(Status.FAILED) == "failed" and json.dumps(Status.PRUNED) == '"pruned"'
    assert set(records.MODELS) == {records.FEWSTEP_CELL, records.TUNE_TRIAL, records.NAS_GROUND_TRUTH,
                                   records.NAS_PROXY_SCORES, records.DATA_CEILING}


def test_a_record_with_a_bad_status_is_refused_with_a_clear_error(tmp_path, capsys):
    with pytest.raises(ValidationError, match="'done' is not one of running, complete, diverged"):
        FewstepCell(cell=cell_key("a", 0), status="done")
    with pytest.raises(RecordError) as err:
        record_from_attrs({"cell": cell_key("a", 0), "status": "done"}, "s@smoke")
    assert str(err.value) == ("store record s@smoke/a|seed=0: status: 'done' is not one of running, complete, "
                              "diverged, failed, duplicate, pruned")
    # in a store: every reader sees the one line, not a traceback into pydantic
    store = Store(f"sqlite:///{tmp_path}/t.db")
    study = store.study("mnist_fewstep@smoke")
    trial = store.begin(study, cell_key("a", 0), "h")
    store.storage.set_trial_user_attr(trial._trial_id, "status", "done")
    with pytest.raises(RecordError, match=re.escape("mnist_fewstep@smoke/a|seed=0: status: 'done'")):
        store.records(study)
    capsys.readouterr()
    assert main(["report", str(REPO / "suites" / "mnist_fewstep.yaml"), "--profile", "smoke", "--storage",
                 store.url, "--out", str(tmp_path / "out")]) == 2
    assert "store record mnist_fewstep@smoke/a|seed=0: status: 'done' is not one of" in capsys.readouterr().err


@pytest.mark.parametrize("attrs, fragment", [
    ({"kind": "fewstep_cell", "schema_version": 2, "cell": "a|seed=0", "status": "complete"},
     "schema_version: 2 is not a version this tgbench reads (0 to 1)"),
    ({"kind": "audit_unit", "schema_version": 1, "cell": "a", "status": "complete"},
     "kind 'audit_unit' is not one of fewstep_cell, tune_trial, nas_ground_truth, nas_proxy_scores, "
     "data_ceiling"),
    ({"kind": "fewstep_cell", "schema_version": 1, "cell": "a|seed=0", "status": "complete", "seed": "zero"},
     "seed: Input should be a valid integer"),
])
def test_other_bad_records_are_refused_naming_what_is_wrong(attrs, fragment):
    with pytest.raises(RecordError, match=re.escape(fragment)):
        record_from_attrs(attrs, "s@smoke")


@pytest.mark.parametrize("attrs, study, kind", [
    ({"status": "complete", "val_loss_final": 0.2}, "t@smoke/arm", TuneTrial),
    ({"status": "complete"}, "t@smoke/tuning/arm", TuneTrial),
    ({"cell": "0123456789abcdef|seed=1", "status": "complete"}, records.GROUND_TRUTH_STUDY, NasGroundTruth),
    ({"cell": "proxy:synflow", "status": "failed"}, "n@smoke", NasProxyScores),
    ({"cell": "gtn|seed=0", "status": "complete"}, "n@smoke", FewstepCell),
    ({"cell": "real|seed=3", "status": "running"}, "f@cpu", FewstepCell),
])
def test_the_kind_of_a_record_written_before_kinds_is_inferred_from_where_it_lives(attrs, study, kind):
    record = record_from_attrs(attrs, study)
    assert type(record) is kind and record.schema_version == 0 and isinstance(record, Record)
    if kind is FewstepCell:   # a claim-only record is named by its key
        assert (record.source, record.seed) == records.split_cell_key(attrs["cell"])

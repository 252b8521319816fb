"""The tuning stage shared by processes, per arm (``tgbench.tuning``'s module docstring): each arm's study is
claimed before it runs, so a trial another live process is running is never failed; a process whose unfinished
arms are all held waits, and takes an arm over once its claim goes stale (only then are its RUNNING trials failed
and re-run); a claim lost while its worker still ran stops that worker; ``tgbench run --jobs 2`` and two
independent ``tgbench run`` processes tune different arms at once and choose what one process chooses.

The in-process tests run in seconds; those that start ``tgbench`` processes are marked ``system``."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

import tgbench.tuning as tuning
from tgbench.suite.loading import load_suite
from tgbench.data import load_dataset
from tgbench.records import Status
from tgbench.store import Store, trial_record

LR = {"low": 0.02, "high": 0.4, "log": True}
QUIET = dict(log=lambda *a, **k: None)


def _suite(tmp: Path, trials: int = 2, iterations: int = 2, name: str = "par") -> Path:
    """A tiny fewstep suite with a short-horizon tuning stage (``iterations`` outer iterations per trial, and per
    final cell) over two arms."""
    suite = {
        "name": name, "dataset": {"name": "mnist-5k"},
        "learner": {"conv_channels": [[4]], "fc_hidden": [[8]], "batch_norm": False},
        "inner": {"steps": 2, "batch_size": 10},
        "outer": {"iterations": iterations, "meta_batch_size": 16},
        "evaluation": {"seeds": 1, "eval_every": 2, "eval_learners": 1, "final_learners": 1, "held_out": {},
                       "count_flops": False},
        "tuning": {"trials": trials, "startup_trials": 1, "outer_iterations": iterations, "learners": 1,
                   "space": {"inner.lr": LR, "outer.lr": {"low": 0.003, "high": 0.05, "log": True}}},
        "sources": [{"method": "real"},
                    {"method": "real", "label": "real_sgd", "inner": {"learn_lr": False, "learn_momentum": False},
                     "tune_space": {"inner.lr": LR}}],
        "profiles": {"smoke": {}},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def _study(store: Store, suite, entry) -> optuna.Study:
    return optuna.load_study(study_name=tuning.tuning_study_name(suite, "smoke", entry), storage=store.storage)


def _foreign_claim(store: Store, suite, entry, chash: str) -> int:
    """A live claim of ``entry``'s study by a worker on another machine (no local process check applies)."""
    claims = store.study(tuning.stage_claims_name(suite, "smoke"))
    template = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs={
        "kind": "fewstep_cell", "schema_version": 1, "cell": tuning.arm_claim_key(entry), "config_hash": chash,
        "status": "running", "worker": {"host": "elsewhere.example", "boot": "x", "pid": 1}})
    trial_id = store.storage.create_new_trial(store.storage.get_study_id_from_name(claims.study_name), template)
    store.storage.record_heartbeat(trial_id)
    return trial_id


def _foreign_running_trial(store: Store, spec: tuning.StudySpec) -> tuple[int, dict]:
    """The foreign worker's trial of that study, RUNNING with its sampled values: (trial number, values)."""
    study = tuning.open_study(store, spec.name, spec.config_hash)   # (empty: nothing to fail)
    values = {"inner.lr": 0.1, "outer.lr": 0.01}
    dists = {"inner.lr": optuna.distributions.FloatDistribution(0.02, 0.4, log=True),
             "outer.lr": optuna.distributions.FloatDistribution(0.003, 0.05, log=True)}
    template = optuna.trial.create_trial(state=TrialState.RUNNING, params=values, distributions=dists)
    trial_id = store.storage.create_new_trial(study._study_id, template)
    return store.storage.get_trial_number_from_id(trial_id), values


def test_a_held_arm_is_left_alone_while_its_claim_beats_then_taken_over_once_stale(tmp_path, single_thread,
                                                                                    monkeypatch):
    """Another machine holds the first arm and is running one of its trials. This process tunes the second arm,
    then waits, and while the other worker's heartbeat goes on, its running trial is untouched. Once the heartbeat
    stops (grace period 2 s) the arm is taken over: only then is that trial failed, and re-run with its values."""
    suite = load_suite(_suite(tmp_path), "smoke")
    real, sgd = suite.sources
    dataset = load_dataset("mnist-5k", seed=0)
    store = Store(f"sqlite:///{tmp_path}/t.db", heartbeat_interval=1, grace_period=2)
    spec = tuning.stage_spec(suite, "smoke", real, dataset.resolved)
    claim_id = _foreign_claim(store, suite, real, spec.config_hash)
    number, values = _foreign_running_trial(store, spec)
    beating = threading.Event()
    beating.set()

    def beat():
        while beating.is_set():
            store.storage.record_heartbeat(claim_id)
            time.sleep(0.2)

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    seen, real_sleep = [], time.sleep

    def sleep_and_look(seconds):
        if not seen:   # the first wait: the other arm is tuned, the held arm's running trial untouched
            seen.append((_study(store, suite, real).trials[number].state,
                         tuning.finished_study(store, tuning.stage_spec(suite, "smoke", sgd, dataset.resolved))))
            beating.clear()   # ... and now the other worker dies
        real_sleep(seconds)

    monkeypatch.setattr(tuning, "WAIT_SECONDS", 0.2)
    monkeypatch.setattr(tuning, "time", SimpleNamespace(sleep=sleep_and_look))   # (the beater's sleep is real)
    lines = []
    chosen = tuning.tune_stage(store, suite, "smoke", dataset, log=lambda *a, **k: lines.append(" ".join(a)))
    beating.clear()
    beater.join()
    assert seen and seen[0][0] == TrialState.RUNNING and seen[0][1] is not None
    assert "tuning stage: waiting for 1 arm(s) other workers are tuning (real)" in lines
    trials = _study(store, suite, real).trials
    assert trials[number].state == TrialState.FAIL                        # failed by the takeover ...
    rerun = [t for t in trials if t.user_attrs.get(tuning.RETRY_OF) == number]
    assert len(rerun) == 1 and rerun[0].params == values and rerun[0].state == TrialState.COMPLETE   # ... re-run
    assert len([t for t in trials if t.state in tuning.FINISHED]) == suite.tuning.trials
    assert set(chosen) == {"real", "real_sgd"} and all(chosen.values())
    claims = store.study(tuning.stage_claims_name(suite, "smoke")).trials
    records = [trial_record(t, "claims") for t in claims]
    assert records[0].status == Status.FAILED and "no heartbeat" in records[0].error   # the stale claim
    assert all(t.state == TrialState.FAIL for t in claims)                 # nothing left claimed
    assert sorted(r.cell for r in records[1:] if r.error.startswith(tuning.RELEASED)) == ["tuning/real",
                                                                                            "tuning/real_sgd"]


def test_a_claim_lost_while_its_worker_ran_stops_it_and_ctrl_c_releases_the_claim(tmp_path, single_thread,
                                                                                   monkeypatch, capsys):
    suite = load_suite(_suite(tmp_path, trials=3), "smoke")
    real = suite.sources[0]
    dataset = load_dataset("mnist-5k", seed=0)
    url = f"sqlite:///{tmp_path}/t.db"
    store = Store(url)
    real_meta_train, calls = tuning.meta_train, []

    def revoked_after_the_first_trial(*args, **kwargs):
        calls.append(1)
        out = real_meta_train(*args, **kwargs)
        other = Store(url)    # another worker decides this one went stale
        claims = other.study(tuning.stage_claims_name(suite, "smoke"))
        [running] = claims.get_trials(states=(TrialState.RUNNING,))
        other.storage.set_trial_state_values(running._trial_id, state=TrialState.FAIL)
        return out

    monkeypatch.setattr(tuning, "meta_train", revoked_after_the_first_trial)
    assert tuning.tune_arm(store, suite, "smoke", real, dataset, print) is None
    assert "lost its claim; another worker tunes the arm" in capsys.readouterr().err
    assert len(calls) == 1 and len(_study(store, suite, real).trials) == 1   # no trial launched after the loss

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tuning, "meta_train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tuning.tune_arm(store, suite, "smoke", real, dataset, **QUIET)
    last = store.study(tuning.stage_claims_name(suite, "smoke")).trials[-1]
    assert last.state == TrialState.FAIL and last.user_attrs["error"].startswith(f"{tuning.RELEASED} (KeyboardInt")
    assert store.busy_cells(store.study(tuning.stage_claims_name(suite, "smoke"))) == set()  # free at once


def test_the_order_arms_are_tuned_in_changes_no_choice(tmp_path, single_thread):
    suite = load_suite(_suite(tmp_path), "smoke")
    dataset = load_dataset("mnist-5k", seed=0)
    forward = tuning.tune_stage(Store(f"sqlite:///{tmp_path}/a.db"), suite, "smoke", dataset, **QUIET)
    store = Store(f"sqlite:///{tmp_path}/b.db")
    for entry in reversed(suite.sources):
        tuning.tune_arm(store, suite, "smoke", entry, dataset, **QUIET)
    assert tuning.tuned_values(store, suite, "smoke", dataset.resolved) == forward


# ------------------------------------------------------------------------------------------ real processes
ENV_DROP = "TGBENCH_"
WORKER = """\
import os, sys, time
from pathlib import Path
import tgbench.runner
from tgbench.cli import main
start = Path(sys.argv[1])
Path(f"{start}.ready.{os.getpid()}").touch()
while not start.exists():
    time.sleep(0.02)
sys.exit(main(sys.argv[2:]))
"""


def _env() -> dict:
    import os
    return {**{k: v for k, v in os.environ.items() if not k.startswith(ENV_DROP)}, "OMP_NUM_THREADS": "1"}


def _argv(suite: Path, db: Path, out: Path, *extra: str) -> list[str]:
    return ["run", str(suite), "--profile", "smoke", "--no-progress", "--storage", f"sqlite:///{db}", "--out",
            str(out), "--artifacts", str(out.parent / "artifacts"), *extra]


def _race(argvs: list[list[str]], cwd: Path, timeout: float = 400) -> list[subprocess.CompletedProcess]:
    """Start the commands together: each imports everything, then all wait for one start line."""
    start = cwd / "start"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(start), *argv], cwd=cwd, env=_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for argv in argvs]
    deadline = time.monotonic() + timeout
    while len(list(cwd.glob("start.ready.*"))) < len(procs):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a worker did not start"
        time.sleep(0.05)
    start.touch()
    done = []
    for p in procs:
        out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def _check_stage(db: Path, suite, reference: dict) -> list[optuna.trial.FrozenTrial]:
    """Every arm's study holds exactly its trials, all complete (none failed by another process); the choices
    are the reference's; nothing is left claimed. Returns the claims that tuned an arm."""
    store = Store(f"sqlite:///{db}")
    for entry in suite.sources:
        states = [t.state for t in _study(store, suite, entry).trials]
        assert states == [TrialState.COMPLETE] * suite.tuning.trials, (entry.name, states)
    assert tuning.tuned_values(store, suite, "smoke", "mnist-5k") == reference
    claims = store.study(tuning.stage_claims_name(suite, "smoke"), create=False).trials
    assert all(t.state == TrialState.FAIL for t in claims)
    return [t for t in claims if t.user_attrs["error"] == f"{tuning.RELEASED} (finished)"]


def _overlap(store_db: Path, suite) -> bool:
    store = Store(f"sqlite:///{store_db}")
    spans = [(min(t.datetime_start for t in s.trials), max(t.datetime_complete for t in s.trials))
             for s in (_study(store, suite, e) for e in suite.sources)]
    (a0, a1), (b0, b1) = spans
    return a0 < b1 and b0 < a1


@pytest.mark.slow
@pytest.mark.system
def test_two_processes_and_jobs_2_tune_different_arms_at_once_and_choose_what_one_process_does(tmp_path):
    """One process alone (the reference), then two `tgbench run` processes racing on one store, then one
    `tgbench run --jobs 2`: each arm's study has exactly its trials, none failed by the other process, the arms
    were tuned at the same time by different processes, and every store chose the same values and ran the same
    final cells."""
    path = _suite(tmp_path, trials=3, iterations=20)   # ~seconds per arm: the two arms' tuning overlaps
    suite = load_suite(path, "smoke")
    alone = subprocess.run([sys.executable, "-m", "tgbench.cli", *_argv(path, tmp_path / "alone.db",
                                                                        tmp_path / "alone")],
                           cwd=tmp_path, env=_env(), text=True, capture_output=True, timeout=400)
    assert alone.returncode == 0, alone.stderr
    reference = tuning.tuned_values(Store(f"sqlite:///{tmp_path}/alone.db"), suite, "smoke", "mnist-5k")
    assert reference is not None and all(reference.values())

    raced = _race([_argv(path, tmp_path / "two.db", tmp_path / f"two{i}") for i in range(2)], tmp_path)
    assert all(r.returncode == 0 for r in raced), [r.stderr for r in raced]
    tuned_by = _check_stage(tmp_path / "two.db", suite, reference)
    assert len({t.user_attrs["worker"]["pid"] for t in tuned_by}) == 2      # process A one arm, B the other
    assert _overlap(tmp_path / "two.db", suite), "the two arms were not tuned at the same time"

    jobs = subprocess.run([sys.executable, "-m", "tgbench.cli", *_argv(path, tmp_path / "jobs.db", tmp_path / "jobs",
                                                                       "--jobs", "2")],
                          cwd=tmp_path, env=_env(), text=True, capture_output=True, timeout=400)
    assert jobs.returncode == 0, jobs.stderr
    tuned_by = _check_stage(tmp_path / "jobs.db", suite, reference)
    assert len({t.user_attrs["worker"]["pid"] for t in tuned_by}) == 2      # one worker process per arm
    assert _overlap(tmp_path / "jobs.db", suite), "the two arms were not tuned at the same time"

    cells = [pd.read_csv(tmp_path / out / "summary.csv")[["source", "variant", "status"]].to_dict("records")
             for out in ("alone", "two0", "two1", "jobs")]
    assert all(c == cells[0] for c in cells) and all("inner.lr=" in c["variant"] for c in cells[0])


@pytest.mark.slow
@pytest.mark.system
def test_kill_9_mid_stage_then_another_process_takes_the_arm_over_and_reruns_the_killed_trial(tmp_path):
    """`kill -9` while a tuning trial runs: the claim and the trial stay RUNNING; the next `tgbench run` on this
    machine finds the claimant dead (no grace period to wait: ``Store.fail_stale``), takes the arm over, fails the
    killed trial and runs it again with its values, and finishes the stage and the cells."""
    path = _suite(tmp_path, trials=3, iterations=20)
    suite = load_suite(path, "smoke")
    db = tmp_path / "t.db"
    first = subprocess.Popen([sys.executable, "-m", "tgbench.cli", *_argv(path, db, tmp_path / "out")], cwd=tmp_path,
                             env=_env(), text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while True:   # until a tuning trial of the first arm has run for a moment
        assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.stderr else ""
        try:
            if any(t.state == TrialState.RUNNING and t.params for t in _study(Store(f"sqlite:///{db}"), suite,
                                                                                 suite.sources[0]).trials):
                break
        except KeyError:   # the study does not exist yet
            pass
        time.sleep(0.1)
    first.kill()
    first.wait()
    store = Store(f"sqlite:///{db}")
    [killed] = [t for t in _study(store, suite, suite.sources[0]).trials if t.state == TrialState.RUNNING]
    second = subprocess.run([sys.executable, "-m", "tgbench.cli", *_argv(path, db, tmp_path / "out")], cwd=tmp_path,
                            env=_env(), text=True, capture_output=True, timeout=400)
    assert second.returncode == 0, second.stderr
    trials = _study(store, suite, suite.sources[0]).trials
    assert trials[killed.number].state == TrialState.FAIL
    [rerun] = [t for t in trials if t.user_attrs.get(tuning.RETRY_OF) == killed.number]
    assert rerun.params == killed.params and rerun.state == TrialState.COMPLETE
    assert len([t for t in trials if t.state in tuning.FINISHED]) == suite.tuning.trials
    claims = [trial_record(t, "claims") for t in store.study(tuning.stage_claims_name(suite, "smoke")).trials]
    assert claims[0].cell == "tuning/real" and claims[0].error == "interrupted: its worker stopped (no heartbeat)"
    assert tuning.tuned_values(store, suite, "smoke", "mnist-5k") is not None

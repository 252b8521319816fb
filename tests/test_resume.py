"""Cells that survive interruption (issue 24): a fewstep cell saves its whole meta-training state every
``outer.save_every`` outer iterations, and a rerun after ``kill -9``, SIGTERM or a lost machine continues from
the last save with final numbers bit-identical to a run never stopped (same device).

* engine level: ``MetaTrainer`` for n steps == k steps, ``state_dict()`` through a file, a trainer built from
  scratch (another seed, another teacher init) + ``load_state_dict``, n - k more steps — bitwise, for every
  source and estimator, with architecture sampling;
* ``SavedState``: safe loading, the identity check, atomic writes;
* a cell interrupted in-process (an exception at an outer step, as SIGTERM raises one) and rerun;
* ``system``: ``tgbench run`` killed with SIGKILL / SIGTERM once its first state is saved, then rerun.
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from tgbench import cells, engine
from tgbench.suite.loading import load_suite
from tgbench.suite.schema import InnerLoop, LearnerSpace, OuterLoop
from tgbench.data import Dataset, Split
from tgbench.engine import MetaTrainer
from tgbench.inner import InnerHyperparameters
from tgbench.records import Status
from tgbench.registry import methods
from tgbench.resume import FORMAT, SavedState
from tgbench.source import SourceContext, Teacher
from tgbench.store import Store
from tgbench.worker import WorkerEnv

pytestmark = pytest.mark.usefixtures("single_thread")  # fixture in conftest.py

SHAPE, CLASSES = (1, 8, 8), 4
SPACE = LearnerSpace(conv_channels=[[2], [3]], fc_hidden=[[4], [5]])   # architecture sampling draws from rng
TINY_GTN = dict(noise_dim=4, fc_hidden=8, channels=(4, 2))
ARMS = {  # name: (method, source params, outer options)
    "gtn_shuffled_curriculum": ("gtn", {**TINY_GTN, "curriculum": "all_shuffled", "learn_labels": True}, {}),
    "gtn_no_curriculum": ("gtn", {**TINY_GTN, "curriculum": "none"}, {}),
    "gtn_es": ("gtn", {**TINY_GTN, "curriculum": "shuffled_batch"}, dict(meta_gradient="es", es_pairs=2)),
    "gtn_hybrid": ("gtn", TINY_GTN, dict(meta_gradient="hybrid", es_pairs=2)),
    "gtn_population": ("gtn", TINY_GTN, dict(population=2)),
    "real": ("real", {}, {}),
    "dataset_distillation": ("dataset_distillation", {"learn_labels": True}, dict(grad_clip=0.5)),
}


def split(n: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, *SHAPE, generator=g), torch.randint(CLASSES, (n,), generator=g))


DATA = Dataset("tiny", "tiny", split(100, 0), split(40, 12), split(50, 11), CLASSES, SHAPE, (0.0,), (1.0,), "random")


def trainer(arm: str, seed: int = 7, init_seed: int = 0, steps: int = 3) -> MetaTrainer:
    method, params, outer = ARMS[arm]
    cls = methods.get(method)
    torch.manual_seed(init_seed)
    source = cls(cls.Params(**params), SourceContext(DATA.train, steps, 10, DATA.problem))
    teacher = Teacher(source, InnerHyperparameters(steps, 0.1, 0.5, learn_momentum=True))
    return MetaTrainer(teacher, SPACE, DATA.train, InnerLoop(steps=steps, batch_size=10),
                       OuterLoop(meta_batch_size=20, iterations=6, **outer), seed=seed)


def run(t: MetaTrainer, n: int) -> list[tuple]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return [(s.iteration, s.meta_loss, s.grad_norm, s.architecture, s.extras) for s in
                (t.step() for _ in range(n))]


def through_a_file(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)   # what SavedState.load does: plain data only


def assert_same_trainer(a: MetaTrainer, b: MetaTrainer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["iteration"] == sb["iteration"]
    assert sa["teacher"].keys() == sb["teacher"].keys()
    for k in sa["teacher"]:
        assert torch.equal(sa["teacher"][k], sb["teacher"][k]), k
    for name in ("exp_avg", "exp_avg_sq"):
        assert all(torch.equal(x, y) for x, y in zip(sa["optimizer"][name], sb["optimizer"][name]))
    assert sa["optimizer"]["steps"] == sb["optimizer"]["steps"]
    assert torch.equal(sa["generator"], sb["generator"]) and sa["rng"] == sb["rng"]


# ------------------------------------------------------------------------------------------------ engine level
@pytest.mark.parametrize("arm", ARMS)
def test_a_trainer_resumed_from_its_state_continues_bit_for_bit(arm):
    straight = trainer(arm)
    expected = run(straight, 5)

    first = trainer(arm)
    assert run(first, 2) == expected[:2]
    state = through_a_file(first.state_dict())
    # a new trainer from scratch — another seed and another teacher init, so only the loaded state can make it agree
    resumed = trainer(arm, seed=99, init_seed=5)
    resumed.load_state_dict(state)
    assert resumed.iteration == 2
    assert run(resumed, 3) == expected[2:]
    assert_same_trainer(resumed, straight)


def test_a_trainer_state_is_a_copy_and_refuses_another_teacher():
    t = trainer("gtn_shuffled_curriculum")
    state = t.state_dict()
    run(t, 1)   # the saved copy does not move with the trainer
    assert not all(torch.equal(state["teacher"][k], v) for k, v in t.teacher.state_dict().items())
    with pytest.raises(RuntimeError):   # other tensors: never half-mixed silently
        trainer("real").load_state_dict(state)
    with pytest.raises(ValueError, match="optimizer state"):
        other = trainer("gtn_no_curriculum")
        other.load_state_dict({**other.state_dict(), "optimizer": {**state["optimizer"],
                                                                   "exp_avg": state["optimizer"]["exp_avg"][:1]}})


# ------------------------------------------------------------------------------------------------ SavedState
def test_a_saved_state_round_trips_and_a_foreign_one_is_ignored_with_a_note(tmp_path, capsys):
    path = tmp_path / "deep" / "cell.pt"
    mine = SavedState(path, "abc", torch.device("cpu"), "gtn|seed=0")
    assert mine.load() is None and capsys.readouterr().err == ""   # nothing saved: silently fresh
    state = {"trainer": trainer("gtn_hybrid").state_dict(), "loop": {"curve": [{"val_acc": 0.5, "meta_loss": None}]}}
    mine.save(state)
    back = mine.load()
    assert back["loop"] == state["loop"] and torch.equal(back["trainer"]["generator"], state["trainer"]["generator"])
    assert [p.name for p in path.parent.iterdir()] == ["cell.pt"]   # no temporary file left

    other_hash = SavedState(path, "xyz", torch.device("cpu"), "gtn|seed=0")
    assert other_hash.load() is None
    note = capsys.readouterr().err.strip().splitlines()
    assert len(note) == 1 and "gtn|seed=0" in note[0] and "config hash is 'abc'" in note[0]

    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "identity": {**payload["identity"], "format": FORMAT + 1}}, path)
    assert mine.load() is None and "format is" in capsys.readouterr().err

    mine.remove()
    assert not path.exists()


def test_a_saved_state_holding_a_pickled_object_is_ignored_without_running_it(tmp_path, capsys):
    probe = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (probe,))

    path = tmp_path / "cell.pt"
    torch.save({"identity": {}, "state": Evil()}, path)
    assert SavedState(path, "abc", torch.device("cpu"), "c").load() is None
    assert not probe.exists() and "cannot be read" in capsys.readouterr().err


def test_a_save_killed_mid_write_keeps_the_previous_state(tmp_path, monkeypatch):
    saved = SavedState(tmp_path / "cell.pt", "abc", torch.device("cpu"), "c")
    saved.save({"loop": {"n": 1}})

    def full_disk(obj, f):
        f.write(b"half a fi")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError):
        saved.save({"loop": {"n": 2}})
    monkeypatch.undo()
    assert saved.load() == {"loop": {"n": 1}} and [p.name for p in tmp_path.iterdir()] == ["cell.pt"]


# ------------------------------------------------------------------------------------------------ a cell, in-process
SUITE = {"name": "resume", "kind": "fewstep", "dataset": {"name": "mnist-5k"},
         "learner": {"conv_channels": [[2], [3], [4]], "fc_hidden": [[4], [5]], "batch_norm": False},
         "inner": {"steps": 2, "batch_size": 8},
         "outer": {"iterations": 9, "meta_batch_size": 8, "save_every": 3},
         "evaluation": {"seeds": 1, "eval_every": 2, "eval_learners": 1, "final_learners": 1, "held_out": {},
                        "count_flops": False},
         "sources": [{"method": "gtn", "params": {**TINY_GTN, "channels": [4, 2], "curriculum": "all_shuffled"}}],
         "profiles": {"smoke": {}}}
CELL = "gtn|seed=0"
SAME = ["outer_iterations", "curve", "schedule", "test_acc_final", "val_acc_final", "test_loss_final",
        "val_loss_final", "steps_test_acc", "steps_val_acc", "samples", "held_out", "status"]


def cell_task(tmp: Path, suite: Path, store: str) -> cells.CellTask:
    env = WorkerEnv(storage=f"sqlite:///{tmp}/{store}.db", artifacts_dir=str(tmp / f"{store}-artifacts"),
                    progress=False)
    return cells.cell_task(load_suite(suite, "smoke"), "smoke", "gtn", 0, env)


def teacher_weights(env: WorkerEnv, record) -> dict:
    return Store(env.storage, env.artifacts_dir).load_teacher(record.teacher_artifact)["state_dict"]


def assert_same_cell(env_a: WorkerEnv, a, env_b: WorkerEnv, b) -> None:
    for key in SAME:
        assert getattr(a, key) == getattr(b, key), key
    wa, wb = teacher_weights(env_a, a), teacher_weights(env_b, b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_a_cell_stopped_mid_way_resumes_from_its_last_save_with_the_same_numbers(tmp_path, monkeypatch, capsys):
    suite = tmp_path / "resume.yaml"
    suite.write_text(yaml.safe_dump(SUITE))
    straight_task = cell_task(tmp_path, suite, "straight")
    straight = cells.run_cell(straight_task)
    assert straight.status == Status.COMPLETE and straight.resumed_from is None

    task = cell_task(tmp_path, suite, "stopped")
    step = engine.MetaTrainer.step

    def sigterm_at_iteration_8(self):   # what interrupt.check() raises after a SIGTERM
        if self.iteration == 7:
            raise KeyboardInterrupt
        return step(self)

    monkeypatch.setattr(engine.MetaTrainer, "step", sigterm_at_iteration_8)
    with pytest.raises(KeyboardInterrupt):
        cells.run_cell(task)
    monkeypatch.undo()
    [state_file] = (tmp_path / "stopped-artifacts" / "saved_states").rglob("*.pt")
    store = Store(task.env.storage, task.env.artifacts_dir)
    study = store.study("resume@smoke", create=False)
    assert [t.user_attrs["status"] for t in study.get_trials()] == ["failed"]
    assert state_file == store.saved_state_path(study, CELL, study.get_trials()[0].user_attrs["config_hash"])
    capsys.readouterr()

    resumed = cells.run_cell(task)
    assert f"tgbench: resuming {CELL} from iteration 6" in capsys.readouterr().err
    assert resumed.status == Status.COMPLETE and resumed.resumed_from == [6]
    assert_same_cell(straight_task.env, straight, task.env, resumed)
    assert resumed.phase_seconds["meta_training"] > 0 and "state_saves" in resumed.phase_seconds
    assert not state_file.exists() and not list(state_file.parent.iterdir())   # removed with the cell done
    stored = store.records(study)
    assert [r.resumed_from for r in stored if r.status == Status.COMPLETE] == [[6]]


@pytest.mark.slow
def test_save_every_0_saves_nothing_and_a_diverged_cell_leaves_no_state(tmp_path, monkeypatch):
    suite = tmp_path / "resume.yaml"
    suite.write_text(yaml.safe_dump({**SUITE, "outer": {**SUITE["outer"], "save_every": 0}}))
    saves = []
    monkeypatch.setattr(SavedState, "save", lambda self, state: saves.append(state))
    assert cells.run_cell(cell_task(tmp_path, suite, "never")).status == Status.COMPLETE
    assert saves == []
    monkeypatch.undo()

    suite.write_text(yaml.safe_dump(SUITE))
    step = engine.MetaTrainer.step

    def diverge_at_iteration_5(self):
        if self.iteration == 4:
            raise engine.Diverged("meta-loss is nan at outer iteration 4")
        return step(self)

    save = SavedState.save

    def counted_save(self, state):
        saves.append(state["trainer"]["iteration"])
        save(self, state)

    monkeypatch.setattr(engine.MetaTrainer, "step", diverge_at_iteration_5)
    monkeypatch.setattr(SavedState, "save", counted_save)
    record = cells.run_cell(cell_task(tmp_path, suite, "diverged"))
    assert record.status == Status.DIVERGED and record.outer_iterations == 4
    assert saves == [3]   # saved once, then removed with the diverged record
    assert not list((tmp_path / "diverged-artifacts" / "saved_states").rglob("*.pt"))


# ------------------------------------------------------------------------------------------------ real processes
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("TGBENCH_")}, "OMP_NUM_THREADS": "1"}


def _argv(tmp: Path, suite: Path, store: str) -> list[str]:
    return [sys.executable, "-m", "tgbench.cli", "run", str(suite), "--profile", "smoke", "--no-progress",
            "--storage", f"sqlite:///{tmp}/{store}.db", "--out", str(tmp / f"{store}-out"),
            "--artifacts", str(tmp / f"{store}-artifacts")]


def _record(tmp: Path, store: str):
    s = Store(f"sqlite:///{tmp}/{store}.db", tmp / f"{store}-artifacts")
    [record] = [r for r in s.records(s.study("resume@smoke", create=False)) if r.status == Status.COMPLETE]
    return WorkerEnv(storage=s.url, artifacts_dir=str(s.artifacts_dir)), record


@pytest.mark.slow
@pytest.mark.system
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_tgbench_run_killed_after_a_save_resumes_on_rerun_with_the_same_numbers(tmp_path, signum):
    suite = tmp_path / "resume.yaml"
    suite.write_text(yaml.safe_dump({**SUITE, "outer": {**SUITE["outer"], "iterations": 60, "save_every": 5},
                                     "evaluation": {**SUITE["evaluation"], "eval_every": 10}}))
    straight = subprocess.run(_argv(tmp_path, suite, "straight"), cwd=tmp_path, env=ENV, text=True,
                              capture_output=True, timeout=600)
    assert straight.returncode == 0, straight.stderr

    proc = subprocess.Popen(_argv(tmp_path, suite, "killed"), cwd=tmp_path, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    saved_states = tmp_path / "killed-artifacts" / "saved_states"
    deadline = time.monotonic() + 300
    while not list(saved_states.rglob("*.pt")):
        assert proc.poll() is None, f"tgbench exited before its first save: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, "no state was saved"
        time.sleep(0.02)
    proc.send_signal(signum)
    proc.communicate(timeout=120)
    assert proc.returncode == (-signal.SIGKILL if signum == signal.SIGKILL else 128 + signal.SIGTERM)
    assert list(saved_states.rglob("*.pt"))

    again = subprocess.run(_argv(tmp_path, suite, "killed"), cwd=tmp_path, env=ENV, text=True,
                           capture_output=True, timeout=600)
    assert again.returncode == 0, again.stderr
    resumed_line = [line for line in again.stderr.splitlines() if line.startswith("tgbench: resuming")]
    assert len(resumed_line) == 1 and resumed_line[0].startswith(f"tgbench: resuming {CELL} from iteration ")
    at = int(resumed_line[0].rsplit(" ", 1)[1])
    assert at > 0 and at % 5 == 0

    env_a, a = _record(tmp_path, "straight")
    env_b, b = _record(tmp_path, "killed")
    assert b.resumed_from == [at] and a.resumed_from is None
    assert_same_cell(env_a, a, env_b, b)
    assert not list(saved_states.rglob("*.pt")) and not list(saved_states.rglob("*.tmp"))

"""Trackers log the resolved hyperparameters and the final metrics (issue 26): TensorBoard's ``add_hparams``, W&B's
config and summary; W&B follows ``WANDB_PROJECT`` / ``WANDB_DIR`` / ``WANDB_MODE`` and goes offline only without a
mode and a login; a missing tracker names the ``log`` extra."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

import pytest
import yaml

from tgbench.records import cell_key
from tgbench.store import Store

from helpers import cli

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {"name": "tracked", "kind": "fewstep", "dataset": {"name": "mnist-5k"},
        "learner": {"conv_channels": [[2]], "fc_hidden": [[4]]},
        "inner": {"steps": 2, "batch_size": 8}, "outer": {"iterations": 1, "meta_batch_size": 8},
        "evaluation": {"seeds": 1, "eval_every": 1, "eval_learners": 1, "final_learners": 1},
        "profiles": {"smoke": {}}, "sources": [{"method": "real", "inner": {"lr": 0.05}}]}


def run_tracked(tmp_path, capsys, log: str):
    suite = tmp_path / "tracked.yaml"
    suite.write_text(yaml.safe_dump(TINY))
    url = f"sqlite:///{tmp_path}/s.db"
    code, _, err = cli(["run", str(suite), "--profile", "smoke", "--no-progress", "--log", log, "--storage", url,
                        "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    store = Store(url)
    [record] = [r for r in store.records(store.study("tracked@smoke", create=False)) if r.cell == cell_key("real", 0)]
    return record


def test_tensorboard_gets_the_hyperparameters_and_the_final_metrics(tmp_path, capsys):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install \"tgbench[log]\")")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    record = run_tracked(tmp_path, capsys, "tensorboard")
    [run_dir] = (tmp_path / "out" / "tensorboard" / "tracked").iterdir()
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    assert events.Scalars("final/test_acc_final")[0].value == pytest.approx(record.test_acc_final)
    assert events.Scalars("final/val_acc_final")[0].value == pytest.approx(record.val_acc_final)
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["arm.inner.lr"].number_value == pytest.approx(0.05)
    assert hparams["suite.inner.steps"].number_value == 2 and hparams["seed"].number_value == 0
    assert hparams["arm.method"].string_value == "real"


@pytest.fixture
def fake_wandb(monkeypatch):
    """A stand-in ``wandb`` module that records what tgbench asks of it (the real one is optional)."""
    calls: dict = {"log": [], "summary": {}}
    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)

    class Run:
        summary = calls["summary"]

        def log(self, values, step=None):
            calls["log"].append((values, step))

        def finish(self):
            calls["finished"] = True

    def init(**kwargs):
        calls["init"] = kwargs
        return Run()

    module.init, module.Image = init, lambda array: ("image", array.shape)
    monkeypatch.setitem(sys.modules, "wandb", module)
    for name in ("WANDB_PROJECT", "WANDB_DIR", "WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_wandb_follows_its_environment_and_gets_config_and_summary(tmp_path, capsys, monkeypatch, fake_wandb):
    monkeypatch.setenv("WANDB_PROJECT", "my-project")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-here"))
    monkeypatch.setenv("WANDB_MODE", "online")
    record = run_tracked(tmp_path, capsys, "wandb")
    init = fake_wandb["init"]
    assert init["project"] == "my-project" and init["dir"] == str(tmp_path / "wandb-here")
    assert "mode" not in init and "reinit" not in init   # WANDB_MODE is wandb's to read; no deprecated reinit
    assert init["config"]["arm"]["inner"]["lr"] == 0.05 and init["config"]["suite"]["inner"]["steps"] == 2
    assert fake_wandb["summary"]["test_acc_final"] == pytest.approx(record.test_acc_final)
    assert fake_wandb["finished"]


def test_wandb_without_a_mode_or_a_login_runs_offline(tmp_path, capsys, monkeypatch, fake_wandb):
    monkeypatch.setenv("HOME", str(tmp_path))     # (no ~/.netrc login)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    run_tracked(tmp_path, capsys, "wandb")
    assert fake_wandb["init"]["mode"] == "offline" and fake_wandb["init"]["project"] == "tgbench"
    assert fake_wandb["init"]["dir"] == str(tmp_path / "out" / "wandb")


def test_a_missing_tracker_names_the_extra(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    suite = tmp_path / "tracked.yaml"
    suite.write_text(yaml.safe_dump(TINY))
    code, _, err = cli(["run", str(suite), "--profile", "smoke", "--log", "wandb",
                        "--storage", f"sqlite:///{tmp_path}/s.db", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and 'pip install "tgbench[log]"' in err and len(err.strip().splitlines()) == 1

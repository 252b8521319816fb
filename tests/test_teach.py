"""Export -> teach round trip: a teacher exported from the store and taught to fresh learners reproduces the
store's recorded evaluation for the same seed and architecture exactly; ``--model`` takes any logits module;
bad inputs are one line, exit 2.
"""
from __future__ import annotations

import re

import pytest
import torch

from tgbench.cli import main
from tgbench.runner import RunOptions, run_suite
from tgbench.store import Store
from tgbench.teach import FORMAT, load_exported, teach

SUITE = """name: roundtrip
dataset: {name: mnist-5k}
learner: {conv_channels: [[4, 8]], fc_hidden: [[16]]}
inner: {steps: 4, batch_size: 20}
outer: {iterations: 2, lr: 0.01, meta_batch_size: 32}
evaluation: {seeds: 2, eval_every: 2, eval_learners: 1, final_learners: 2, held_out: {}, count_flops: false}
sources:
  - method: real
  - method: gtn
    params: {noise_dim: 8, fc_hidden: 16, channels: [8, 4]}
profiles: {smoke: {}}
"""

MODELS = '''
import torch
from torch import nn

from tgbench.nn import Learner, LearnerSpec
from tgbench.problem import Problem


class SameAsSuite(Learner):
    """tgbench's own learner with the suite's reference architecture, behind the --model contract."""

    def __init__(self, image_shape, num_classes):
        super().__init__(LearnerSpec((4, 8), (16,)), Problem(image_shape, num_classes))


class TinyMLP(nn.Module):
    """A user's model: plain torch layers, default init, logits out."""

    def __init__(self, image_shape, num_classes):
        super().__init__()
        c, h, w = image_shape
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 32), nn.ReLU(), nn.Linear(32, num_classes))

    def forward(self, x):
        return self.net(x)


class WrongOutput(TinyMLP):
    def forward(self, x):
        return self.net(x)[:, :3]
'''


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The store of a tiny two-arm, two-seed suite, and the exported teacher files of every cell."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("roundtrip")
    (tmp / "roundtrip.yaml").write_text(SUITE)
    (tmp / "user_models.py").write_text(MODELS)
    url = f"sqlite:///{tmp}/store.db"
    try:
        run_suite(str(tmp / "roundtrip.yaml"), RunOptions(profile="smoke", storage=url, out=str(tmp / "report"),
                                                          progress=False), log=lambda *a, **k: None)
        files = {}
        for source in ("real", "gtn"):
            for seed in (0, 1):
                files[source, seed] = tmp / f"{source}{seed}.pt"
                assert main(["export", "--suite", str(tmp / "roundtrip.yaml"), "--profile", "smoke", "--source",
                             source, "--seed", str(seed), "--out", str(files[source, seed]), "--storage", url]) == 0
    finally:
        torch.set_num_threads(old)
    store = Store(url)
    records = {(r.source, r.seed): r for r in store.records(store.study("roundtrip@smoke", create=False))}
    return tmp, files, records


def test_export_holds_the_teacher_and_its_metadata(exported):
    _, files, records = exported
    payload = load_exported(files["gtn", 1])
    assert payload["format"] == FORMAT and payload["seed"] == 1 and payload["method"] == "gtn"
    keys = set(payload["state_dict"])
    assert {"source.codes", "hyper.log_lr", "hyper.logit_momentum"} <= keys             # curriculum + schedule
    assert any(k.startswith("source.generator.") for k in keys)                          # generator weights
    assert payload["schedule"] == records["gtn", 1].schedule
    assert payload["record"]["test_acc_final"] == records["gtn", 1].test_acc_final
    lr = payload["state_dict"]["hyper.log_lr"].exp().tolist()
    assert lr == pytest.approx(payload["schedule"]["lr"])


@pytest.mark.parametrize("source", ["real", "gtn"])
def test_teach_reproduces_the_recorded_evaluation_exactly(exported, source, single_thread):
    tmp, files, records = exported
    for seed in (0, 1):
        result = teach(files[source, seed], log=lambda *a: None)
        assert result.test_acc[-1] == records[source, seed].test_acc_final
        assert result.val_acc[-1] == records[source, seed].val_acc_final
        # losses are continuous: bit-equal losses mean the very same learners were trained on the same lessons
        assert result.test_loss[-1] == records[source, seed].test_loss_final
    assert records[source, 0].test_loss_final != records[source, 1].test_loss_final
    shorter = teach(files[source, 0], steps=3, log=lambda *a: None)
    assert shorter.test_loss[-1] != records[source, 0].test_loss_final


def test_teach_cli_with_tgbench_learner_as_model_matches_the_store(exported, capsys, monkeypatch, single_thread):
    tmp, files, records = exported
    monkeypatch.syspath_prepend(str(tmp))
    assert main(["teach", str(files["gtn", 0]), "--model", "user_models:SameAsSuite"]) == 0
    out = capsys.readouterr().out
    printed = float(re.search(r"^test accuracy: ([0-9.]+)", out, flags=re.M).group(1))
    assert printed == round(records["gtn", 0].test_acc_final, 6)


def test_teach_a_users_logits_model(exported, monkeypatch, single_thread):
    tmp, files, _ = exported
    monkeypatch.syspath_prepend(str(tmp))
    first = teach(files["real", 0], model="user_models:TinyMLP", steps=8, log=lambda *a: None)
    again = teach(files["real", 0], model="user_models:TinyMLP", steps=8, log=lambda *a: None)
    assert first == again                                     # seeded: reproducible
    assert first.test_loss[-1] < first.test_loss[0]           # it trained on real-data lessons
    fewer = teach(files["real", 0], model="user_models:TinyMLP", steps=2, log=lambda *a: None)
    assert fewer.test_loss[0] == first.test_loss[0] and fewer.test_loss[-1] != first.test_loss[-1]


@pytest.mark.parametrize("argv_tail, expected", [
    (["--model", "nonexistent_pkg.mod:Net"], "--model: cannot import"),
    (["--model", "no_colon"], "package.module:ClassName"),
    (["--model", "user_models:WrongOutput"], "expected (2, 10) logits"),
])
def test_teach_bad_model_is_one_line(exported, capsys, monkeypatch, argv_tail, expected):
    tmp, files, _ = exported
    monkeypatch.syspath_prepend(str(tmp))
    assert main(["teach", str(files["real", 0]), *argv_tail]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_bad_teacher_files_and_cells(exported, tmp_path, capsys):
    tmp, _, _ = exported
    junk = tmp_path / "junk.pt"
    torch.save({"not": "a teacher"}, junk)
    (tmp_path / "text.pt").write_text("hello")
    for argv, expected in [
        (["teach", str(junk)], "not a tgbench teacher"),
        (["teach", str(tmp_path / "text.pt")], "not a readable teacher file"),
        (["teach", str(tmp_path / "missing.pt")], "no such teacher file"),
        (["export", "--suite", "roundtrip", "--profile", "smoke", "--source", "gtn", "--seed", "7", "--out",
          str(tmp_path / "x.pt"), "--storage", f"sqlite:///{tmp}/store.db"], "no cell 'gtn|seed=7'"),
        (["export", "--suite", "roundtrip", "--profile", "cpu", "--source", "gtn", "--out", str(tmp_path / "x.pt"),
          "--storage", f"sqlite:///{tmp}/store.db"], "no study 'roundtrip@cpu'"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (argv, err)
    assert not (tmp_path / "x.pt").exists()


def _one_line_naming(err: str, path) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tgbench: error: ") and "Traceback" not in err, err
    assert str(path) in lines[0], lines[0]
    return lines[0]


def _variant(files, change) -> dict:
    payload = load_exported(files["gtn", 0])
    change(payload)
    return payload


def _bad_state_shape(p):
    key = next(k for k, v in p["state_dict"].items() if v.ndim >= 1 and k.startswith("source.generator."))
    p["state_dict"][key] = torch.zeros(*p["state_dict"][key].shape[:-1], p["state_dict"][key].shape[-1] + 1)


def _drop_state_key(p):
    del p["state_dict"]["hyper.log_lr"]


def _extra_state_key(p):
    p["state_dict"]["source.not_a_parameter"] = torch.zeros(3)


@pytest.mark.parametrize("change, expected", [
    (lambda p: [p.pop(k) for k in list(p) if k != "format"], "'method' is missing"),   # {'format': ...} alone
    (lambda p: p.pop("state_dict"), "'state_dict' is missing"),
    (lambda p: p.update(state_dict={}), "state_dict is empty"),
    (lambda p: p.update(state_dict={"hyper.log_lr": [0.1, 0.2]}), "entry 'hyper.log_lr' is not a tensor"),
    (lambda p: p.update(seed="0"), "'seed' is a str, expected int"),
    (lambda p: p.update(suite=[1, 2]), "'suite' is a list"),
    (lambda p: p.update(suite={"name": "x", "learner": {"conv_channels": "nope"}}), "suite: not a valid"),
    (lambda p: p.update(method="nosuchmethod", source=None), "nosuchmethod"),
    (lambda p: p.update(dataset_resolved="nosuchdata"), "unknown dataset 'nosuchdata'"),
    (_bad_state_shape, "state_dict: does not fit the 'gtn' teacher"),
    (_drop_state_key, "state_dict: does not fit the 'gtn' teacher"),
    (_extra_state_key, "state_dict: does not fit the 'gtn' teacher"),
], ids=["format_only", "no_state_dict", "empty_state_dict", "list_in_state_dict", "seed_str", "suite_list",
        "invalid_suite", "unknown_method", "unknown_dataset", "wrong_shape", "missing_key", "unexpected_key"])
def test_teach_refuses_a_file_that_is_not_a_tgbench_teacher(exported, tmp_path, capsys, change, expected):
    _, files, _ = exported
    bad = tmp_path / "bad.pt"
    torch.save(_variant(files, change), bad)
    assert main(["teach", str(bad)]) == 2
    line = _one_line_naming(capsys.readouterr().err, bad)
    assert expected in line, line


def test_teach_still_takes_the_unchanged_file_through_the_same_path(exported, tmp_path, single_thread):
    """(the refusals above come from the change, not from re-saving: an untouched re-save still teaches)"""
    _, files, records = exported
    same = tmp_path / "same.pt"
    torch.save(_variant(files, lambda p: None), same)
    assert teach(same, log=lambda *a: None).test_acc[-1] == records["gtn", 0].test_acc_final


def test_export_from_a_store_that_does_not_exist_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "sub" / "none.db"
    code = main(["export", "--suite", "roundtrip", "--profile", "smoke", "--source", "gtn", "--out",
                 str(tmp_path / "x.pt"), "--storage", f"sqlite:///{missing}"])
    assert code == 2
    line = _one_line_naming(capsys.readouterr().err, missing)
    assert "no store at" in line
    assert list(tmp_path.iterdir()) == []

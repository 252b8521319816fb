"""``external`` lesson files are checked when the suite is validated (issue 27): ``batch_size: "abc"`` or a NaN
``lr`` with ``schedule: file`` validated, then failed inside the cell (exit 1, a message naming neither the file
nor the key). Now ``tgbench validate`` and ``tgbench run`` refuse them before any work: exit 2, one line naming the
suite file, the lesson file and the key."""
from __future__ import annotations

import math

import pytest
import torch
import yaml

from helpers import cli, studies

TINY = {"kind": "fewstep", "dataset": {"name": "mnist-5k"}, "learner": {"conv_channels": [[2]], "fc_hidden": [[4]]},
        "inner": {"steps": 2, "batch_size": 8}, "outer": {"iterations": 1, "meta_batch_size": 8},
        "evaluation": {"seeds": 1, "eval_every": 1, "eval_learners": 1, "final_learners": 1, "held_out": {}},
        "profiles": {"smoke": {}}}
N = 16


def _lessons(**changes) -> dict:
    good = {"images": torch.randn(N, 1, 28, 28), "labels": torch.arange(N) % 10, "batch_size": 8,
            "lr": torch.full((2,), 0.02), "momentum": torch.full((2,), 0.5)}
    return {**good, **changes}


BAD = {
    "batch_size_a_string": ({"batch_size": "abc"}, "batch_size"),
    "batch_size_a_float": ({"batch_size": 2.5}, "batch_size"),
    "batch_size_a_boolean": ({"batch_size": True}, "batch_size"),
    "batch_size_one": ({"batch_size": 1}, "batch_size"),
    "batch_size_over_the_images": ({"batch_size": N + 1}, "batch_size"),
    "lr_nan": ({"lr": torch.tensor([0.02, math.nan])}, "lr"),
    "lr_inf": ({"lr": torch.tensor([math.inf, 0.02])}, "lr"),
    "lr_negative": ({"lr": torch.tensor([-0.1, 0.02])}, "lr"),
    "lr_overflowing": ({"lr": torch.tensor([1e35, 0.02], dtype=torch.float64)}, "lr"),
    "lr_integers": ({"lr": torch.tensor([1, 2])}, "lr"),
    "momentum_nan": ({"momentum": torch.tensor([math.nan, 0.5])}, "momentum"),
    "momentum_zero": ({"momentum": torch.tensor([0.0, 0.5])}, "momentum"),
}


def _suite(tmp_path, lessons: dict, schedule: str = "file"):
    torch.save(lessons, tmp_path / "lessons.pt")
    suite = tmp_path / "ext.yaml"
    suite.write_text(yaml.safe_dump({"name": "ext", **TINY, "sources": [
        {"method": "external", "params": {"path": "lessons.pt", "schedule": schedule}}]}))
    return suite


@pytest.mark.parametrize("kind", list(BAD))
def test_a_bad_lesson_file_is_exit_2_at_validate_naming_both_files_and_the_key(kind, tmp_path, capsys):
    changes, key = BAD[kind]
    suite = _suite(tmp_path, _lessons(**changes))
    code, _, err = cli(["validate", str(suite)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert str(suite) in lines[0] and "sources[0].params" in lines[0], err
    assert f"{tmp_path / 'lessons.pt'}: {key}:" in lines[0], err


def test_run_refuses_it_before_any_work(tmp_path, capsys):
    suite = _suite(tmp_path, _lessons(lr=torch.tensor([math.nan, 0.02])))
    code, out, err = cli(["run", str(suite), "--profile", "smoke", "--no-progress", "--storage",
                          f"sqlite:///{tmp_path}/t.db", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "lessons.pt: lr:" in err, err
    assert studies(tmp_path / "t.db") == [] and not (tmp_path / "out").exists()


def test_good_files_validate_and_the_schedule_is_checked_only_when_used(tmp_path, capsys):
    code, _, err = cli(["validate", str(_suite(tmp_path, _lessons()))], capsys)
    assert code == 0, err
    tensor_batch = _lessons(batch_size=torch.tensor(8), momentum=torch.tensor([1.5, 0.5]))  # (exp momentum form)
    code, _, err = cli(["validate", str(_suite(tmp_path, tensor_batch))], capsys)
    assert code == 0, err
    code, _, err = cli(["validate", str(_suite(tmp_path, _lessons(lr=torch.tensor([math.nan])), "suite"))], capsys)
    assert code == 0, err

"""The suite saved inside a teacher file is bounded before ``tgbench teach`` builds anything from it (issue 27): a
file whose embedded suite was edited to ``learner.conv_channels: [[8192, 8192]]`` or ``evaluation.final_learners:
100000`` was trusted as written (gigabytes allocated, or 100000 learners trained). Now: exit 2 naming the file and
the ``suite.`` key. Run in a subprocess under ``RLIMIT_AS`` with a timeout (before, the first allocated until the
limit stopped it with exit 1, the second ran on past the timeout)."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import exported_teacher

TINY = {"kind": "fewstep", "dataset": {"name": "mnist-5k"}, "learner": {"conv_channels": [[2]], "fc_hidden": [[4]]},
        "inner": {"steps": 2, "batch_size": 8}, "outer": {"iterations": 1, "meta_batch_size": 8},
        "evaluation": {"seeds": 1, "eval_every": 1, "eval_learners": 1, "final_learners": 1, "held_out": {}},
        "profiles": {"smoke": {}}, "sources": [{"method": "real"}]}
LIMIT = 6 * 2 ** 30


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    return exported_teacher(tmp_path_factory.mktemp("teacher-suite"), {"name": "tinyteach", **TINY})


def _edited(teacher_file: Path, tmp_path: Path, section: str, key: str, value) -> Path:
    payload = torch.load(teacher_file, weights_only=True)
    payload["suite"][section][key] = value
    out = tmp_path / "edited.pt"
    torch.save(payload, out)
    return out


def _teach(path: Path, *flags: str) -> tuple[int, str]:
    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))

    done = subprocess.run([sys.executable, "-m", "tgbench", "teach", str(path), *flags], capture_output=True,
                          text=True, timeout=120, preexec_fn=limited, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return done.returncode, done.stderr


@pytest.mark.parametrize("section, key, value, said", [
    ("learner", "conv_channels", [[8192, 8192]], "suite.learner.conv_channels: "),
    ("evaluation", "final_learners", 100000, "suite.evaluation.final_learners: 100000 learners"),
])
def test_an_edited_embedded_suite_is_exit_2_naming_the_file_and_key(teacher_file, tmp_path, section, key, value,
                                                                    said):
    edited = _edited(teacher_file, tmp_path, section, key, value)
    code, err = _teach(edited)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and f"{edited}: {said}" in lines[0], err


def test_the_unedited_file_and_fewer_learners_still_teach(teacher_file, tmp_path):
    assert _teach(teacher_file)[0] == 0
    edited = _edited(teacher_file, tmp_path, "evaluation", "final_learners", 100000)
    code, err = _teach(edited, "--learners", "1")
    assert code == 0, err
    code, err = _teach(teacher_file, "--learners", "5000")
    assert code == 2 and "--learners: at most 1000" in err, err

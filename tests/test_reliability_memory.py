"""Inputs that exhaust memory or block (issue 27).

``tgbench validate /dev/zero`` read until MemoryError; ``validate`` and ``teach`` on a FIFO blocked forever; a
YAML alias bomb used as ``sweep: {values: *a8}`` expanded 9**9 items while building arm labels (54 s,
MemoryError); ``tgbench teach teacher.pt --steps 1000000`` on a T = 2 teacher grew ~55 KB per step. Now text
inputs are read only from regular files, at most ``MAX_TEXT_BYTES``; a suite's YAML may expand to at most
``MAX_YAML_VALUES`` values; ``teach --steps`` is bounded and its memory does not grow with the steps. The tests
that could hang run in a subprocess with a timeout; the memory tests under ``resource.setrlimit``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from helpers import exported_teacher
from tgbench.suite.yaml_text import MAX_YAML_VALUES
from tgbench.locations import MAX_TEXT_BYTES

from helpers import cli

TINY = {"kind": "fewstep", "dataset": {"name": "mnist-5k"}, "learner": {"conv_channels": [[2]], "fc_hidden": [[4]]},
        "inner": {"steps": 2, "batch_size": 64}, "outer": {"iterations": 1, "meta_batch_size": 8},
        "evaluation": {"seeds": 1, "eval_every": 1, "eval_learners": 1, "final_learners": 1},
        "profiles": {"smoke": {}}, "sources": [{"method": "real"}]}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _tgbench(argv: list[str], cwd: Path, timeout: float = 60, limit_bytes: int | None = None):
    """tgbench in a subprocess (a hang is a failed test, not a hung suite); ``limit_bytes``: RLIMIT_AS."""
    def limit():
        if limit_bytes:
            import resource
            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "tgbench", *argv], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=limit)
    return done.returncode, done.stderr, time.monotonic() - start


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_validate_on_a_device_is_exit_2_at_once(tmp_path):
    code, err, seconds = _tgbench(["validate", "/dev/zero"], tmp_path, limit_bytes=4 * 1024 ** 3)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "/dev/zero" in err and "device" in err, err


@pytest.mark.parametrize("command", [["validate"], ["teach"]])
def test_a_fifo_is_exit_2_at_once_for_validate_and_teach(tmp_path, command):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    code, err, _ = _tgbench([*command, str(fifo)], tmp_path, timeout=60)
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(fifo) in err and "FIFO" in err, err


def test_a_suite_over_the_size_cap_is_exit_2_naming_the_file(tmp_path, capsys):
    suite = tmp_path / "big.yaml"
    suite.write_text(yaml.safe_dump({"name": "big", **TINY}) + "# padding\n" * (MAX_TEXT_BYTES // 10 + 1))
    code, _, err = cli(["validate", str(suite)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(suite) in err and "larger than" in err


def test_a_yaml_alias_bomb_is_refused_quickly_under_a_memory_limit(tmp_path):
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    body = yaml.safe_dump({"name": "bomb", **TINY})
    suite = tmp_path / "bomb.yaml"
    suite.write_text("x-anchors:\n" + "".join(f"  {line}\n" for line in levels) + body
                     + "sweep: {key: inner.lr, values: *a8}\n")
    code, err, seconds = _tgbench(["validate", str(suite)], tmp_path, timeout=60, limit_bytes=4 * 1024 ** 3)
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(suite) in err, err
    assert str(MAX_YAML_VALUES) in err and seconds < 30


# ------------------------------------------------------------------------------------------ teach --steps
@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    """A T = 2 real-data teacher (batch 64: ~200 KB of lessons per inner step), exported."""
    return exported_teacher(tmp_path_factory.mktemp("teach-memory"), {"name": "tinymem", **TINY})


TEACH_PEAK_GROWTH = """
import resource, sys
from tgbench.teach import teach
path, steps = sys.argv[1], int(sys.argv[2])
teach(path, steps=2, log=lambda *a: None)            # everything imported and allocated once
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 2 ** 30, vm + 2 ** 30))   # a runaway stops here, not the machine
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
teach(path, steps=steps, log=lambda *a: None)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)   # KiB of new peak resident memory
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmSize from /proc")
def test_teach_memory_does_not_grow_with_steps(teacher_file):
    """4000 steps of 64 MNIST images held ~800 MB of lessons before; now they share the teacher's two.

    Measured as growth of the peak *resident* set after a 2-step warm-up, under an RLIMIT_AS of 1 GiB above the
    warmed-up virtual size (a guard against a runaway, not the measure: a virtual-memory cap of 350 MB headroom
    failed in CI once — what the allocator and OpenMP threads reserve is not memory the lessons use). The bound
    sits between what was measured: the old growth is 565 MB over 4000 steps (the sharing turned off); with it,
    under 100 MB when the test runs alone, but 255 MB once inside a full CI run (cause not found; the allocator's
    high-water mark depends on more than this process's lessons). 350 MB still fails the old code.
    """
    done = subprocess.run([sys.executable, "-c", TEACH_PEAK_GROWTH, str(teacher_file), "4000"], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    growth_kib = int(done.stdout.strip().splitlines()[-1])
    assert growth_kib < 350 * 1024, f"peak resident memory grew {growth_kib / 1024:.0f} MB over 4000 steps"


def test_teach_steps_beyond_the_bound_are_exit_2_before_any_work(teacher_file, capsys):
    code, _, err = cli(["teach", str(teacher_file), "--steps", "1000000"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--steps" in err


# ------------------------------------------------------------------------------------------ teacher values
@pytest.mark.parametrize("change, expected", [
    (lambda t: t.round().to(torch.int64), "int64"),
    (lambda t: torch.full_like(t, float("nan")), "NaN"),
    (lambda t: torch.full_like(t, float("inf")), "NaN or infinite"),
])
def test_a_teacher_with_integer_or_non_finite_weights_is_exit_2(teacher_file, tmp_path, capsys, change, expected):
    """load_state_dict casts what it copies: such a teacher 'taught' at chance level with exit 0."""
    payload = torch.load(teacher_file, weights_only=True)
    key = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
    payload["state_dict"][key] = change(payload["state_dict"][key])
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    code, _, err = cli(["teach", str(bad)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert str(bad) in err and f"state_dict.{key}" in err and expected in err


def test_an_external_lesson_file_that_is_a_fifo_is_exit_2_at_once(tmp_path):
    fifo = tmp_path / "lessons.pt"
    os.mkfifo(fifo)
    suite = tmp_path / "ext.yaml"
    suite.write_text(yaml.safe_dump({"name": "ext", **{**TINY, "sources": [
        {"method": "external", "params": {"path": str(fifo)}}]}}))
    code, err, _ = _tgbench(["validate", str(suite)], tmp_path, timeout=60)
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(fifo) in err and "FIFO" in err, err


def test_an_export_that_runs_out_of_disk_says_so_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    """torch.save on a full disk raised "RuntimeError: [enforce fail at inline_container.cc:672]" and left its
    tmp*.tmp behind (simulated here: a torch.save that fails as torch's does, on a disk with 1 KB free)."""
    import shutil
    from collections import namedtuple

    from tgbench import teach as teach_module
    from tgbench.errors import BadInput

    def full_disk_save(obj, target):
        Path(target).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(teach_module.torch, "save", full_disk_save)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 ** 9, 10 ** 9 - 1024, 1024))
    out = tmp_path / "exports" / "teacher.pt"
    with pytest.raises(BadInput, match="no space left on the device holding"):
        teach_module.save_atomically({"x": 1}, out)
    assert list(out.parent.iterdir()) == []


def test_an_alias_bomb_in_one_set_value_is_refused(capsys):
    levels = ["&a0 [x, x, x, x, x, x, x, x, x]"] + [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 7)]
    bomb = "[" + ", ".join(levels) + ", *a6]"
    code, _, err = cli(["validate", "mnist_fewstep", "--set", f"sweep.values={bomb}"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--set sweep.values" in err
    assert str(MAX_YAML_VALUES) in err

"""Values that validate but cannot run are refused before any work (issue 27): ``--set outer.lr=1e300`` failed in the
first cell (float32 overflow, exit 1), a GTN ``noise_dim`` / ``fc_hidden`` / ``channels`` of 1e12 failed allocating
the generator, ``learner.conv_channels: [[8192, 8192, 8192]]`` failed allocating a 1.2 G-weight learner. Now the
learning rates and the methods' sizes have bounds (exit 2 at ``validate``), and ``tgbench.fit`` compares a lower
bound of each arm's memory with what the run can get before the store is touched (exit 2 naming the file and key).
Every shipped suite fits at every profile. The memory test runs under ``RLIMIT_AS`` in a subprocess.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tgbench import fit
from tgbench.suite.loading import load_suite
from tgbench.suite.names import PROFILES, installed_suites
from tgbench.problem import Problem

from helpers import cli, studies

TINY = {"kind": "fewstep", "dataset": {"name": "mnist-5k"},
        "learner": {"conv_channels": [[4]], "fc_hidden": [[8]], "batch_norm": False},
        "inner": {"steps": 2, "batch_size": 10}, "outer": {"iterations": 1, "meta_batch_size": 16},
        "evaluation": {"seeds": 1, "eval_every": 1, "eval_learners": 1, "final_learners": 1, "held_out": {}},
        "profiles": {"smoke": {}},
        "sources": [{"method": "gtn", "params": {"noise_dim": 4, "fc_hidden": 8, "channels": [4, 4]}}]}
GIB = 2 ** 30


def _suite(tmp_path: Path) -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"name": "t", **TINY}))
    return path


def _run(tmp_path, capsys, *sets: str):
    argv = ["run", str(_suite(tmp_path)), "--profile", "smoke", "--no-progress", "--storage",
            f"sqlite:///{tmp_path}/t.db", "--out", str(tmp_path / "out")]
    for setting in sets:
        argv += ["--set", setting]
    return cli(argv, capsys)


@pytest.mark.parametrize("setting, key", [
    ("outer.lr=1e300", "outer.lr"), ("inner.lr=1e300", "inner.lr"), ("sources.gtn.inner={lr: 1.0e31}", "sources[0].inner.lr"),
    ("sources.gtn.params.code_scale=.inf", "sources.gtn.params.code_scale"),
    ("sources.gtn.params.code_scale=1e300", "sources.gtn.params.code_scale"),
    ("sources.gtn.params.noise_dim=1000000000000", "sources.gtn.params.noise_dim"),
    ("sources.gtn.params.fc_hidden=1000000000000", "sources.gtn.params.fc_hidden"),
    ("sources.gtn.params.channels=[1000000000000, 4]", "sources.gtn.params.channels"),
])
def test_values_that_validate_but_cannot_run_are_exit_2_at_validate(tmp_path, capsys, setting, key):
    code, _, err = cli(["validate", str(_suite(tmp_path)), "--set", setting], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and str(tmp_path / "t.yaml") in lines[0] and key in lines[0], err


def test_a_learning_rate_that_overflows_is_refused_before_any_work(tmp_path, capsys):
    code, out, err = _run(tmp_path, capsys, "outer.lr=1e300")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "outer.lr: 1e+300" in err, err
    assert studies(tmp_path / "t.db") == [] and not (tmp_path / "out").exists()


def test_the_bounds_keep_every_lr_of_a_tuning_range_legal(tmp_path, capsys):
    raw = {"name": "t", **TINY, "tuning": {"trials": 2, "space": {"outer.lr": {"low": 1e-3, "high": 1e31}}}}
    path = tmp_path / "tuned.yaml"
    path.write_text(yaml.safe_dump(raw))
    code, _, err = cli(["validate", str(path)], capsys)
    assert code == 2 and "tuning.space.outer.lr: 1e+31" in err, err


def test_a_learner_too_large_for_the_memory_limit_is_exit_2_before_any_work(tmp_path):
    """Under RLIMIT_AS = 6 GiB (torch and the data need ~3): before, the cell started and died allocating the
    first 2.4 GB conv weight (exit 1)."""
    limit = 6 * GIB

    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = subprocess.run([sys.executable, "-m", "tgbench", "run", str(_suite(tmp_path)), "--profile", "smoke",
                           "--no-progress", "--storage", f"sqlite:///{tmp_path}/t.db", "--out", str(tmp_path / "out"),
                           "--set", "learner.conv_channels=[[8192, 8192, 8192]]"],
                          cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=300, preexec_fn=limited)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert f"{tmp_path / 't.yaml'}: learner.conv_channels: source 'gtn' cannot fit in memory" in lines[0]
    assert studies(tmp_path / "t.db") == [] and not (tmp_path / "out").exists()


@pytest.fixture
def capped_memory():
    """These runs go on to allocate tens of GB when the check misses them (one did: the OOM killer took the test
    worker): cap this process's address space 4 GiB above what it maps now, so a miss is a MemoryError here."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    mapped = int(next(line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
                      if line.startswith("VmSize:"))) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mapped + 4 * GIB, hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.parametrize("setting, key", [
    ("learner.conv_channels=[[8192, 8192]]", "learner.conv_channels"),
    ("learner.fc_hidden=[[8192, 8192, 8192, 8192, 8192, 8192, 8192, 8192]]", "learner.fc_hidden"),
    ("sources.gtn.params={noise_dim: 8192, fc_hidden: 8192, channels: [8192, 8192]}", "sources[0].params"),
    ("evaluation.held_out={big: {conv_channels: [8192, 8192, 8192]}}", "evaluation.held_out"),
    ("outer.population=100000", "learner.conv_channels"),
])
def test_what_cannot_fit_names_the_key_that_sizes_it(tmp_path, capsys, monkeypatch, setting, key, capped_memory):
    monkeypatch.setattr(fit, "available_bytes", lambda device: 8 * GIB)
    code, _, err = _run(tmp_path, capsys, setting)
    assert code == 2 and len(err.strip().splitlines()) == 1 and f"t.yaml: {key}: " in err, err
    assert "cannot fit in memory" in err and "8.0 GiB available" in err
    assert studies(tmp_path / "t.db") == []


# A CPU profile is for a laptop; the paper profile for a GPU's memory. The lower bound of every shipped suite's
# largest arm must sit well inside them (the bound is several times below the true peak).
PROBLEMS = {"cifar10": Problem((3, 32, 32), 10)}
ROOM = {"smoke": 1 * GIB, "cpu": 2 * GIB, "paper": 16 * GIB}


@pytest.mark.parametrize("name", sorted(installed_suites()))
def test_every_shipped_suite_fits_at_every_profile(name, monkeypatch):
    path = installed_suites()[name]
    for profile in PROFILES:
        suite = load_suite(path, profile)
        problem = PROBLEMS.get(suite.dataset.name, Problem((1, 28, 28), 10))
        monkeypatch.setattr(fit, "available_bytes", lambda device: ROOM[profile])
        fit.check_fit(path, suite, problem, 50_000, "cpu", profile)
        if profile != "paper":  # and on this machine, as a run here checks it
            monkeypatch.undo()
            fit.check_fit(path, suite, problem, 50_000, "cpu", profile)


def test_the_estimate_counts_what_an_unroll_keeps():
    suite = load_suite(installed_suites()["mnist_fewstep"], "paper")
    problem = Problem((1, 28, 28), 10)
    needs = fit.arm_needs(suite, 0, problem, 50_000)
    learner = next(n for n in needs if n.what.startswith("meta-training"))
    spec = fit.meta_specs(suite, suite.sources[0])[0]
    weights, outputs = fit.learner_parameters(spec, problem), fit.learner_outputs(spec, problem)
    steps, batch = suite.inner.steps, suite.inner.batch_size
    assert outputs == 64 * 28 * 28 + 128 * 14 * 14 + 256
    assert learner.bytes == 4 * ((steps + 1) * 2 * weights + steps * batch * outputs
                                 + suite.outer.meta_batch_size * outputs)
    assert fit.kept_steps(32, 0, "backprop") == 32 and fit.kept_steps(32, 4, "backprop") == 12
    assert fit.kept_steps(32, 0, "es") == 1 and fit.kept_steps(4, 8, "backprop") == 4


def test_the_memory_figure_honours_the_address_space_limit():
    code = ("import resource; from tgbench import fit; lim = 8 * 2 ** 30; "
            "resource.setrlimit(resource.RLIMIT_AS, (lim, lim)); print(fit.available_bytes('cpu') / 2 ** 30)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert 0 < float(done.stdout) < 8


@pytest.mark.parametrize("suite, setting, key", [
    ("wn_sensitivity", "learner.conv_channels=[[8192, 8192]]", "learner.conv_channels"),        # kind: tune
    ("mnist_nas_proxy", "learner.conv_channels=[[8192, 8192]]", "learner.conv_channels"),       # kind: nas_proxy
    ("wn_sensitivity", "outer.lr=1e300", "outer.lr"),
])
def test_tune_and_nas_suites_are_refused_before_any_work_too(tmp_path, capsys, monkeypatch, suite, setting, key,
                                                            capped_memory):
    """The other suite kinds check the same bounds as fewstep before their report folder or store exists (they
    went on to allocate inside their first trial or teacher)."""
    monkeypatch.setattr(fit, "available_bytes", lambda device: 8 * GIB)
    code, _, err = cli(["run", suite, "--profile", "smoke", "--no-progress", "--storage", f"sqlite:///{tmp_path}/t.db",
                        "--out", str(tmp_path / "out"), "--set", setting], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and f"{suite}.yaml: {key}: " in err, err
    assert studies(tmp_path / "t.db") == [] and not (tmp_path / "out").exists()


def test_on_cuda_the_memory_figure_is_the_free_device_memory(monkeypatch):
    """(No GPU here: the driver's answer is stood in for.) What a cell on a GPU can get is its free memory; a
    driver that cannot be asked gives no figure, and then no memory check (the run says itself what failed)."""
    import torch

    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: asked.append(device) or (5 * GIB, 80 * GIB))
    assert fit.available_bytes("cuda:1") == 5 * GIB and asked == [torch.device("cuda:1")]

    def no_driver(device):
        raise RuntimeError("Found no NVIDIA driver on your system")
    monkeypatch.setattr(torch.cuda, "mem_get_info", no_driver)
    assert fit.available_bytes("cuda") is None
    assert fit.available_bytes("meta") is None


def test_a_suite_too_large_for_the_gpu_names_it(monkeypatch):
    import torch

    from tgbench.errors import ConfigError

    path = installed_suites()["mnist_fewstep"]
    suite = load_suite(path, "paper")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (GIB // 8, 80 * GIB))
    with pytest.raises(ConfigError, match=r"cannot fit in memory: .* and cuda:0 has 0\.1 GiB available"):
        fit.check_fit(path, suite, Problem((1, 28, 28), 10), 50_000, "cuda:0", "paper")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (40 * GIB, 80 * GIB))
    fit.check_fit(path, suite, Problem((1, 28, 28), 10), 50_000, "cuda:0", "paper")


@pytest.mark.parametrize("method, params", [
    ("gtn", {"noise_dim": 8, "fc_hidden": 16, "channels": [4, 2]}),
    ("gtn", {"noise_dim": 8, "fc_hidden": 16, "channels": [4, 2], "curriculum": "none", "weight_norm": False}),
    ("gtn", {"noise_dim": 8, "fc_hidden": 16, "channels": [4, 2], "learn_labels": True}),
    ("dataset_distillation", {}),
    ("dataset_distillation", {"pixel_lr_scale": 10.0, "learn_labels": True}),
])
def test_counted_without_allocating_the_weights_are_those_of_a_real_build(method, params):
    """The memory check counts a teacher (and a learner) built on the meta device with its random initialisation
    skipped (``fit.sizes_only``): the count is the one a real build on the CPU gives."""
    from tgbench.nn import Learner, LearnerSpec, count_params
    from tgbench.registry import methods
    from tgbench.suite.schema import SourceEntry
    from tgbench.testing import context

    suite = load_suite(installed_suites()["mnist_fewstep"], "smoke")
    ctx = context()
    cls = methods.get(method)
    real_build = count_params(cls(cls.Params.model_validate(params), ctx))
    entry = SourceEntry(method=method, params=params)
    counted = fit.teacher_parameters(suite.model_copy(update={"inner": suite.inner.model_copy(
        update={"steps": ctx.steps, "batch_size": ctx.batch_size})}), entry, ctx.problem, len(ctx.train))
    assert counted == real_build > 0
    for spec in (LearnerSpec(conv_channels=(3, 5), fc_hidden=(4,)),
                 LearnerSpec(conv_channels=(3,), fc_hidden=(4,), residual=True, bn_shift=True, weight_norm=False)):
        assert fit.learner_parameters(spec, ctx.problem) == count_params(Learner(spec, ctx.problem))


def test_the_quick_starts_memory_check_imports_no_compiler():
    """Counted on the meta device, a random init ran through PyTorch's Python decompositions, whose first use
    imports ``torch._dynamo``: 1.4 s of every run's start here (the quick start's largest import). The shipped
    quick-start suite's arms are counted without it."""
    code = ("import sys\nfrom tgbench import fit\nfrom tgbench.suite.loading import load_suite\n"
            "from tgbench.suite.names import installed_suites\nfrom tgbench.problem import Problem\n"
            "suite = load_suite(installed_suites()['mnist_fewstep'], 'smoke')\n"
            "for i in range(len(suite.sources)):\n    fit.arm_needs(suite, i, Problem((1, 28, 28), 10), 3500)\n"
            "print('torch._dynamo' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", (done.stdout, done.stderr)

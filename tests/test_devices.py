"""Devices (issue 15): nothing is created on another device than the run's, ``--device`` is honest, records say
where they were made, and ``--jobs`` gives each worker its own GPU.

CI has no GPU. The CPU tests catch device bugs anyway: under ``tgbench.device.strict`` torch's default device is
``meta`` and every op is audited, so a tensor made without ``device=`` inside a meta-step, an evaluation, a
source's lessons or a NAS proxy fails at the op that made it (shown by planting a bare ``torch.arange``). The
``cuda``-marked tests run the same code on a GPU when there is one (``pytest -m cuda``) and skip, saying why,
when there is none.
"""
from __future__ import annotations

import dataclasses
import queue
from pathlib import Path

import pytest
import torch
import yaml

from tgbench import builders, cells, device as devices, runner
from tgbench.worker import WorkerEnv
from tgbench.kinds.fewstep import run as fewstep
from tgbench.compute import synthetic_dataset
from tgbench.suite.loading import load_suite
from tgbench.suite.schema import Suite
from tgbench.errors import BadInput
from tgbench.kinds import RunOptions
from tgbench.nn import LearnerSpec
from tgbench.problem import Problem
from tgbench.provenance import default_profile
from tgbench.proxies import ProxyContext
from tgbench.registry import methods, proxies

from helpers import cli

pytestmark = pytest.mark.usefixtures("single_thread")

CPU = torch.device("cpu")
SHAPE, CLASSES = (1, 8, 8), 4
TINY_GTN = {"noise_dim": 4, "fc_hidden": 8, "channels": [4, 2]}
NO_CUDA = "no CUDA device here (CI has none): run `pytest -m cuda` on a GPU machine"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)


def tiny_suite(method: str, params: dict | None = None, outer: dict | None = None) -> Suite:
    return Suite.model_validate({
        "name": "device-check", "dataset": {"name": "mnist-5k"},
        "learner": {"conv_channels": [[2], [3]], "fc_hidden": [[4]]},
        "inner": {"steps": 3, "batch_size": 8},
        "outer": {"iterations": 2, "meta_batch_size": 8, **(outer or {})},
        "evaluation": {"seeds": 1, "eval_every": 1, "eval_learners": 1, "final_learners": 1},
        "sources": [{"method": method, "params": params or {}}],
    })


def tiny_data(device: torch.device = CPU):
    return devices.on_device(synthetic_dataset(Problem(SHAPE, CLASSES), batch_size=8, meta_batch=8), device)


ARMS = {  # every built-in source, and every meta-gradient estimator the meta-step has
    "real": ("real", {}, {}),
    "dd": ("dataset_distillation", {}, {}),
    "dd-real-init-soft-labels": ("dataset_distillation", {"init": "real", "learn_labels": True}, {}),
    "gtn-full": ("gtn", {**TINY_GTN, "curriculum": "full"}, {}),
    "gtn-none": ("gtn", {**TINY_GTN, "curriculum": "none"}, {}),
    "gtn-shuffled": ("gtn", {**TINY_GTN, "curriculum": "shuffled_batch", "learn_labels": True}, {}),
    "gtn-all-shuffled": ("gtn", {**TINY_GTN, "curriculum": "all_shuffled"}, {}),
    "gtn-checkpointed": ("gtn", {**TINY_GTN, "curriculum": "full"}, {"checkpoint_every": 2}),
    "gtn-population": ("gtn", {**TINY_GTN, "curriculum": "full"}, {"population": 2}),
    "gtn-es": ("gtn", {**TINY_GTN, "curriculum": "full"}, {"meta_gradient": "es", "es_pairs": 2}),
    "gtn-hybrid": ("gtn", {**TINY_GTN, "curriculum": "full"}, {"meta_gradient": "hybrid", "es_pairs": 2,
                                                               "intermediate_losses": True}),
}


# ------------------------------------------------------------------------ 1. no tensor on another device
@pytest.mark.parametrize("arm", list(ARMS))
def test_meta_training_and_evaluation_create_nothing_on_another_device(arm):
    method, params, outer = ARMS[arm]
    suite, data = tiny_suite(method, params, outer), tiny_data()
    with devices.strict(CPU):
        # the whole cell below the store: meta-steps, the periodic checks, the final evaluation, held-out
        # learners and the sample grid
        _, record = cells.meta_train(suite, suite.sources[0], data, seed=0, progress=False)
    assert record["status"] == "complete" and record["outer_iterations"] == 2


@pytest.mark.parametrize("name", ["real", "dataset_distillation", "gtn"])
def test_every_registered_sources_lessons_are_on_the_runs_device(name):
    suite, data = tiny_suite(name, TINY_GTN if name == "gtn" else {}), tiny_data()
    with devices.strict(CPU):
        teacher = builders.build_teacher(suite, suite.sources[0], data, seed=0)
        lesson = teacher(0, teacher.new_episode(devices.generator(CPU, 0)))
    assert lesson.x.device == lesson.y.device == CPU


def test_every_nas_proxy_scores_without_creating_tensors_on_another_device():
    suite = load_suite(Path(__file__).parents[1] / "suites" / "mnist_nas_proxy.yaml", "smoke")
    data = devices.on_device(synthetic_dataset(Problem((1, 28, 28), 10), batch_size=32, meta_batch=64), CPU)
    spec = LearnerSpec(conv_channels=(4,), fc_hidden=(32,))
    with devices.strict(CPU):
        teachers = {e.name: builders.build_teacher(suite, e, data, seed=0) for e in suite.sources}
        ctx = ProxyContext(data, suite, teachers)
        for entry in suite.nas.proxies:
            cls = proxies.get(entry.proxy)
            score = cls(cls.Params.model_validate(entry.params), ctx).score(spec, seed=3)
            assert isinstance(score, float), entry.name
    assert {e.proxy for e in suite.nas.proxies} == set(proxies.names())  # every built-in proxy was audited


def test_a_misplaced_arange_in_an_episode_is_caught(monkeypatch):
    """The check can fail: a source that makes its presentation order with a bare ``torch.arange`` (no
    ``device=``) is stopped at that op, although on this CPU-only machine it would have run."""
    gtn = methods.get("gtn")

    def misplaced_episode(self, generator):
        steps, batch = self.ctx.steps, self.ctx.batch_size
        return torch.arange(steps * batch).view(steps, batch)  # the bug: no device=generator.device

    monkeypatch.setattr(gtn, "new_episode", misplaced_episode)
    suite, data = tiny_suite("gtn", {**TINY_GTN, "curriculum": "full"}), tiny_data()
    with pytest.raises(devices.DeviceMismatch, match="arange.*meta"):
        with devices.strict(CPU):
            builders.build_trainer(suite, suite.sources[0], data, seed=0).step()
    # and without the audit the same code runs on a CPU-only machine: this is what the audit exists to catch
    builders.build_trainer(suite, suite.sources[0], data, seed=0).step()


# ------------------------------------------------------------------------ 2. --device and the records
def test_resolve_devices_and_refuse_what_this_machine_lacks(monkeypatch):
    monkeypatch.delenv(devices.ENV_VAR, raising=False)
    assert devices.resolve("cpu") == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve(None) == CPU == devices.resolve("auto")
    with pytest.raises(BadInput, match="--device: 'cuda' asked for"):
        devices.resolve("cuda")
    with pytest.raises(BadInput, match="not a device"):
        devices.resolve("gpu0")
    monkeypatch.setenv(devices.ENV_VAR, "cuda:1")
    with pytest.raises(BadInput, match=r"\$TGBENCH_DEVICE: 'cuda:1'"):
        devices.resolve(None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.resolve(None) == torch.device("cuda", 1)
    assert devices.resolve("auto") == torch.device("cuda", 0)
    with pytest.raises(BadInput, match="only 2 CUDA device"):
        devices.resolve("cuda:2")


def test_the_default_profile_follows_the_device_actually_used():
    assert default_profile(torch.device("cuda", 0)) == "paper"
    assert default_profile(CPU) == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: --device cuda is valid here")
def test_device_cuda_without_cuda_is_one_line_and_exit_2(capsys, tmp_path):
    suite = Path(__file__).parents[1] / "suites" / "mnist_fewstep.yaml"
    code, out, err = cli(["run", str(suite), "--profile", "smoke", "--device", "cuda",
                          "--storage", f"sqlite:///{tmp_path}/s.db", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--device" in err and "cuda" in err
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "out").exists()  # refused before any work


def test_records_and_reports_say_which_device_made_them(tmp_path, capsys):
    """A real (tiny) run with --device cpu: every cell record carries the device fields, the report names the
    device."""
    raw = {"name": "device_record", "kind": "fewstep", "dataset": {"name": "mnist-5k"},
           "learner": {"conv_channels": [[2]], "fc_hidden": [[4]]},
           "inner": {"steps": 2, "batch_size": 8}, "outer": {"iterations": 1, "meta_batch_size": 8},
           "evaluation": {"seeds": 1, "eval_every": 1, "eval_learners": 1, "final_learners": 1},
           "sources": [{"method": "real"}], "profiles": {"cpu": {}}}
    path = tmp_path / "device_record.yaml"
    path.write_text(yaml.safe_dump(raw))
    db = tmp_path / "s.db"
    code, _, err = cli(["run", str(path), "--profile", "cpu", "--device", "cpu", "--no-progress",
                        "--storage", f"sqlite:///{db}", "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    from tgbench.store import Store

    store = Store(f"sqlite:///{db}")
    [record] = store.records(store.study("device_record@cpu", create=False))
    assert record.device == "cpu" and record.gpu is None and record.gpu_peak_mb is None
    assert {"cuda", "cudnn", "tf32", "peak_rss_mb"} <= record.model_fields_set and record.tf32 is False
    report = (tmp_path / "out" / "report.md").read_text()
    assert "- **device**: cpu\n" in report


def test_facts_of_a_cuda_device_name_the_gpu_and_its_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: "Fake GPU 80GB")
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: 3 * 2 ** 20)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90100)
    facts = devices.facts(torch.device("cuda", 1))
    assert facts["device"] == "cuda:1" and facts["gpu"] == "Fake GPU 80GB" and facts["gpu_peak_mb"] == 3.0
    assert facts["cudnn"] == 90100
    assert devices.label(facts) == "cuda:1 (Fake GPU 80GB)" and devices.label({}) == "cpu"


# ------------------------------------------------------------------------ 3. --jobs: a GPU per worker
def test_jobs_get_one_gpu_each_round_robin(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    gpu0 = torch.device("cuda", 0)
    assert [str(d) for d in devices.worker_devices(gpu0, None, 4)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:0"]
    assert [str(d) for d in devices.worker_devices(gpu0, "cuda", 2)] == ["cuda:0", "cuda:1"]
    # a device named with its index is a choice: every worker uses it
    assert devices.worker_devices(torch.device("cuda", 2), "cuda:2", 3) == [torch.device("cuda", 2)] * 3
    assert devices.worker_devices(CPU, "cpu", 2) == [CPU, CPU]


def test_a_cell_runs_on_a_free_slots_gpu_and_gives_it_back(monkeypatch):
    """Cells take the device of a free worker slot and return it — also when they fail — so two running
    cells never share a GPU while another is idle, in whatever order cells finish."""
    seen = []

    def fake_run_cell(task):
        seen.append(task.env.device)
        if task.spec.seed == 1:
            raise RuntimeError("boom")
        return {"device": task.env.device}

    monkeypatch.setattr(cells, "run_cell", fake_run_cell)
    free = queue.Queue()
    for slot in ("cuda:0", "cuda:1"):
        free.put(slot)
    task = cells.CellTask(spec=cells.CellSpec(resolved_suite={}, profile="cpu", arm="real", seed=0),
                          env=WorkerEnv(storage="sqlite:///x.db"))
    assert cells.run_cell_in_a_slot(task, free) == {"device": "cuda:0"}
    with pytest.raises(RuntimeError):
        cells.run_cell_in_a_slot(dataclasses.replace(task, spec=dataclasses.replace(task.spec, seed=1)), free)
    assert seen == ["cuda:0", "cuda:1"]  # FIFO: a returned slot queues behind the free ones
    assert sorted([free.get_nowait(), free.get_nowait()]) == ["cuda:0", "cuda:1"] and free.empty()


def test_run_suite_hands_each_worker_slot_its_gpu(monkeypatch, tmp_path):
    """The fewstep kind with --jobs 2 on a (mocked) 2-GPU machine: the worker pool gets one slot per GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(devices, "prepare", lambda device, tf32=False: None)
    monkeypatch.setattr(devices, "on_device", lambda dataset, device: dataset)  # (no real GPU to move data to)
    handed = {}

    def fake_workers(tasks, slots, progress, on_failure):
        handed["slots"], handed["devices"] = slots, {t.env.device for t in tasks}
        raise KeyboardInterrupt  # stop here: nothing can really run on the mocked GPUs

    monkeypatch.setattr(fewstep, "run_in_workers", fake_workers)
    suite = Path(__file__).parents[1] / "suites" / "mnist_fewstep.yaml"
    opts = RunOptions(profile="smoke", storage=f"sqlite:///{tmp_path}/s.db", out=str(tmp_path / "out"), jobs=2,
                      progress=False, device="cuda")
    monkeypatch.setattr(fewstep, "final_arms", lambda store, s, p, d, log=print, *_: {e.name: {} for e in s.sources})
    with pytest.raises(KeyboardInterrupt):
        runner.run_suite(str(suite), opts, log=lambda *a, **k: None)
    assert handed["slots"] == ["cuda:0", "cuda:1"] and handed["devices"] == {"cuda:0"}


# ------------------------------------------------------------------------ 4. on a GPU (pytest -m cuda)
@pytest.mark.cuda
@cuda
def test_cuda_meta_gradient_at_float64_matches_central_finite_differences():
    """The engine's correctness on the GPU: one meta-gradient entry of a GTN teacher against central finite
    differences of the meta-loss, in float64, with every random draw replayed."""
    gpu = torch.device("cuda", 0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        suite = tiny_suite("gtn", {**TINY_GTN, "curriculum": "full"})
        data = tiny_data(gpu)  # (float64: made under the default dtype)
        assert data.train.x.dtype == torch.float64

        def meta_loss(trainer):
            trainer.outer = trainer.outer.model_copy(update={"lr": 0.0})  # (Adam at lr 0: the loss, no update)
            return trainer.step().meta_loss

        trainer = builders.build_trainer(suite, suite.sources[0], data, seed=0)
        meta_loss(trainer)
        name, param = next((n, p) for n, p in trainer.teacher.named_parameters() if p.grad is not None)
        analytic = float(param.grad.view(-1)[0])
        h, values = 1e-5, []
        for sign in (1, -1):
            again = builders.build_trainer(suite, suite.sources[0], data, seed=0)
            with torch.no_grad():
                dict(again.teacher.named_parameters())[name].view(-1)[0] += sign * h
            values.append(meta_loss(again))
        numeric = (values[0] - values[1]) / (2 * h)
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8)
    finally:
        torch.set_default_dtype(old)


@pytest.mark.cuda
@cuda
def test_cuda_runs_are_deterministic_and_create_nothing_on_the_cpu():
    gpu = torch.device("cuda", 0)
    devices.prepare(gpu)
    suite = tiny_suite("gtn", {**TINY_GTN, "curriculum": "full"})
    with devices.strict(gpu):
        _, first = cells.meta_train(suite, suite.sources[0], tiny_data(gpu), seed=0, progress=False)
    _, second = cells.meta_train(suite, suite.sources[0], tiny_data(gpu), seed=0, progress=False)
    assert first["steps_test_acc"] == second["steps_test_acc"]
    assert [p["meta_loss"] for p in first["curve"]] == pytest.approx([p["meta_loss"] for p in second["curve"]],
                                                                      rel=1e-6)


@pytest.mark.cuda
@cuda
def test_cuda_smoke_suite_runs_and_records_the_gpu(tmp_path, capsys):
    suite = Path(__file__).parents[1] / "suites" / "mnist_fewstep.yaml"
    db = tmp_path / "s.db"
    code, _, err = cli(["run", str(suite), "--profile", "smoke", "--device", "cuda", "--no-progress",
                        "--storage", f"sqlite:///{db}", "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    from tgbench.store import Store

    store = Store(f"sqlite:///{db}")
    records = store.records(store.study("mnist_fewstep@smoke", create=False))
    assert records and all(r.device == "cuda:0" and r.gpu and r.gpu_peak_mb > 0 for r in records)

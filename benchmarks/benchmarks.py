"""asv benchmarks of tgbench's meta-learning engine: speed, peak memory, FLOP throughput and (next to them) quality.

Everything runs the engine's own ``MetaTrainer.step()`` / ``MetaTrainer.evaluate()`` — never a copy of the loop —
on ``mnist-5k`` (always offline) with the ``cpu`` profile's model sizes:

* learner: conv [16, 32] -> fc [64], mean-only BN, weight norm (the suite default);
* gtn generator: noise 32, fc 256, channels [32, 16], weight norm, full curriculum;
* inner loop: B = 128 unless noted, sgd_momentum with learned per-step lr and momentum.

``setup`` builds the trainer and runs one warm-up step. Built trainers are cached per process (keyed by the
parameters), because asv re-runs ``setup`` before every sample: the cache keeps a repeat from paying for
construction + warm-up again. Each benchmark's state (meta-parameters, iteration count) therefore carries over
between samples of one process; that changes no cost. Seeds are fixed, so every process builds the same trainer.

Run (from the repository root):  ``asv run --python=same --quick --show-stderr``  (see asv.conf.json).
Threads are torch's default (all cores). On a machine where other jobs hold a core, two OpenMP threads stall on
each other (measured >10x slower on the 2-core VM): run with ``OMP_NUM_THREADS=1`` there, and compare results
only between runs with the same setting.
"""
from __future__ import annotations

import functools
import time
from typing import Any

from tgbench.suite.schema import OuterLoop, Suite
from tgbench.data import Dataset, load_dataset
from tgbench.engine import MetaTrainer
from tgbench import builders
from tgbench import device as devices

DATASET = "mnist-5k"
SEED = 0
EVAL_SEED = 10_000
BATCH = 128

CPU_LEARNER = {"conv_channels": [[16, 32]], "fc_hidden": [[64]]}
CPU_GTN = {"curriculum": "full", "weight_norm": True, "noise_dim": 32, "fc_hidden": 256, "channels": [32, 16]}
SOURCE_PARAMS = {"real": {}, "dataset_distillation": {}, "gtn": CPU_GTN}


# ------------------------------------------------------------------------------------------------ helpers
# (shared with compare.py; no asv prefixes here)
@functools.lru_cache(maxsize=None)
def dataset(name: str = DATASET) -> Dataset:
    """The benchmark data on ``$TGBENCH_DEVICE`` (default: auto, the first CUDA GPU when there is one)."""
    return devices.on_device(load_dataset(name), devices.resolve())


def bench_suite(method: str, params: dict | None = None, *, steps: int, batch: int = BATCH,
                learner: dict | None = None, outer: dict | None = None) -> Suite:
    """A one-source fewstep ``Suite`` validated by tgbench's own config models (so benchmarks cannot drift
    from what a suite file could say)."""
    return Suite.model_validate({
        "name": f"bench-{method}",
        "dataset": {"name": DATASET},
        "learner": CPU_LEARNER if learner is None else learner,
        "inner": {"steps": steps, "batch_size": batch},
        "outer": outer or {},
        "sources": [{"method": method, "params": SOURCE_PARAMS.get(method, {}) if params is None else params}],
    })


def build_trainer(suite: Suite, data: Dataset, seed: int = SEED) -> MetaTrainer:
    """The ``MetaTrainer`` that ``tgbench run`` builds for the suite's first source (``builders.build_trainer``)."""
    return builders.build_trainer(suite, suite.sources[0], data, seed)


def eval_specs(suite: Suite, trainer: MetaTrainer) -> list:
    """The learner architectures the runner evaluates a teacher on (the suite's reference learner)."""
    return suite.evaluation.learner_specs(suite.learner, trainer.teacher.source.learner_weight_norm)


def count_step_flops(step) -> int:
    """FLOPs (matmul/conv/bmm family, as counted by ``torch.utils.flop_counter``) of one call of ``step``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def full_size_splits(n: int = 10_000) -> tuple[Dataset, str]:
    """(dataset, what it is) with test and validation splits of ``n`` images each, the size of a full-size
    dataset's: Fashion-MNIST when installed (Debian's package; ``.ci/run`` installs it), else mnist-5k's images
    tiled to ``n`` (the same cost: scoring time does not depend on pixel values)."""
    from dataclasses import replace

    from tgbench.data import Split

    try:
        data = devices.on_device(load_dataset("fashion-mnist"), devices.resolve())
        return replace(data, test=data.test.head(n), val=data.val.head(n)), "fashion-mnist"
    except Exception:  # noqa: BLE001 (not installed, or not readable here: fall back to the tiled digits)
        data = dataset()

        def tiled(split: Split) -> Split:
            reps = -(-n // len(split))
            return Split(split.x.repeat(reps, 1, 1, 1)[:n], split.y.repeat(reps)[:n])

        return replace(data, test=tiled(data.test), val=tiled(data.val)), f"{DATASET} tiled to {n}"


_CACHE: dict[Any, Any] = {}


def warm_trainer(method: str, steps: int, batch: int = BATCH, outer: dict | None = None) -> tuple[Suite, MetaTrainer]:
    """(suite, trainer) for these settings, built and warmed up once per process."""
    outer = {k: v for k, v in (outer or {}).items() if OuterLoop.model_fields[k].default != v}  # one key per config
    key = (method, steps, batch, tuple(sorted(outer.items())))
    if key not in _CACHE:
        suite = bench_suite(method, steps=steps, batch=batch, outer=outer)
        trainer = build_trainer(suite, dataset())
        trainer.step()  # warm-up
        _CACHE[key] = (suite, trainer)
    return _CACHE[key]


# --------------------------------------------------------------------------------------------- benchmarks
class MetaIteration:
    """Wall time of one outer iteration (``MetaTrainer.step()``): T inner steps + the exact meta-gradient
    + one Adam update."""

    params = (["real", "dataset_distillation", "gtn"], [8, 32])
    param_names = ["source", "steps"]
    number = 1
    repeat = (1, 3, 20.0)
    rounds = 1
    warmup_time = 0.0      # setup already ran a warm-up step
    timeout = 300
    batch = BATCH          # (plain class attributes like this one are ours, not asv's; tests shrink them)

    def setup(self, source: str, steps: int) -> None:
        self.suite, self.trainer = warm_trainer(source, steps, self.batch)

    def time_meta_iteration(self, source: str, steps: int) -> None:
        self.trainer.step()


class EvaluationUnroll:
    """Wall time of evaluating a GTN teacher: one fresh learner trained for T=32 steps on its lessons
    (forward-only unroll), test/val accuracy at init and at the end."""

    number = 1
    repeat = (1, 3, 20.0)
    rounds = 1
    warmup_time = 0.0
    timeout = 300
    steps, batch = 32, BATCH

    def setup(self) -> None:
        self.suite, self.trainer = warm_trainer("gtn", self.steps, self.batch)
        self.specs = eval_specs(self.suite, self.trainer)
        self._evaluate()  # warm-up

    def _evaluate(self):
        data = dataset()
        return self.trainer.evaluate(data.test, data.val, self.specs, learners=1, seed=EVAL_SEED, per_step=False)

    def time_evaluation_unroll(self) -> None:
        self._evaluate()


class FinalEvaluation:
    """Wall time of one cell's final evaluation on full-size splits (10k test + 10k validation images): one
    fresh learner trained T=32 steps on a GTN teacher's lessons, scored after every inner step (the curve) —
    what ``tgbench run`` does per final learner. ``benchmarks/compare.py`` section 5 times it against the old
    code path (``benchmarks/reference.py``)."""

    number = 1
    repeat = (1, 3, 60.0)
    rounds = 1
    warmup_time = 0.0
    timeout = 600
    steps, batch = 32, BATCH

    def setup(self) -> None:
        self.suite, self.trainer = warm_trainer("gtn", self.steps, self.batch)
        self.data, _ = full_size_splits()
        self.specs = eval_specs(self.suite, self.trainer)

    def time_final_evaluation(self) -> None:
        self.trainer.evaluate(self.data.test, self.data.val, self.specs, learners=1, seed=EVAL_SEED)


class SmokeRun:
    """Wall time of ``tgbench run suites/mnist_fewstep.yaml --profile smoke`` end to end, in process (imports
    already paid), into a fresh temporary store: what the README's quick start costs after ``import torch``."""

    number = 1
    repeat = (1, 2, 60.0)
    rounds = 1
    warmup_time = 0.0
    timeout = 600

    def setup(self) -> None:
        import tempfile
        from pathlib import Path

        self.tmp = tempfile.TemporaryDirectory()
        self.suite = str(Path(__file__).resolve().parents[1] / "suites" / "mnist_fewstep.yaml")

    def teardown(self) -> None:
        self.tmp.cleanup()

    def time_smoke_run(self) -> None:
        import uuid

        from tgbench.cli import main

        out = f"{self.tmp.name}/{uuid.uuid4().hex}"  # a fresh store per sample: nothing to resume
        code = main(["run", self.suite, "--profile", "smoke", "--no-progress", "--storage", f"sqlite:///{out}.db",
                     "--out", out])
        if code != 0:
            raise RuntimeError(f"smoke run exited {code}")


class PeakMemMetaIteration:
    """Peak memory of one GTN meta-iteration at T=32, without and with gradient checkpointing every 4 steps.

    asv's peakmem is the *process-wide* high-water mark of the resident set size (ru_maxrss): it includes the
    interpreter, torch, the dataset and the models built in setup, and the warm-up step in setup (whose peak
    equals the measured step's). Compare the two parameters with each other, not with the step's own size
    (``benchmarks/compare.py`` measures the step's own peak in fresh subprocesses).
    """

    params = ([0, 4],)
    param_names = ["checkpoint_every"]
    rounds = 1
    timeout = 300
    steps, batch = 32, BATCH

    def setup(self, checkpoint_every: int) -> None:
        self.suite, self.trainer = warm_trainer("gtn", self.steps, self.batch,
                                                outer={"checkpoint_every": checkpoint_every})

    def peakmem_meta_iteration(self, checkpoint_every: int) -> None:
        self.trainer.step()


class FewstepAccuracy:
    """Quality next to speed: test accuracy (mnist-5k test split) of learners trained for 8 steps of batch 32 on
    a teacher meta-trained for a fixed tiny budget (10 outer iterations, fixed seeds). Not a result — a tripwire:
    a change that makes the engine faster but wrong shows up here."""

    params = (["gtn", "real"],)
    param_names = ["source"]
    unit = "accuracy"
    rounds = 1
    timeout = 120
    steps, batch, iterations, learners = 8, 32, 10, 2

    def setup(self, source: str) -> None:
        # a fresh trainer each time: the budget must be exactly `iterations` steps from the same start
        self.suite = bench_suite(source, steps=self.steps, batch=self.batch, outer={"iterations": self.iterations})
        self.trainer = build_trainer(self.suite, dataset())

    def track_fewstep_accuracy(self, source: str) -> float:
        for _ in range(self.iterations):
            self.trainer.step()
        data = dataset()
        result = self.trainer.evaluate(data.test, data.val, eval_specs(self.suite, self.trainer),
                                       learners=self.learners, seed=EVAL_SEED, per_step=False)
        return result.final["test_acc"]


class Throughput:
    """Achieved GFLOP/s of one GTN meta-iteration at T=8: FLOPs counted once with ``FlopCounterMode`` (in
    setup), divided by the wall time of another, uncounted step (``benchmarks/compare.py`` section 2 sets it
    against this machine's measured matmul peak)."""

    unit = "GFLOP/s"
    rounds = 1
    timeout = 180
    steps, batch = 8, BATCH

    def setup(self) -> None:
        self.suite, self.trainer = warm_trainer("gtn", self.steps, self.batch)
        key = ("flops", self.steps, self.batch)
        if key not in _CACHE:
            _CACHE[key] = count_step_flops(self.trainer.step)
        self.flops = _CACHE[key]

    def track_gflops(self) -> float:
        start = time.perf_counter()
        self.trainer.step()
        return self.flops / (time.perf_counter() - start) / 1e9

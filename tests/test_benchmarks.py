"""The performance-tracking layer cannot rot silently: every asv benchmark runs once (setup + method) at its smallest
parameters, ``asv.conf.json`` is valid, and ``benchmarks/compare.py --quick`` prints every section's figures.

Sizes are shrunk through the benchmark classes' own size attributes (``steps`` / ``batch``), so the code paths
are the real ones (checkpointing, FLOP counting, evaluation) at a fraction of the cost.
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a top-level folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import benchmarks as bm  # noqa: E402

SMALL_BATCH = 16


pytestmark = pytest.mark.usefixtures("single_thread")  # fixture in conftest.py


@pytest.fixture
def small(monkeypatch):
    """Shrink every benchmark's fixed sizes (T and B) to the smallest used anywhere."""
    for cls in (bm.MetaIteration, bm.EvaluationUnroll, bm.PeakMemMetaIteration, bm.Throughput):
        monkeypatch.setattr(cls, "batch", SMALL_BATCH)
    for cls in (bm.EvaluationUnroll, bm.PeakMemMetaIteration):
        monkeypatch.setattr(cls, "steps", 8)
    monkeypatch.setattr(bm, "_CACHE", {})


def _run(cls, method: str, *params):
    bench = cls()
    bench.setup(*params)
    return getattr(bench, method)(*params)


def _smallest(cls) -> list[tuple]:
    """Every combination at the smallest numeric parameter values (all non-numeric values kept)."""
    if not getattr(cls, "params", None):
        return [()]
    params = cls.params if isinstance(cls.params[0], list) else [cls.params]
    axes = [[min(axis)] if all(isinstance(v, int) for v in axis) else axis for axis in params]
    combos = [()]
    for axis in axes:
        combos = [c + (v,) for c in combos for v in axis]
    return combos


@pytest.mark.parametrize("params", _smallest(bm.MetaIteration), ids=lambda p: "-".join(map(str, p)))
def test_time_meta_iteration(small, params):
    assert _run(bm.MetaIteration, "time_meta_iteration", *params) is None


def test_time_evaluation_unroll(small):
    _run(bm.EvaluationUnroll, "time_evaluation_unroll")


@pytest.mark.parametrize("params", _smallest(bm.PeakMemMetaIteration) + [(4,)], ids=lambda p: f"checkpoint_every={p[0]}")
def test_peakmem_meta_iteration(small, params):
    bench = bm.PeakMemMetaIteration()
    bench.setup(*params)
    assert bench.trainer.outer.checkpoint_every == params[0]
    bench.peakmem_meta_iteration(*params)


@pytest.mark.parametrize("params", _smallest(bm.FewstepAccuracy), ids=lambda p: p[0])
def test_track_fewstep_accuracy(small, monkeypatch, params):
    monkeypatch.setattr(bm.FewstepAccuracy, "iterations", 2)
    acc = _run(bm.FewstepAccuracy, "track_fewstep_accuracy", *params)
    assert 0.0 <= acc <= 1.0


def test_track_fewstep_accuracy_is_deterministic(small, monkeypatch):
    monkeypatch.setattr(bm.FewstepAccuracy, "iterations", 1)
    assert _run(bm.FewstepAccuracy, "track_fewstep_accuracy", "real") == \
        _run(bm.FewstepAccuracy, "track_fewstep_accuracy", "real")


def test_track_gflops(small):
    bench = bm.Throughput()
    bench.setup()
    assert bench.flops > 0
    gflops = bench.track_gflops()
    assert 0.0 < gflops < 10_000


def test_units_and_discovery_names():
    """asv reads `unit` from the class; the names asv discovers are the ones the docs and CI refer to."""
    assert bm.FewstepAccuracy.unit == "accuracy" and bm.Throughput.unit == "GFLOP/s"
    names = {f"{cls.__name__}.{m}" for cls in (bm.MetaIteration, bm.EvaluationUnroll, bm.PeakMemMetaIteration,
                                               bm.FewstepAccuracy, bm.Throughput, bm.FinalEvaluation, bm.SmokeRun)
             for m in vars(cls) if re.match(r"(time|peakmem|track)_", m)}
    assert names == {"MetaIteration.time_meta_iteration", "EvaluationUnroll.time_evaluation_unroll",
                     "PeakMemMetaIteration.peakmem_meta_iteration", "FewstepAccuracy.track_fewstep_accuracy",
                     "Throughput.track_gflops", "FinalEvaluation.time_final_evaluation", "SmokeRun.time_smoke_run"}


def test_time_final_evaluation(small, monkeypatch):
    monkeypatch.setattr(bm.FinalEvaluation, "steps", 4)
    monkeypatch.setattr(bm.FinalEvaluation, "batch", SMALL_BATCH)
    bench = bm.FinalEvaluation()
    bench.setup()
    assert len(bench.data.test) == len(bench.data.val) == 10_000   # full-size splits (tiled digits in tests)
    bench.time_final_evaluation()


def test_evaluation_fast_path_scores_exactly_like_the_old_code_path():
    """The old scoring (whole splits after every step, NCHW with autograd recording) and tgbench's agree at
    every point here: mnist-5k's splits are no larger than the curve subset, so only the layout differs."""
    from benchmarks.reference import reference_final_evaluation
    from tgbench.engine import CURVE_SUBSET

    data = bm.dataset()
    assert len(data.test) <= CURVE_SUBSET and len(data.val) <= CURVE_SUBSET
    suite = bm.bench_suite("gtn", bm.CPU_GTN, steps=6, batch=SMALL_BATCH)
    trainer = bm.build_trainer(suite, data)
    trainer.step()
    spec = bm.eval_specs(suite, trainer)[0]
    new = trainer.evaluate(data.test, data.val, [spec], learners=2, seed=5)
    old = reference_final_evaluation(trainer.teacher, spec, data.test, data.val, 6, 2, torch.Generator().manual_seed(5))
    for row, name in zip(old, ("test_acc", "test_loss", "val_acc", "val_loss")):
        assert getattr(new, name) == pytest.approx(row, abs=1e-5), name


def test_compare_module_defines_no_benchmarks():
    """asv imports every module of the benchmarks package, compare.py included."""
    from benchmarks import compare

    prefixes = ("time_", "peakmem_", "track_", "mem_", "timeraw_")
    assert not [n for n in vars(compare) if n.startswith(prefixes)]


def test_asv_conf_is_valid_json():
    conf = json.loads((ROOT / "asv.conf.json").read_text())
    assert conf["benchmark_dir"] == "benchmarks"
    assert conf["project"] == "tgbench" and conf["repo"] == "."
    assert all(conf[d].startswith(".asv/") for d in ("env_dir", "html_dir"))  # (scratch: gitignored)
    assert conf["results_dir"] == "results/asv"  # the speed history is kept in the repository


@pytest.mark.slow
@pytest.mark.system   # compare.py and its child processes
def test_compare_quick_prints_every_section():
    # every section at its smallest sizes: T=2 in sections 1, 4 and 5 and T=4 in section 3 run the same code as
    # the full sizes; --quick scores 500 test + 500 val images in section 5
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--quick", "--threads", "1",
                           "--steps", "2", "--pop-steps", "2", "--eval-steps", "2", "--ckpt-steps", "4",
                           "--cpu-steps", "2"],
                          capture_output=True, text=True, cwd=str(ROOT), timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^machine: .+cores", out, re.M) and re.search(r"^torch \S+: 1 intra-op threads", out, re.M)
    for pattern in [
        r"^== 1\. meta-iteration time", r"^tgbench: [\d.]+ s/iteration", r"^naive: +[\d.]+ s/iteration",
        r"^ratio tgbench/naive = [\d.]+ +target <= 1\.0: (met|NOT met)$",
        r"^== 2\. achieved GFLOP/s", r"^matmul peak .*: [\d.]+ GFLOP/s",
        r"^tgbench achieved / peak = [\d.]+ % +goal >= 60 %: (met|NOT met)$",
        r"^== 3\. gradient checkpointing at T=4: checkpoint_every=2",
        r"^memory ratio checkpointed/none = [\d.]+ +target <= 0\.35: (met|NOT met)$",
        r"^time ratio checkpointed/none = [\d.]+ +target <= 1\.5: (met|NOT met)$",
        r"^== 4\. vmap population of 8 learners",
        r"^throughput ratio vmap/sequential = [\d.]+x +target >= 3x: (met|NOT met)$",
        r"^== 5\. final evaluation on 500-image \(not full-size\) splits", r"^after the last step: .*: identical$",
        r"^speed-up old/new = [\d.]+x +goal >= 3x: (met|NOT met)$",
        r"^== 6\. cpu-size meta-iteration", r"^meta-parameters after the step identical .*: True$",
        r"^all six: .*speed-up [\d.]+x +goal >= 1\.5x: (met|NOT met)$",
        r"^== summary",
    ]:
        assert re.search(pattern, out, re.M), f"missing /{pattern}/ in compare.py output:\n{out}"
    assert len(re.findall(r"^ *(met|NOT met): ", out, re.M)) == 9


@pytest.mark.parametrize("steps, batch", [(2, 8), (3, 4)])
def test_the_plain_reference_meta_iteration_does_the_engines_flops(steps, batch):
    """Section 1 compares like with like: benchmarks.reference.PlainGTN (plain PyTorch, no tgbench code) counts
    exactly the matmul/conv FLOPs of MetaTrainer.step() at the paper's model sizes, and it learns (a finite loss
    that Adam changes)."""
    from benchmarks.compare import PAPER_GTN, PAPER_LEARNER
    from benchmarks.reference import PlainGTN

    suite = bm.bench_suite("gtn", PAPER_GTN, steps=steps, batch=batch, learner=PAPER_LEARNER,
                           outer={"meta_batch_size": batch})
    plain = PlainGTN(steps, batch)
    assert bm.count_step_flops(plain.step) == bm.count_step_flops(bm.build_trainer(suite, bm.dataset()).step)
    before = [t.detach().clone() for t in plain.meta]
    loss = plain.step()
    assert math.isfinite(loss) and any(not torch.equal(a, b) for a, b in zip(before, plain.meta))


def test_paper_cell_stops_at_its_time_limit_and_evaluates_there(capsys):
    """The GPU script's paper cell (``benchmarks/paper_cell.py``) must end on time on a lent GPU: with
    ``--time-limit`` it stops after the iteration that passes it, evaluates there and says so (here on the smoke
    profile and the CPU: the same loop, seconds instead of minutes)."""
    from benchmarks import paper_cell

    assert paper_cell.main(["--device", "cpu", "--suite", "mnist_fewstep", "--profile", "smoke", "--iterations",
                            "500", "--warmup", "1", "--eval-every", "1000", "--time-limit", "0.3"]) == 0
    out = capsys.readouterr().out
    stopped = re.search(r"stopped at the time limit \(0\.3 s\) after (\d+) of 500 iterations", out)
    assert stopped and 1 <= int(stopped.group(1)) < 500
    evaluated = re.findall(r"iteration +(\d+): meta-loss", out)
    assert evaluated == [stopped.group(1)]          # the one evaluation is where it stopped
    assert "goal <= 5 min" in out and "n/a: not the paper profile" in out

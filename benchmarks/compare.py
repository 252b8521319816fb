"""Side-by-side performance figures of tgbench's engine, each next to its target, measured in one process.

    python benchmarks/compare.py                      # paper-scale section 1 (T=32, B=128): minutes
    python benchmarks/compare.py --steps 32 --batch 128 --iters 2
    python benchmarks/compare.py --quick              # small sizes, T=8 everywhere: well under a minute

Sections (every figure and ratio is printed, every target says ``met`` / ``NOT met``):

1. Meta-iteration time at the paper's MNIST configuration: ``MetaTrainer.step()`` vs the plain-PyTorch reference
   ``PlainGTN.step()`` (``benchmarks/reference.py``: the same meta-iteration in plain PyTorch, the same FLOPs),
   on the same device (``--device``), interleaved A/B/A/B. Target: ratio <= 1.0.
2. Achieved GFLOP/s of that meta-iteration (``FlopCounterMode`` FLOPs / measured time) against this machine's
   measured fp32 matmul peak. Goal: >= 60 %.
3. Gradient checkpointing at T=128: the step's own peak memory with ``checkpoint_every=k`` vs none, each
   configuration in a fresh subprocess (peak RSS is a process-wide high-water mark), and the time ratio.
   Targets: memory <= 0.35x, time <= 1.5x.
4. vmap population of P learners (``outer.population=P``) vs P sequential ``population=1`` meta-gradients of the
   same architecture: throughput ratio. Target: >= 3x.
5. A cell's final evaluation on full-size splits (10k test + 10k val; Fashion-MNIST when installed): tgbench's
   ``evaluate`` vs the code path before issue 19 (``benchmarks/reference.py``: whole splits after every step,
   NCHW), same teacher and learners, interleaved; the accuracy after the last step must agree. Goal: >= 3x.

6. The cpu-size meta-iteration of the long runs (``suites/fashion_fewstep.yaml`` at profile ``cpu``: learner conv
   16 -> 32 -> FC 64, WN, mean-only BN; GTN generator noise 32, fc 256, channels [32, 16]; T=32, B=128, meta-batch
   128) for real data, dataset distillation and GTN, with the official intermediate losses off and on:
   ``MetaTrainer.step()`` now vs the code path before issue 24 (``benchmarks/reference.py``'s ``nchw_pooling``),
   from the same saved trainer state, interleaved; meta-losses and meta-parameters must agree bit for bit.
   Goal: >= 1.5x over the six. Run it at one thread (``--threads 1``), as the long runs are.

Everything goes through the engine's ``MetaTrainer`` (built by ``benchmarks.benchmarks.build_trainer``); nothing
here re-implements the meta-step. ``--_child SPEC`` is internal: section 3 re-invokes this file with it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# Run as a script, sys.path[0] is benchmarks/ itself, where `import benchmarks` would find benchmarks.py as a
# top-level module; the repository root must come first instead.
if __name__ == "__main__":
    sys.path[:] = [str(ROOT)] + [p for p in sys.path if p and Path(p).resolve() != HERE]

PAPER_LEARNER = {"conv_channels": [[64, 128]], "fc_hidden": [[256]]}          # + WN, mean-only BN (defaults)
PAPER_GTN = {"curriculum": "full", "weight_norm": True, "noise_dim": 128, "fc_hidden": 1024, "channels": [128, 64]}
CPU_LEARNER = {"conv_channels": [[16, 32]], "fc_hidden": [[64]]}
CPU_GTN = {"curriculum": "full", "weight_norm": True, "noise_dim": 32, "fc_hidden": 256, "channels": [32, 16]}
POP_LEARNER = {"conv_channels": [[8, 16]], "fc_hidden": [[]]}                 # conv only, no hidden FC layer
FULL_SIZE_SPLIT = 10_000   # test/val images of a full-size dataset (Fashion-MNIST, MNIST: 10k test)


# ------------------------------------------------------------------------------------------------ helpers
def describe_machine() -> list[str]:
    import torch

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()
    lines = [
        f"machine: {model}; {os.cpu_count()} logical cores ({usable} usable); {platform.machine()} "
        f"{platform.system()} {platform.release()}",
        f"torch {torch.__version__}: {torch.get_num_threads()} intra-op threads, "
        f"{torch.get_num_interop_threads()} inter-op; mkldnn {torch.backends.mkldnn.is_available()}; "
        f"python {platform.python_version()}",
        f"load average before measuring: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        "device: " + ", ".join(f"{k} {v}" for k, v in _device_facts().items() if v not in (None, False)),
    ]
    if load[0] > 0.5 * (usable or 1):
        lines.append(f"WARNING: load average {load[0]:.2f} on {usable} cores: other processes compete for the CPU, "
                     "so absolute times are inflated (ratios of interleaved runs suffer less)")
        if torch.get_num_threads() > 1:
            lines.append("WARNING: with more than one intra-op thread on a busy machine, OpenMP threads wait on "
                         "each other and times can inflate >10x (seen on this 2-core VM): consider --threads 1")
    return lines


def _device_facts() -> dict:
    from tgbench import device as devices

    return devices.facts(devices.resolve())


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def timed(fn) -> float:
    """Wall seconds of ``fn()``, queued GPU work included (synchronised before each clock read)."""
    from tgbench import device as devices

    device = devices.resolve()
    devices.synchronize(device)
    start = time.perf_counter()
    fn()
    devices.synchronize(device)
    return time.perf_counter() - start


def mean(xs) -> float:
    return sum(xs) / len(xs)


def fmt_times(xs) -> str:
    return ", ".join(f"{x:.3f}" for x in xs)


def power_of_two_near_sqrt(steps: int) -> int:
    """k for checkpointing: sqrt(T) rounded down to a power of two (T=128 -> 8, T=8 -> 2)."""
    return max(1, 2 ** int(math.floor(math.log2(math.sqrt(steps)))))


def matmul_peak_gflops(n: int = 2048, reps: int = 5) -> float:
    """Best-of-``reps`` fp32 ``n x n @ n x n`` throughput in this process (2 n^3 FLOPs each)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = min(timed(lambda: a @ b) for _ in range(reps))
    return 2 * n ** 3 / best / 1e9


# ------------------------------------------------------------------------------------ section 1 and 2
def section_paper_step(args) -> list[tuple[str, bool]]:
    import torch

    from benchmarks.benchmarks import bench_suite, build_trainer, count_step_flops, dataset
    from benchmarks.reference import PlainGTN

    steps, batch, iters = args.steps, args.batch, args.iters
    print(f"\n== 1. meta-iteration time: tgbench MetaTrainer.step() vs the plain reference PlainGTN.step() ==")
    print(f"config: paper MNIST models (generator noise 128, fc 1024, channels [128, 64], weight norm; learner conv "
          f"[64, 128], fc [256], WN, mean-only BN), sgd_momentum, full curriculum; T={steps}, B={batch}, meta-batch "
          f"{batch}; {iters} timed iteration(s) each after one warm-up, interleaved A/B")
    suite = bench_suite("gtn", PAPER_GTN, steps=steps, batch=batch, learner=PAPER_LEARNER,
                        outer={"meta_batch_size": batch})
    trainer = build_trainer(suite, dataset())
    naive = PlainGTN(steps=steps, batch=batch, device=trainer.device, seed=0)
    trainer.step()
    naive.step()
    tg_times, naive_times = [], []
    for _ in range(iters):
        tg_times.append(timed(trainer.step))
        naive_times.append(timed(naive.step))
    tg, nv = mean(tg_times), mean(naive_times)
    ratio = tg / nv
    print(f"tgbench: {tg:.3f} s/iteration  (samples {fmt_times(tg_times)})")
    print(f"naive:   {nv:.3f} s/iteration  (samples {fmt_times(naive_times)})")
    print(f"ratio tgbench/naive = {ratio:.3f}   target <= 1.0: {verdict(ratio <= 1.0)}")

    print(f"\n== 2. achieved GFLOP/s of the tgbench meta-iteration vs measured matmul peak ==")
    flops = count_step_flops(trainer.step)
    naive_flops = count_step_flops(naive.step)
    achieved = flops / tg / 1e9
    peak = matmul_peak_gflops()
    share = achieved / peak
    print(f"FLOPs per meta-iteration (FlopCounterMode: matmul/conv family): tgbench {flops / 1e9:.2f} GFLOP, "
          f"naive {naive_flops / 1e9:.2f} GFLOP (ratio {flops / naive_flops:.3f})")
    print(f"achieved: tgbench {achieved:.1f} GFLOP/s, naive {naive_flops / nv / 1e9:.1f} GFLOP/s "
          f"(FLOPs / mean time of section 1)")
    print(f"matmul peak (fp32 2048x2048, best of 5, {torch.get_num_threads()} threads): {peak:.1f} GFLOP/s")
    print(f"tgbench achieved / peak = {100 * share:.1f} %   goal >= 60 %: {verdict(share >= 0.6)}")
    return [(f"1. meta-iteration tgbench/naive = {ratio:.3f} <= 1.0", ratio <= 1.0),
            (f"2. achieved/peak = {100 * share:.1f} % >= 60 %", share >= 0.6)]


# ------------------------------------------------------------------------------------------- section 3
def child_main(spec: dict) -> None:
    """One configuration in a fresh process: build, then the step's own peak RSS and its time, as JSON."""
    import torch

    from benchmarks.benchmarks import bench_suite, build_trainer, dataset

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    suite = bench_suite(spec["method"], spec["params"], steps=spec["steps"], batch=spec["batch"],
                        learner=spec["learner"], outer=spec["outer"])
    trainer = build_trainer(suite, dataset())
    for _ in range(spec.get("warmup", 0)):
        trainer.step()
    baseline = _status_kb("VmRSS")  # after setup: interpreter, torch, data, models (and any warm-up)
    exact = _reset_peak_rss()       # the high-water mark now equals the current RSS
    times = [timed(trainer.step) for _ in range(spec.get("timed", 1))]
    peak = _status_kb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"baseline_mb": baseline / 1024, "peak_mb": peak / 1024, "step_peak_mb": (peak - baseline) / 1024,
                      "seconds": times, "exact": exact}))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # no procfs: the best available figure


def _reset_peak_rss() -> bool:
    """Reset this process's peak-RSS mark to its current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_child(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_child", json.dumps(spec)],
                          capture_output=True, text=True, cwd=str(ROOT))
    if proc.returncode != 0:
        raise SystemExit(f"compare.py: child run failed ({spec}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def section_checkpointing(args) -> list[tuple[str, bool]]:
    steps, batch = args.ckpt_steps, args.ckpt_batch
    k = args.checkpoint_every or power_of_two_near_sqrt(steps)
    print(f"\n== 3. gradient checkpointing at T={steps}: checkpoint_every={k} vs none ==")
    learner, gen = (POP_LEARNER, CPU_GTN) if args.quick else (CPU_LEARNER, CPU_GTN)
    print(f"config: gtn full curriculum, smaller models than the paper (generator noise 32, fc 256, channels [32, 16]; "
          f"learner conv {learner['conv_channels'][0]}, fc {learner['fc_hidden'][0]}; WN, mean-only BN), "
          f"T={steps}, B={batch}, meta-batch {batch}; k={k} (~sqrt(T), a power of two); each configuration in a "
          f"fresh subprocess, {args.ckpt_rounds} round(s) interleaved none/k; memory = peak RSS during the step "
          f"minus RSS after setup")
    results: dict[int, list[dict]] = {0: [], k: []}
    for _ in range(args.ckpt_rounds):
        for every in (0, k):
            results[every].append(run_child({
                "method": "gtn", "params": gen, "steps": steps, "batch": batch, "learner": learner,
                "outer": {"checkpoint_every": every, "meta_batch_size": batch}, "warmup": 0, "timed": 1,
                "threads": args.threads}))
    none_mem = max(r["step_peak_mb"] for r in results[0])
    ckpt_mem = max(r["step_peak_mb"] for r in results[k])
    none_t = mean([s for r in results[0] for s in r["seconds"]])
    ckpt_t = mean([s for r in results[k] for s in r["seconds"]])
    mem_ratio, time_ratio = ckpt_mem / none_mem, ckpt_t / none_t
    exact = all(r["exact"] for rs in results.values() for r in rs)
    print(f"baseline RSS after setup: {results[0][0]['baseline_mb']:.0f} MB"
          f"{'' if exact else ' (peak-RSS reset unavailable: figures are upper bounds)'}")
    print(f"none:              step peak {none_mem:.1f} MB, {none_t:.3f} s/iteration "
          f"(samples {fmt_times([s for r in results[0] for s in r['seconds']])})")
    print(f"checkpoint_every={k}: step peak {ckpt_mem:.1f} MB, {ckpt_t:.3f} s/iteration "
          f"(samples {fmt_times([s for r in results[k] for s in r['seconds']])})")
    print(f"memory ratio checkpointed/none = {mem_ratio:.3f}   target <= 0.35: {verdict(mem_ratio <= 0.35)}")
    print(f"time ratio checkpointed/none = {time_ratio:.3f}   target <= 1.5: {verdict(time_ratio <= 1.5)}")
    return [(f"3. checkpointing memory ratio = {mem_ratio:.3f} <= 0.35", mem_ratio <= 0.35),
            (f"3. checkpointing time ratio = {time_ratio:.3f} <= 1.5", time_ratio <= 1.5)]


# ------------------------------------------------------------------------------------------- section 4
def section_population(args) -> list[tuple[str, bool]]:
    from benchmarks.benchmarks import bench_suite, build_trainer, dataset

    steps, batch, pop = args.pop_steps, args.pop_batch, args.population
    print(f"\n== 4. vmap population of {pop} learners vs {pop} sequential meta-gradients ==")
    print(f"config: gtn full curriculum (generator noise 32, fc 256, channels [32, 16], WN), learner conv "
          f"{POP_LEARNER['conv_channels'][0]} with no hidden FC layer, WN, mean-only BN; T={steps}, B={batch}; "
          f"one step with population={pop} vs {pop} steps with population=1; {args.iters} round(s) after one "
          f"warm-up each, interleaved")
    data = dataset()

    def make(population: int):
        outer = {"population": population, "meta_batch_size": batch}
        return build_trainer(bench_suite("gtn", CPU_GTN, steps=steps, batch=batch, learner=POP_LEARNER,
                                         outer=outer), data)

    vmapped, single = make(pop), make(1)
    vmapped.step()
    single.step()
    pop_times, seq_times = [], []
    for _ in range(args.iters):
        pop_times.append(timed(vmapped.step))
        seq_times.append(timed(lambda: [single.step() for _ in range(pop)]))
    pop_t, seq_t = mean(pop_times), mean(seq_times)
    ratio = seq_t / pop_t
    print(f"population={pop} (vmap): {pop_t:.3f} s per {pop} meta-gradients ({pop / pop_t:.2f} /s; samples "
          f"{fmt_times(pop_times)})")
    print(f"{pop} x population=1:     {seq_t:.3f} s per {pop} meta-gradients ({pop / seq_t:.2f} /s; samples "
          f"{fmt_times(seq_times)})")
    print(f"throughput ratio vmap/sequential = {ratio:.2f}x   target >= 3x: {verdict(ratio >= 3.0)}")
    return [(f"4. population throughput ratio = {ratio:.2f}x >= 3x", ratio >= 3.0)]


# ------------------------------------------------------------------------------------------- section 5
def section_evaluation(args) -> list[tuple[str, bool]]:
    import torch

    from benchmarks.benchmarks import bench_suite, build_trainer, eval_specs, full_size_splits
    from benchmarks.reference import reference_final_evaluation

    data, what = full_size_splits(args.eval_images)
    steps = args.eval_steps
    size = "full-size" if args.eval_images >= FULL_SIZE_SPLIT else f"{args.eval_images}-image (not full-size)"
    print(f"\n== 5. final evaluation on {size} splits: tgbench evaluate() vs the code path before issue 19 ==")
    print(f"config: {what}, {len(data.test)} test + {len(data.val)} val images; gtn teacher (cpu generator), "
          f"learner conv [16, 32] -> fc [64]; T={steps}, one fresh learner per side; {args.iters} round(s) after "
          "one warm-up each, interleaved")
    suite = bench_suite("gtn", CPU_GTN, steps=steps, batch=128)
    trainer = build_trainer(suite, data)
    spec = eval_specs(suite, trainer)[0]

    def new():
        return trainer.evaluate(data.test, data.val, [spec], learners=1, seed=5)

    def old():
        return reference_final_evaluation(trainer.teacher, spec, data.test, data.val, steps, 1,
                                          torch.Generator(device=data.test.x.device).manual_seed(5))

    fast, slow = new(), old()  # warm-up, and the agreement check
    agree = abs(fast.test_acc[-1] - slow[0][-1]) < 1e-6 and abs(fast.val_acc[-1] - slow[2][-1]) < 1e-6
    print(f"after the last step: test acc {fast.test_acc[-1]:.4f} (new) vs {slow[0][-1]:.4f} (old), val acc "
          f"{fast.val_acc[-1]:.4f} vs {slow[2][-1]:.4f}: {'identical' if agree else 'DIFFERENT'}")
    new_times, old_times = [], []
    for _ in range(args.iters):
        new_times.append(timed(new))
        old_times.append(timed(old))
    ratio = mean(old_times) / mean(new_times)
    print(f"new: {mean(new_times):.2f} s (samples {fmt_times(new_times)}); old: {mean(old_times):.2f} s (samples "
          f"{fmt_times(old_times)})")
    print(f"speed-up old/new = {ratio:.2f}x   goal >= 3x: {verdict(ratio >= 3.0)}")
    return [(f"5. final-evaluation speed-up = {ratio:.2f}x >= 3x", ratio >= 3.0),
            ("5. scores after the last step identical to the old code path", agree)]


# ------------------------------------------------------------------------------------------- section 6
OFFICIAL_LOSSES = ("outer.intermediate_losses=true", "outer.intermediate_batches=fresh",
                   "outer.intermediate_reduction=sum", "learner.bn_shift=true", "inner.momentum_form=exp")


def cpu_size_trainer(method: str, official: bool, data, steps: int = 32):
    """The ``fashion_fewstep`` cpu profile's trainer for its first ``method`` source (optionally with the official
    intermediate losses; ``steps``: T, the profile's 32 unless a smoke run shrinks it), built on ``data`` (only the
    images' shape matters for time)."""
    from tgbench import builders
    from tgbench.suite.loading import load_suite

    suite = load_suite(ROOT / "tgbench" / "suites" / "fashion_fewstep.yaml", "cpu",
                       (*(OFFICIAL_LOSSES if official else ()), f"inner.steps={steps}"))
    entry = next(e for e in suite.sources if e.method == method)
    return builders.build_trainer(suite, entry, data, 0)


def print_profile(what: str, trainer, state: dict, rows: int = 15) -> None:
    """torch.profiler's operator table (self CPU time, grouped by input shapes) of one meta-step from ``state``."""
    from torch.profiler import profile

    trainer.load_state_dict(state)
    with profile(record_shapes=True) as prof:
        trainer.step()
    print(f"-- profile of one step now: {what} --")
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=rows,
                                                             max_name_column_width=34, max_shapes_column_width=70))


def section_cpu_step(args) -> list[tuple[str, bool]]:
    import torch

    from benchmarks.benchmarks import dataset
    from benchmarks.reference import nchw_pooling

    print("\n== 6. cpu-size meta-iteration (fashion_fewstep, profile cpu): MetaTrainer.step() now vs before "
          "issue 24 ==")
    print(f"config: learner conv [16, 32] -> fc [64], WN, mean-only BN; gtn generator noise 32, fc 256, channels "
          f"[32, 16]; T={args.cpu_steps}, B=128, meta-batch 128; {torch.get_num_threads()} thread(s); "
          f"data {args.cpu_data} "
          f"(28x28x1, only the shape matters); each side steps from the same saved trainer state; one warm-up, then "
          f"{args.iters} interleaved round(s); intermediate losses 'on' = {' '.join(OFFICIAL_LOSSES)}")
    data = dataset(args.cpu_data)
    total_old = total_new = 0.0
    identical = True
    for method in ("real", "dataset_distillation", "gtn"):
        for official in (False, True):
            trainer = cpu_size_trainer(method, official, data, args.cpu_steps)
            state = trainer.state_dict()

            def one_step(old: bool):
                trainer.load_state_dict(state)
                if old:
                    with nchw_pooling():
                        seconds = timed(trainer.step)
                else:
                    seconds = timed(trainer.step)
                return seconds, [p.detach().clone() for p in trainer.meta_params]

            one_step(True), one_step(False)  # warm-up
            if args.cpu_profile:
                print_profile(f"{method}, intermediate losses {'on' if official else 'off'}", trainer, state)
            old_times, new_times = [], []
            for _ in range(args.iters):
                seconds, old_params = one_step(True)
                old_times.append(seconds)
                seconds, new_params = one_step(False)
                new_times.append(seconds)
                identical &= all(torch.equal(a, b) for a, b in zip(old_params, new_params))
            old_t, new_t = mean(old_times), mean(new_times)
            total_old, total_new = total_old + old_t, total_new + new_t
            print(f"{method:>20} intermediate losses {'on ' if official else 'off'}: before {old_t:.3f} s "
                  f"(samples {fmt_times(old_times)}), now {new_t:.3f} s (samples {fmt_times(new_times)}): "
                  f"{old_t / new_t:.2f}x")
    ratio = total_old / total_new
    print(f"meta-parameters after the step identical (bit for bit) in every round: {identical}")
    print(f"all six: before {total_old:.2f} s, now {total_new:.2f} s; speed-up {ratio:.2f}x   goal >= 1.5x: "
          f"{verdict(ratio >= 1.5)}")
    return [(f"6. cpu-size meta-iteration speed-up = {ratio:.2f}x >= 1.5x", ratio >= 1.5),
            ("6. meta-parameters identical to the code path before issue 24", identical)]


# ------------------------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="small sizes everywhere (T=8; section 1 keeps the paper models, which the reference "
                         "hard-codes, at B=16) — a smoke run, not a measurement")
    ap.add_argument("--steps", type=int, help="section 1-2: inner steps T (default 32; --quick 8)")
    ap.add_argument("--batch", type=int, help="section 1-2: batch B (default 128; --quick 16)")
    ap.add_argument("--iters", type=int, help="timed iterations per side in sections 1 and 4 (default 2; --quick 1)")
    ap.add_argument("--ckpt-steps", type=int, help="section 3: T (default 128; --quick 8)")
    ap.add_argument("--ckpt-batch", type=int, help="section 3: B (default 32; --quick 16)")
    ap.add_argument("--checkpoint-every", type=int, default=0, help="section 3: k (default sqrt(T) as a power of 2)")
    ap.add_argument("--ckpt-rounds", type=int, help="section 3: interleaved none/k subprocess rounds (default 2; "
                                                    "--quick 1)")
    ap.add_argument("--population", type=int, default=8, help="section 4: P (default 8)")
    ap.add_argument("--pop-steps", type=int, default=8, help="section 4: T (default 8)")
    ap.add_argument("--pop-batch", type=int, help="section 4: B (default 32; --quick 16)")
    ap.add_argument("--eval-steps", type=int, help="section 5: T (default 32; --quick 8)")
    ap.add_argument("--eval-images", type=int, help=f"section 5: test and val images each (default "
                                                    f"{FULL_SIZE_SPLIT}, a full-size split; --quick 500)")
    ap.add_argument("--cpu-steps", type=int, help="section 6: T (default 32, the cpu profile's; --quick 8)")
    ap.add_argument("--cpu-profile", action="store_true", help="section 6: print torch.profiler's operator table "
                                                               "of one step of each configuration (new code path)")
    ap.add_argument("--cpu-data", default="mnist-5k", help="section 6: dataset (default mnist-5k, offline)")
    ap.add_argument("--sections", default="1,2,3,4,5,6", help="comma-separated subset to run (2 needs 1)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--device", help="sections 1, 2 and 5: auto (default), cpu, cuda or cuda:N (tgbench's "
                                     "--device; sets $TGBENCH_DEVICE for the benchmark helpers)")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    quick = args.quick
    defaults = {"steps": (32, 8), "batch": (128, 16), "iters": (2, 1), "ckpt_steps": (128, 8),
                "ckpt_batch": (32, 16), "ckpt_rounds": (2, 1), "pop_batch": (32, 16), "eval_steps": (32, 8),
                "eval_images": (FULL_SIZE_SPLIT, 500), "cpu_steps": (32, 8)}
    for name, (full, small) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    args.sections = {int(s) for s in args.sections.split(",") if s.strip()}
    if 2 in args.sections:
        args.sections.add(1)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._child:
        child_main(json.loads(args._child))
        return 0
    import torch

    from tgbench import device as devices

    if args.device:
        os.environ[devices.ENV_VAR] = str(devices.resolve(args.device))
    devices.prepare(devices.resolve())

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print("tgbench compare" + (" --quick (small sizes: a smoke run, not a measurement)" if args.quick else ""))
    for line in describe_machine():
        print(line)
    outcomes: list[tuple[str, bool]] = []
    if 1 in args.sections:
        outcomes += section_paper_step(args)
    if 3 in args.sections:
        outcomes += section_checkpointing(args)
    if 4 in args.sections:
        outcomes += section_population(args)
    if 5 in args.sections:
        outcomes += section_evaluation(args)
    if 6 in args.sections:
        outcomes += section_cpu_step(args)
    print(f"\n== summary ({time.perf_counter() - start:.0f} s; load average now "
          f"{os.getloadavg()[0]:.2f}) ==")
    for text, ok in outcomes:
        print(f"{verdict(ok):>7}: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Seconds per outer iteration of a suite's ``paper`` profile GTN cell, and its accuracy curve.

    python -m benchmarks.paper_cell --device cuda --iterations 100 --eval-every 25
    python -m benchmarks.paper_cell --device cuda --suite fashion_fewstep --iterations 2000 --time-limit 240

Builds the cell exactly as ``tgbench run suites/<suite>.yaml --profile paper`` does (``builders``: the paper
generator and learner, T=32, B=128, meta-batch 128; ``--suite`` mnist_fewstep by default) on the chosen device,
runs ``--iterations`` meta-steps (the first ``--warmup`` untimed), evaluates ``eval_learners`` fresh learners every
``--eval-every`` iterations (untimed), and prints the mean seconds per iteration against issue 15's goal (2000
iterations in <= 5 minutes on one H100-class GPU, i.e. <= 150 ms each) with the 2000-iteration extrapolation.
``--time-limit`` stops after the iteration that passes that many seconds of the loop's wall time (evaluations
included), evaluates there and says how far it got: a prepared script on a lent GPU must end on time. The data is
the suite's dataset (for mnist_fewstep full MNIST when torchvision finds it under ``--data-root``, else its
mnist-5k fallback, said in the output; fashion_fewstep has no fallback).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

GOAL_SECONDS = 0.150
SUITES = Path(__file__).resolve().parents[1] / "tgbench" / "suites"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=3, help="untimed meta-steps first (allocator, cuDNN, caches)")
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--source", default="gtn", help="arm of the suite (default gtn)")
    ap.add_argument("--suite", default="mnist_fewstep", help="a shipped suite's name or a suite file")
    ap.add_argument("--profile", default="paper", help="the suite's profile (default paper; smoke for a dry run)")
    ap.add_argument("--time-limit", type=float, help="stop after the iteration that passes this many seconds")
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--data-root")
    args = ap.parse_args(argv)

    import torch

    from tgbench import device as devices
    from tgbench.builders import build_trainer
    from tgbench.suite.loading import load_suite
    from tgbench.data import load_dataset
    from tgbench.identity import EVAL_SEED_OFFSET

    device = devices.resolve(args.device)
    devices.prepare(device, args.tf32)
    suite_file = Path(args.suite) if args.suite.endswith((".yaml", ".yml")) else SUITES / f"{args.suite}.yaml"
    suite = load_suite(suite_file, args.profile)
    entry = next(e for e in suite.sources if e.name == args.source)
    dataset = devices.on_device(load_dataset(suite.dataset.name, data_root=args.data_root, download=False,
                                             fallback=suite.dataset.fallback, seed=0), device)
    trainer = build_trainer(suite, entry, dataset, seed=0)
    specs = suite.evaluation.learner_specs(suite.learner, trainer.teacher.source.learner_weight_norm)
    facts = devices.facts(device)
    print(f"{args.profile}-profile cell {entry.name!r} of {suite_file.name} on {devices.label(facts)}; torch {torch.__version__}, "
          f"CUDA {facts['cuda']}, cuDNN {facts['cudnn']}, TF32 {facts['tf32']}")
    print(f"data: {dataset.resolved} ({len(dataset.train)} train){' -- ' + dataset.fallback_reason if dataset.fallback_reason else ''}")
    print(f"inner: T={suite.inner_for(entry).steps}, B={suite.inner_for(entry).batch_size}; outer: meta-batch "
          f"{suite.outer_for(entry).meta_batch_size}, {args.iterations} iterations here ({args.warmup} warm-up)")
    seconds, curve = [], []
    started, stopped_early = time.perf_counter(), False
    for it in range(1, args.iterations + 1):
        stats = trainer.step()  # (StepStats.seconds synchronises the device before reading the clock)
        if it > args.warmup:
            seconds.append(stats.seconds)
        stopped_early = (args.time_limit is not None and it < args.iterations
                         and time.perf_counter() - started > args.time_limit)
        if it % args.eval_every == 0 or it == args.iterations or stopped_early:
            final = trainer.evaluate(dataset.test, dataset.val, specs, suite.evaluation.eval_learners,
                                     seed=EVAL_SEED_OFFSET, per_step=False).final
            curve.append((it, stats.meta_loss, final["val_acc"]))
            print(f"  iteration {it:5d}: meta-loss {stats.meta_loss:.4f}  val acc {final['val_acc']:.4f}  "
                  f"({statistics.mean(seconds) if seconds else float('nan'):.4f} s/iteration so far)", flush=True)
        if stopped_early:
            print(f"stopped at the time limit ({args.time_limit:g} s) after {it} of {args.iterations} iterations "
                  "(the outer lr schedule is the suite's, for its own iteration count)")
            break
    if not seconds:
        print("no timed iterations (raise --iterations above --warmup)")
        return 1
    mean = statistics.mean(seconds)
    print(f"seconds per meta-iteration: mean {mean:.4f}, median {statistics.median(seconds):.4f}, min "
          f"{min(seconds):.4f} over {len(seconds)} timed iterations")
    verdict = ('MET' if mean <= GOAL_SECONDS else 'NOT MET') if args.profile == "paper" else "n/a: not the paper profile"
    print(f"2000 iterations extrapolated: {2000 * mean / 60:.1f} min   goal <= 5 min ({GOAL_SECONDS * 1000:.0f} "
          f"ms/iteration): {verdict}")
    if facts["gpu_peak_mb"] is not None:
        print(f"GPU peak memory: {torch.cuda.max_memory_allocated(device) / 2 ** 20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

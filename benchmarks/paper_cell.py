"""Seconds per outer iteration of the mnist_fewstep ``paper`` profile's GTN cell, and its accuracy curve.

    python -m benchmarks.paper_cell --device cuda --iterations 100 --eval-every 25

Builds the cell exactly as ``tgbench run suites/mnist_fewstep.yaml --profile paper`` does (``builders``: the
paper generator and learner, T=32, B=128, meta-batch 128) on the chosen device, runs ``--iterations`` meta-steps
(the first ``--warmup`` untimed), evaluates ``eval_learners`` fresh learners every ``--eval-every`` iterations
(untimed), and prints the mean seconds per iteration against issue 15's goal (2000 iterations in <= 5 minutes on
one H100-class GPU, i.e. <= 150 ms each) with the 2000-iteration extrapolation. The data is the suite's dataset
(full MNIST when torchvision finds it under ``--data-root``, else its mnist-5k fallback, said in the output).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

GOAL_SECONDS = 0.150
SUITE = Path(__file__).resolve().parents[1] / "suites" / "mnist_fewstep.yaml"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=3, help="untimed meta-steps first (allocator, cuDNN, caches)")
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--source", default="gtn", help="arm of the suite (default gtn)")
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
    suite = load_suite(SUITE, "paper")
    entry = next(e for e in suite.sources if e.name == args.source)
    dataset = devices.on_device(load_dataset(suite.dataset.name, data_root=args.data_root, download=False,
                                             fallback=suite.dataset.fallback, seed=0), device)
    trainer = build_trainer(suite, entry, dataset, seed=0)
    specs = suite.evaluation.learner_specs(suite.learner, trainer.teacher.source.learner_weight_norm)
    facts = devices.facts(device)
    print(f"paper-profile cell {entry.name!r} of {SUITE.name} on {devices.label(facts)}; torch {torch.__version__}, "
          f"CUDA {facts['cuda']}, cuDNN {facts['cudnn']}, TF32 {facts['tf32']}")
    print(f"data: {dataset.resolved} ({len(dataset.train)} train){' -- ' + dataset.fallback_reason if dataset.fallback_reason else ''}")
    print(f"inner: T={suite.inner_for(entry).steps}, B={suite.inner_for(entry).batch_size}; outer: meta-batch "
          f"{suite.outer_for(entry).meta_batch_size}, {args.iterations} iterations here ({args.warmup} warm-up)")
    seconds, curve = [], []
    for it in range(1, args.iterations + 1):
        stats = trainer.step()  # (StepStats.seconds synchronises the device before reading the clock)
        if it > args.warmup:
            seconds.append(stats.seconds)
        if it % args.eval_every == 0 or it == args.iterations:
            final = trainer.evaluate(dataset.test, dataset.val, specs, suite.evaluation.eval_learners,
                                     seed=EVAL_SEED_OFFSET, per_step=False).final
            curve.append((it, stats.meta_loss, final["val_acc"]))
            print(f"  iteration {it:5d}: meta-loss {stats.meta_loss:.4f}  val acc {final['val_acc']:.4f}  "
                  f"({statistics.mean(seconds) if seconds else float('nan'):.4f} s/iteration so far)", flush=True)
    if not seconds:
        print("no timed iterations (raise --iterations above --warmup)")
        return 1
    mean = statistics.mean(seconds)
    print(f"seconds per meta-iteration: mean {mean:.4f}, median {statistics.median(seconds):.4f}, min "
          f"{min(seconds):.4f} over {len(seconds)} timed iterations")
    print(f"2000 iterations extrapolated: {2000 * mean / 60:.1f} min   goal <= 5 min ({GOAL_SECONDS * 1000:.0f} "
          f"ms/iteration): {'MET' if mean <= GOAL_SECONDS else 'NOT MET'}")
    if facts["gpu_peak_mb"] is not None:
        print(f"GPU peak memory: {torch.cuda.max_memory_allocated(device) / 2 ** 20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

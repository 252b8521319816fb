"""Seconds per outer (meta-training) iteration of each meta-learned arm of a fewstep suite at a profile, one torch
thread: one warm-up iteration, then the mean of 3. How fashion_settled's per-arm costs (and so its run time) were
measured. Run from the repository root on an otherwise idle machine:

    python scripts/arm_timing.py tgbench/suites/fashion_settled.yaml cpu
"""
import sys
import time

import torch

from tgbench.builders import build_trainer
from tgbench.data import load_dataset
from tgbench.suite.loading import load_suite

torch.set_num_threads(1)
suite = load_suite(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "cpu", [])
dataset = load_dataset(suite.dataset.name, download=False, fallback=suite.dataset.fallback, seed=0)
for entry in suite.sources:
    if entry.outer.get("iterations", suite.outer.iterations) <= 1:
        continue   # nothing meta-learned (plain SGD): no outer iteration to time
    trainer = build_trainer(suite, entry, dataset, 0)
    trainer.step()
    start = time.perf_counter()
    for _ in range(3):
        trainer.step()
    print(f"{entry.name}: {(time.perf_counter() - start) / 3:.2f} s/iteration", flush=True)

"""Seconds per GTN meta-iteration on Fashion-MNIST at the cpu learner size, for the generator sizes of
tgbench/suites/fashion_generator_size.yaml, with and without the official intermediate losses (one torch thread; one
warm-up step, then the mean of 3). Prints one line per configuration. Run from the repository root:

    python scripts/generator_timing.py

The figures in fashion_generator_size.yaml's comment (4.1 / 6.3 / 8.5 / 15.7 s) came from this script at revision
18cbbb4, with the other core busy (session 8).
"""
import time, torch, sys
torch.set_num_threads(1)
from tgbench.suite.loading import load_suite
from tgbench.builders import build_trainer
from tgbench.data import load_dataset
base = ["outer.intermediate_losses=true", "outer.intermediate_batches=fresh", "outer.intermediate_reduction=sum",
        "learner.bn_shift=true", "inner.momentum_form=exp"]
sizes = {"cpu": (32, 256, [32, 16]), "mid": (64, 512, [64, 32]), "official": (128, 1024, [128, 64])}
ds = None
for il in (False, True):
    for name, (nd, fc, ch) in sizes.items():
        if not il and name != "cpu": continue
        sets = (base if il else []) + [f"sources.gtn.params.noise_dim={nd}", f"sources.gtn.params.fc_hidden={fc}",
                                       f"sources.gtn.params.channels={ch}"]
        suite = load_suite("tgbench/suites/fashion_fewstep.yaml", "cpu", sets)
        if ds is None:
            ds = load_dataset(suite.dataset.name, data_root=None, download=False, fallback=None, seed=0)
        entry = next(e for e in suite.sources if e.name == "gtn")
        tr = build_trainer(suite, entry, ds, 0)
        n = sum(p.numel() for p in tr.teacher.parameters())
        tr.step()
        t = time.perf_counter(); [tr.step() for _ in range(3)]; dt = (time.perf_counter() - t) / 3
        print(f"IL={il} {name}: {n} meta-params, {dt:.2f} s/iteration", flush=True)

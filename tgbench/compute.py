"""What meta-training one cell cost (matmul/conv FLOPs), recorded with every cell and read by the leaderboard
(what makes two cells comparable, their protocol, is ``tgbench.identity.protocol_of``)."""
from __future__ import annotations

import math
import random
from collections import Counter

import torch

from tgbench.builders import build_trainer
from tgbench.suite.schema import LearnerSpace
from tgbench.data import Dataset, Split
from tgbench.errors import Diverged
from tgbench.problem import Problem


def synthetic_dataset(problem: Problem, batch_size: int, meta_batch: int) -> Dataset:
    """Random data of the right shape: FLOP counts of a meta-step do not depend on pixel values (nor on the
    device, so they are counted on the CPU whatever device the cell ran on)."""
    (channels, *_), num_classes = problem.image_shape, problem.num_classes
    n = max(4 * batch_size, meta_batch, 20 * num_classes)
    gen = torch.Generator().manual_seed(0)
    split = Split(torch.randn(n, *problem.image_shape, generator=gen, device="cpu"),
                  torch.arange(n, device="cpu") % num_classes)
    return Dataset("synthetic", "synthetic", split, split, split, num_classes, problem.image_shape,
                   (0.0,) * channels, (1.0,) * channels, "random tensors for FLOP counting")


def meta_train_flops(suite, entry, problem: Problem, seed: int, iterations: int, cache: dict | None = None) -> float:
    """Matmul/conv FLOPs of ``iterations`` meta-iterations of one cell, counted by ``FlopCounterMode``.

    The architecture of iteration i is drawn by the trainer's own seeded ``random.Random(seed)``, so the exact
    sequence is replayed here; one ``MetaTrainer.step()`` per distinct architecture is counted (a meta-step's
    FLOPs depend only on shapes) on random data of the dataset's shape, and the counts are summed over the
    sequence. Torch's global RNG is left as it was. ``cache`` (architecture -> FLOPs of one step) may be shared
    between calls for the same cell config, e.g. its seeds.
    """
    from torch.utils.flop_counter import FlopCounterMode

    inner = suite.inner_for(entry)
    data = synthetic_dataset(problem, inner.batch_size, suite.outer_for(entry).meta_batch_size)
    with torch.random.fork_rng():
        trainer = build_trainer(suite, entry, data, seed)
        rng = random.Random(seed)  # the trainer's architecture stream (MetaTrainer.rng)
        space = trainer.space  # the arm's own space (suite.learner_for(entry)), as MetaTrainer.step samples it
        archs = Counter(space.sample(rng, trainer.learner_weight_norm) for _ in range(iterations))
        total, cache = 0.0, {} if cache is None else cache
        for spec in archs:
            if spec in cache:
                total += archs[spec] * cache[spec]
                continue
            trainer.space = LearnerSpace(conv_channels=[list(spec.conv_channels)], fc_hidden=[list(spec.fc_hidden)],
                                         kernel_size=[spec.kernel_size], activation=[spec.activation],
                                         batch_norm=spec.batch_norm, weight_norm=spec.weight_norm)
            counter = FlopCounterMode(display=False)
            try:
                with counter:
                    trainer.step()
            except Diverged:  # a throwaway step from a fresh init blew up: no trustworthy count
                return math.nan
            cache[spec] = counter.get_total_flops()
            total += archs[spec] * cache[spec]
    return float(total)

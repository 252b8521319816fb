"""Builds what meta-training a suite's arm needs — its teacher and its ``MetaTrainer`` — from the resolved suite,
the arm and the dataset. Shared by cells, the tuning stage, FLOP counting, ``tgbench teach`` and the benchmarks."""
from __future__ import annotations

import torch

from tgbench import device as devices
from tgbench.suite.schema import SourceEntry, Suite
from tgbench.data import Dataset
from tgbench.engine import MetaTrainer
from tgbench.inner import InnerHyperparameters
from tgbench.registry import methods
from tgbench.source import SourceContext, Teacher


def build_teacher(suite: Suite, entry: SourceEntry, dataset: Dataset, seed: int) -> Teacher:
    torch.manual_seed(seed)  # sources initialise with torch's default RNG: seed it per cell
    inner = suite.inner_for(entry)
    ctx = SourceContext(dataset.train, inner.steps, inner.batch_size, dataset.problem)
    cls = methods.get(entry.method)
    with devices.constructing_on(dataset.train.x.device):  # a teacher lives where its data is
        source = cls(cls.Params.model_validate(entry.params), ctx)
        hyper = InnerHyperparameters(inner.steps, inner.lr, inner.momentum, inner.learn_lr, inner.learn_momentum,
                                     inner.momentum_form)
    schedule = source.initial_schedule()
    if schedule is not None:
        hyper.start_from(*schedule)
    return Teacher(source, hyper, inner.optimizer)


def build_trainer(suite: Suite, entry: SourceEntry, dataset: Dataset, seed: int) -> MetaTrainer:
    """The ``MetaTrainer`` of one cell: its teacher, the suite's learner space, inner and (per-arm) outer loop.
    Shared by the runner, the benchmarks and anything else that meta-trains a suite's source."""
    teacher = build_teacher(suite, entry, dataset, seed)
    return MetaTrainer(teacher, suite.learner_for(entry), dataset.train, suite.inner_for(entry), suite.outer_for(entry),
                       seed=seed)

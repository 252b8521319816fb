"""The teaching-data source contract, and the Teacher that pairs a source with learned inner hyperparameters.

A *source* produces the batch a freshly initialised learner trains on at inner step t. Real data, dataset
distillation and GTN are all sources; so is any method a user adds (one module, registered by name).

Lifecycle of a source (what the engine calls, and when):

1. ``__init__(params, ctx)`` — once per cell, with torch's global RNG seeded from the cell seed (so default
   initialisation is reproducible). ``params`` is the source's own pydantic ``Params`` model,
   validated from the suite YAML's ``params:`` mapping; ``ctx`` (``SourceContext``) gives the training split,
   the number of inner steps T, the batch size, the image shape and the number of classes (``ctx.image_shape``,
   ``ctx.num_classes``; together they are ``ctx.problem``, what a ``Learner`` or ``Generator`` is built for).
   Register learned tensors as ``nn.Parameter`` / submodules: ``self.parameters()`` *is* the set of
   meta-parameters.
2. ``new_episode(generator)`` — optional hook, once per unroll (each meta-training iteration and each
   evaluation learner). Draw all of the unroll's randomness here (a presentation order, fresh noise, real-data
   indices) from the given ``torch.Generator`` and return it; default: ``None``. Keeping randomness out of
   ``forward`` makes unrolls reproducible under a seed and lets ES/population members share an episode.
3. ``forward(t, episode) -> (x, y)`` — required, T times per unroll. ``x``: (B, C, H, W) images in the
   dataset's normalised space; ``y``: (B,) int64 labels or (B, classes) soft-label probabilities. Must be a
   differentiable function of the meta-parameters: the engine backpropagates the meta-loss through it, and
   calls it via ``torch.func.functional_call`` with substituted parameters (checkpointing, ES).
4. What a trained teacher is saved as is its ``state_dict()`` (the store's teacher artifact, ``tgbench export``):
   register everything a teacher needs again as parameters or buffers.

Capabilities are declared on the class, and the shared test battery reads them:
``learns_data`` (has meta-parameters of its own), ``learnable_labels`` (supports ``learn_labels``),
``supports_es`` (its parameters may be perturbed by ES). A source that wants the learners it teaches to use a
particular weight-norm setting sets ``learner_weight_norm`` (None = the suite's learner setting).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from tgbench.data import Split
from tgbench.inner import InnerHyperparameters
from tgbench.problem import Problem
from tgbench.strict import Strict


class SourceParams(Strict):
    """Base of every source's ``Params``: the one strict base (``tgbench.strict``): unknown keys are errors,
    booleans are not numbers, floats are finite."""


@dataclass
class SourceContext:
    """What a source is built for: ``SourceContext(train, steps, batch_size, problem)``."""

    train: Split                          # real training data (the meta-loss is computed on it too)
    steps: int                            # T inner steps per unroll
    batch_size: int                       # B examples per inner step
    problem: Problem                      # the images' (C, H, W) shape and the number of classes

    # what sources read (every built-in method and the plug-in guide use these two names)
    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.problem.image_shape

    @property
    def num_classes(self) -> int:
        return self.problem.num_classes


class Source(nn.Module):
    """Base class of teaching-data sources; see the module docstring for the lifecycle."""

    Params: ClassVar[type[SourceParams]] = SourceParams
    learns_data: ClassVar[bool] = True
    learnable_labels: ClassVar[bool] = False
    supports_es: ClassVar[bool] = True
    description: ClassVar[str] = ""

    learner_weight_norm: bool | None = None

    def __init__(self, params: SourceParams, ctx: SourceContext):
        super().__init__()
        self.params, self.ctx = params, ctx

    def new_episode(self, generator: torch.Generator) -> Any:
        return None

    def forward(self, t: int, episode: Any) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def example_params(cls, ctx: "SourceContext", workdir: Path) -> dict:
        """Small ``params`` for the shared test battery (``tests/test_sources.py``, and plug-in authors' own
        tests): cheap to build and run on ``ctx``; may write files it needs into ``workdir``. Default: none."""
        return {}

    def initial_schedule(self) -> tuple[list[float], list[float]] | None:
        """Per-step (lr, momentum) the inner schedule should start from instead of the suite's constants
        (e.g. a distilled set's own learned schedule); ``None``: the suite's."""
        return None

    def diagnostics(self) -> dict[str, float]:
        """Numbers a trained source reports about itself, stored with its cell and shown in the report (e.g.
        how far dataset distillation's pixels moved from their init). Default: none."""
        return {}


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """``arange(n) % classes`` — fixed, balanced labels as in the official code. (Written as a repeat: ``%``
    has no meta-device kernel, and tgbench.fit builds a teacher on the meta device to count its weights.)"""
    return torch.arange(num_classes).repeat(-(-n // num_classes))[:n]


class Lesson(NamedTuple):
    """Everything a teacher says at inner step t: the batch and the optimiser hyperparameters."""

    x: torch.Tensor
    y: torch.Tensor
    lr: torch.Tensor
    momentum: torch.Tensor


class Teacher(nn.Module):
    """A source plus its learned inner-loop hyperparameters: the full set of meta-parameters of a cell.

    ``forward(t, episode)`` returns step t's ``Lesson``; because it is the single entry point, the engine can
    run the whole teacher through ``functional_call`` with substituted parameters (checkpoint segments, ES).
    """

    def __init__(self, source: Source, hyper: InnerHyperparameters, optimizer: str = "sgd_momentum"):
        super().__init__()
        self.source, self.hyper, self.optimizer = source, hyper, optimizer

    @property
    def problem(self) -> Problem:
        """The problem the source was built for: what the learners this teacher teaches are built for."""
        return self.source.ctx.problem

    def forward(self, t: int, episode: Any) -> Lesson:
        x, y = self.source(t, episode)
        lr, momentum = self.hyper(t)
        return Lesson(x, y, lr, momentum)

    def new_episode(self, generator: torch.Generator) -> Any:
        return self.source.new_episode(generator)

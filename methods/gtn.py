"""``gtn``: a Generative Teaching Network — a label-conditional generator G(z, y) meta-trained through the
learner's whole inner training loop (Such et al., ICML 2020), with the paper's four curricula."""
from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from tgbench.nn import Generator, GeneratorSpec
from tgbench.source import Source, SourceParams, balanced_labels

Curriculum = Literal["none", "all_shuffled", "shuffled_batch", "full"]
MAX_SIZE = 8192          # as a learner's widths (tgbench.config.MAX_WIDTH); the paper's generator: 128 / 1024 / 128
MAX_SCALE = 1000.0       # an init std in normalised units (pixels are ~N(0, 1)); beyond it tanh saturates at once
Size = Annotated[int, Field(gt=0, le=MAX_SIZE)]


class GTNParams(SourceParams):
    """Options of the ``gtn`` source (defaults: the official MNIST generator, full curriculum, weight norm on).

    curriculum: ``none`` — fresh z ~ N(0, I) and random labels at every step;
                ``all_shuffled`` — a learned pool of T·B codes presented in a random order without replacement;
                ``shuffled_batch`` — T learned batches of B codes, presented in a random batch order;
                ``full`` — T learned batches in a fixed order.
    weight_norm: W = g·V/||V|| on the generator's layers *and* on the learners it teaches (paper Sec. 3.2).
    noise_dim / fc_hidden / channels: generator sizes (paper: 128 / 1024 / [128, 64]).
    learn_labels: learn soft labels with the codes (paper App. F); needs a learned curriculum.
    The meta-gradient estimator (backprop / es / hybrid) is an outer-loop option: ``outer: {meta_gradient: ...}``.
    """

    curriculum: Curriculum = "full"
    weight_norm: bool = True
    # sizes at most MAX_SIZE (a learner layer's bound; 1e12 validated, then failed allocating): the memory check
    # before a run (tgbench.fit) refuses what fits these bounds but not the machine
    noise_dim: Size = 128
    fc_hidden: Size = 1024
    channels: tuple[Size, Size] = (128, 64)
    learn_labels: bool = False
    code_scale: float = Field(1.0, gt=0, le=MAX_SCALE)    # std of the initial learned codes

    @model_validator(mode="after")
    def _labels_need_codes(self) -> "GTNParams":
        if self.learn_labels and self.curriculum == "none":
            raise ValueError("learn_labels needs a learned curriculum (not 'none')")
        return self


class GTN(Source):
    """Generator + (for learned curricula) a pool of T·B learned codes with fixed balanced labels.

    An episode is a (T, B) index tensor into the pool: ``full`` is ``arange`` (fixed order), ``shuffled_batch``
    permutes whole rows, ``all_shuffled`` permutes all T·B entries; for ``none`` the episode carries fresh
    noise and random labels instead.
    """

    Params = GTNParams
    learnable_labels = True
    description = "generative teaching network G(z, y); curriculum none|all_shuffled|shuffled_batch|full"

    @classmethod
    def example_params(cls, ctx, workdir) -> dict:
        return {"noise_dim": 4, "fc_hidden": 8, "channels": [4, 2]}  # (the paper's generator is 1.5 M weights)

    def __init__(self, params: GTNParams, ctx):
        super().__init__(params, ctx)
        self.learner_weight_norm = params.weight_norm
        spec = GeneratorSpec(params.noise_dim, params.fc_hidden, tuple(params.channels), params.weight_norm)
        self.generator = Generator(spec, ctx.problem)
        pool = ctx.steps * ctx.batch_size
        if params.curriculum != "none":
            # (in place: the same numbers, and ops with a meta-device kernel, for tgbench.fit's count of the weights)
            self.codes = nn.Parameter(torch.randn(pool, params.noise_dim).mul_(params.code_scale))  # (T·B, noise)
            self.register_buffer("labels", balanced_labels(pool, ctx.num_classes))
            if params.learn_labels:
                self.label_logits = nn.Parameter(
                    torch.nn.functional.one_hot(self.labels, ctx.num_classes).to(torch.get_default_dtype()) * 3.0)

    def new_episode(self, generator: torch.Generator):
        steps, batch = self.ctx.steps, self.ctx.batch_size
        curriculum, device = self.params.curriculum, generator.device  # (the generator lives with the data)
        if curriculum == "none":
            z = torch.randn(steps, batch, self.params.noise_dim, generator=generator, device=device)
            y = torch.randint(self.ctx.num_classes, (steps, batch), generator=generator, device=device)
            return z, y
        if curriculum == "full":
            return torch.arange(steps * batch, device=device).view(steps, batch)
        if curriculum == "shuffled_batch":
            rows = torch.randperm(steps, generator=generator, device=device)
            return torch.arange(steps * batch, device=device).view(steps, batch)[rows]
        return torch.randperm(steps * batch, generator=generator, device=device).view(steps, batch)  # all_shuffled

    def forward(self, t: int, episode) -> tuple[torch.Tensor, torch.Tensor]:
        if self.params.curriculum == "none":
            z, y = episode
            t = t % z.shape[0]
            return self.generator(z[t], y[t]), y[t]
        idx = episode[t % episode.shape[0]]
        y = self.labels[idx]
        x = self.generator(self.codes[idx], y)
        if self.params.learn_labels:
            return x, torch.softmax(self.label_logits[idx], dim=1)
        return x, y

"""``dataset_distillation``: learned pixels, one batch per inner step (Wang et al. 2018, as set up in the GTN paper)."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from tgbench.source import Source, SourceParams, balanced_labels


class DatasetDistillationParams(SourceParams):
    init: Literal["noise", "real"] = "noise"    # N(0, 1) pixels (random init), or real examples of each label
    # (upper bounds: far beyond a useful value, yet finite in float32 once multiplied by the pixels or the lr)
    init_scale: float = Field(1.0, gt=0, le=1000.0)   # std of the noise init, in normalised pixel units
    learn_labels: bool = False                  # learn soft labels with the pixels (GTN paper, App. F)
    # The pixels' own step size, as a multiple of the outer lr (see DatasetDistillation): 1 = the shared lr.
    pixel_lr_scale: float = Field(1.0, gt=0, le=1e6)


class DatasetDistillation(Source):
    """T x B learned images with fixed balanced labels ``arange(B) % classes``; step t always presents batch t.

    Meta-parameters: ``images`` (T, B, C, H, W) and, with ``learn_labels``, ``label_logits`` (T, B, classes)
    initialised to a confident one-hot (soft targets = softmax of the logits).

    **The pixels' step size** (``pixel_lr_scale = s``). The pixels get their own step without a second outer
    optimiser: the parameter ``images`` holds raw values ``r = x / s`` and the lesson presents ``x = s * r``.
    The gradient reaching ``r`` is ``s * dL/dx``, so Adam's first moment scales by ``s`` and the square root of
    its second moment by ``s`` too: the step on ``r`` is the step Adam would take on ``x`` itself (exactly, up to
    Adam's ``eps``), and the step on ``x = s * r`` is therefore ``s`` times the shared outer lr, cosine schedule
    included. (Two things do see the scale: a global-norm ``outer.grad_clip``, which sees the pixels' gradient
    multiplied by ``s``, and ES, whose perturbation of ``r`` moves ``x`` ``s`` times as far.) ``s = 1`` is the
    plain parametrisation, bit for bit. Why it is needed: at the shared lr the pixels hardly move — after 60 outer
    iterations at the cpu profile a mean |Δ| of 0.071 from a noise init of std 1.45 — so a DD column measured its
    initialisation. ``diagnostics`` reports how far they moved.
    """

    Params = DatasetDistillationParams
    learnable_labels = True
    description = "learned pixel tensors, one batch per inner step; fixed balanced labels"

    def __init__(self, params: DatasetDistillationParams, ctx):
        super().__init__(params, ctx)
        steps, batch, shape = ctx.steps, ctx.batch_size, ctx.image_shape
        labels = balanced_labels(batch, ctx.num_classes).repeat(steps, 1)  # (T, B)
        self.register_buffer("labels", labels)
        if params.init == "real":
            images = torch.stack([self._real_examples(labels[t]) for t in range(steps)])
        else:
            # (in place: the same numbers, and ops with a meta-device kernel, for tgbench.fit's count of the weights)
            images = torch.randn(steps, batch, *shape).mul_(params.init_scale)
        # the pixels at init, for ``diagnostics``; not persistent: a saved teacher is its learned pixels only
        self.register_buffer("initial_images", images.clone(), persistent=False)
        scale = params.pixel_lr_scale
        self.images = nn.Parameter(images if scale == 1 else images.clone().div_(scale))  # raw values r = x / s
        if params.learn_labels:
            self.label_logits = nn.Parameter(
                torch.nn.functional.one_hot(labels, ctx.num_classes).to(torch.get_default_dtype()) * 3.0)

    def _real_examples(self, labels: torch.Tensor) -> torch.Tensor:
        train = self.ctx.train
        picks = []
        for y in labels.tolist():
            pool = (train.y == y).nonzero().flatten()
            picks.append(pool[torch.randint(len(pool), (1,))].item())
        return train.x[picks].clone()

    def pixels(self, t: int | slice = slice(None)) -> torch.Tensor:
        """The images step ``t`` presents (all of them by default), in the dataset's normalised pixel space."""
        scale = self.params.pixel_lr_scale
        return self.images[t] if scale == 1 else self.images[t] * scale

    def forward(self, t: int, episode) -> tuple[torch.Tensor, torch.Tensor]:
        t = t % self.images.shape[0]
        if self.params.learn_labels:
            return self.pixels(t), torch.softmax(self.label_logits[t], dim=1)
        return self.pixels(t), self.labels[t]

    def diagnostics(self) -> dict[str, float]:
        """How far the pixels moved from their initialisation: ``pixel_movement`` = mean |x - x0| / std(x0) (the
        share of the images that is no longer init), with its parts."""
        with torch.no_grad():
            change = (self.pixels() - self.initial_images).abs().mean().item()
            spread = self.initial_images.std().item()
        return {"pixel_movement": change / spread if spread > 0 else float("nan"),
                "pixel_mean_abs_change": change, "pixel_init_std": spread}

"""``dataset_distillation``: learned pixels, one batch per inner step (Wang et al. 2018, as set up in the GTN paper)."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from tgbench.source import Source, SourceParams, balanced_labels


class DatasetDistillationParams(SourceParams):
    init: Literal["noise", "real"] = "noise"    # N(0, 1) pixels (random init), or real examples of each label
    init_scale: float = Field(1.0, gt=0)        # std of the noise init, in normalised pixel units
    learn_labels: bool = False                  # learn soft labels with the pixels (GTN paper, App. F)


class DatasetDistillation(Source):
    """T x B learned images with fixed balanced labels ``arange(B) % classes``; step t always presents batch t.

    Meta-parameters: ``images`` (T, B, C, H, W) and, with ``learn_labels``, ``label_logits`` (T, B, classes)
    initialised to a confident one-hot (soft targets = softmax of the logits).
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
            images = torch.randn(steps, batch, *shape) * params.init_scale
        self.images = nn.Parameter(images)
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

    def forward(self, t: int, episode) -> tuple[torch.Tensor, torch.Tensor]:
        t = t % self.images.shape[0]
        if self.params.learn_labels:
            return self.images[t], torch.softmax(self.label_logits[t], dim=1)
        return self.images[t], self.labels[t]

"""``real``: random minibatches of the real training split. Only the inner lr/momentum schedule is learned."""
from __future__ import annotations

import torch

from tgbench.source import Source


class RealData(Source):
    """Each unroll draws T fresh minibatches of B real training examples (with replacement across steps,
    without replacement within a batch). The baseline every teaching method must beat."""

    learns_data = False
    description = "random minibatches of real training data; learns only the inner lr/momentum schedule"

    def new_episode(self, generator: torch.Generator) -> torch.Tensor:
        n, (steps, batch) = len(self.ctx.train), (self.ctx.steps, self.ctx.batch_size)
        return torch.stack([torch.randperm(n, generator=generator, device=generator.device)[:batch]
                            for _ in range(steps)])  # (T, B)

    def forward(self, t: int, episode: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = episode[t % episode.shape[0]]
        return self.ctx.train.x[idx], self.ctx.train.y[idx]

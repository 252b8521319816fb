"""The inner optimiser: pure ``init``/``update`` functions plus a module of learned per-step hyperparameters.

Optax-shaped: the update rule is a pure function of (params, grads, state, hyperparameters) returning new
params and state, out of place, so a whole training run of the learner stays differentiable. The
hyperparameters themselves (per-step learning rate and momentum) are meta-parameters owned by
``InnerHyperparameters``; the engine asks it for step t's values and passes them in as tensors.

Heavy-ball SGD, as in the official GTN code:   v <- m_t * v + g ;   theta <- theta - lr_t * v
Adam (optional):                               standard bias-corrected Adam with learned per-step lr_t and
                                               beta1_t (the "momentum"), fixed beta2 and eps.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

Tensors = list[torch.Tensor]


def sgd_init(params: Sequence[torch.Tensor]) -> tuple[Tensors]:
    return ([torch.zeros_like(p) for p in params],)


def sgd_update(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], state: tuple[Tensors],
               lr: torch.Tensor, momentum: torch.Tensor, t: int) -> tuple[Tensors, tuple[Tensors]]:
    (velocity,) = state
    velocity = [momentum * v + g for v, g in zip(velocity, grads)]
    return [p - lr * v for p, v in zip(params, velocity)], (velocity,)


ADAM_BETA2, ADAM_EPS = 0.999, 1e-8


def adam_init(params: Sequence[torch.Tensor]) -> tuple[Tensors, Tensors]:
    return [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]


def adam_update(params, grads, state, lr, momentum, t):
    m, v = state
    m = [momentum * mi + (1 - momentum) * g for mi, g in zip(m, grads)]
    v = [ADAM_BETA2 * vi + (1 - ADAM_BETA2) * g * g for vi, g in zip(v, grads)]
    # bias correction uses the nominal beta1 product only through the current momentum: with a per-step
    # learned beta1 there is no closed form, so we correct the second moment exactly and the first by (1 - m^{t+1}).
    c1 = 1 - momentum ** (t + 1)
    c2 = 1 - ADAM_BETA2 ** (t + 1)
    new = [p - lr * (mi / c1) / ((vi / c2).sqrt() + ADAM_EPS) for p, mi, vi in zip(params, m, v)]
    return new, (m, v)


OPTIMIZERS = {"sgd_momentum": (sgd_init, sgd_update), "adam": (adam_init, adam_update)}


class InnerHyperparameters(nn.Module):
    """Per-step learning rate (stored as log) and momentum (stored as logit, so it stays in (0, 1)).

    ``learn_lr`` / ``learn_momentum`` False keeps them as buffers (constants). Steps beyond the learned
    horizon (e.g. evaluating for longer than T) reuse the last step's values.
    """

    def __init__(self, steps: int, lr: float, momentum: float, learn_lr: bool = True, learn_momentum: bool = True):
        super().__init__()
        if not 0.0 < momentum < 1.0:
            raise ValueError("momentum must lie in (0, 1) to be logit-parametrised")
        log_lr = torch.full((steps,), math.log(lr))
        logit_momentum = torch.full((steps,), math.log(momentum / (1 - momentum)))
        if learn_lr:
            self.log_lr = nn.Parameter(log_lr)
        else:
            self.register_buffer("log_lr", log_lr)
        if learn_momentum:
            self.logit_momentum = nn.Parameter(logit_momentum)
        else:
            self.register_buffer("logit_momentum", logit_momentum)

    def start_from(self, lr: list[float], momentum: list[float]) -> None:
        """Set the schedule to per-step values (steps beyond their length reuse their last value)."""
        steps = self.log_lr.shape[0]
        if min(lr) <= 0 or not all(0.0 < m < 1.0 for m in momentum):
            raise ValueError("a starting schedule needs lr > 0 and momentum in (0, 1) at every step")
        with torch.no_grad():
            for t in range(steps):
                self.log_lr[t] = math.log(lr[min(t, len(lr) - 1)])
                m = momentum[min(t, len(momentum) - 1)]
                self.logit_momentum[t] = math.log(m / (1 - m))

    def forward(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        t = min(t, self.log_lr.shape[0] - 1)
        return self.log_lr[t].exp(), torch.sigmoid(self.logit_momentum[t])

    def schedule(self) -> dict[str, list[float]]:
        """The learned schedule as plain numbers (for reports and exports)."""
        with torch.no_grad():
            return {"lr": self.log_lr.exp().tolist(), "momentum": torch.sigmoid(self.logit_momentum).tolist()}

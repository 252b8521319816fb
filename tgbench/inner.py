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


MOMENTUM_FORMS = ("logit", "exp")


class InnerHyperparameters(nn.Module):
    """Per-step learning rate (stored as log) and momentum, both meta-parameters.

    ``momentum_form`` says how the momentum is stored: ``"logit"`` (tgbench's default, buffer/parameter
    ``logit_momentum``; m = sigmoid(.), so it stays in (0, 1) and heavy-ball SGD cannot be pushed into a
    divergent m >= 1) or ``"exp"`` (the official GTN code, ``inner_optimizers.SGD``: ``log_momentum``,
    m = exp(.), unbounded above). The two give the same schedule at the same values; they differ in the
    meta-gradient (d m / d stored = m (1 - m) vs m) and in what Adam's steps on the stored value do to m.

    ``learn_lr`` / ``learn_momentum`` False keeps them as buffers (constants). Steps beyond the learned
    horizon (e.g. evaluating for longer than T) reuse the last step's values.
    """

    def __init__(self, steps: int, lr: float, momentum: float, learn_lr: bool = True, learn_momentum: bool = True,
                 momentum_form: str = "logit"):
        super().__init__()
        if momentum_form not in MOMENTUM_FORMS:
            raise ValueError(f"momentum_form must be one of {MOMENTUM_FORMS}, got {momentum_form!r}")
        self.momentum_form = momentum_form
        self._check_momentum(momentum)
        log_lr = torch.full((steps,), math.log(lr))
        stored_momentum = torch.full((steps,), self._store(momentum))
        if learn_lr:
            self.log_lr = nn.Parameter(log_lr)
        else:
            self.register_buffer("log_lr", log_lr)
        if learn_momentum:
            setattr(self, self._momentum_name, nn.Parameter(stored_momentum))
        else:
            self.register_buffer(self._momentum_name, stored_momentum)

    @property
    def _momentum_name(self) -> str:
        return "logit_momentum" if self.momentum_form == "logit" else "log_momentum"

    def _check_momentum(self, m: float) -> bool:
        if self.momentum_form == "logit" and not 0.0 < m < 1.0:
            raise ValueError("momentum must lie in (0, 1) to be logit-parametrised")
        if m <= 0.0:
            raise ValueError("momentum must be > 0 to be stored as its log")
        return True

    def _store(self, m: float) -> float:
        return math.log(m / (1 - m)) if self.momentum_form == "logit" else math.log(m)

    def _momentum(self, stored: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(stored) if self.momentum_form == "logit" else stored.exp()

    def start_from(self, lr: list[float], momentum: list[float]) -> None:
        """Set the schedule to per-step values (steps beyond their length reuse their last value)."""
        steps = self.log_lr.shape[0]
        valid_momentum = all(0.0 < m < 1.0 for m in momentum) if self.momentum_form == "logit" else min(momentum) > 0
        if min(lr) <= 0 or not valid_momentum:
            raise ValueError("a starting schedule needs lr > 0 and a momentum its form can store "
                             f"({'in (0, 1)' if self.momentum_form == 'logit' else '> 0'}) at every step")
        stored = getattr(self, self._momentum_name)
        with torch.no_grad():
            for t in range(steps):
                self.log_lr[t] = math.log(lr[min(t, len(lr) - 1)])
                stored[t] = self._store(momentum[min(t, len(momentum) - 1)])

    def forward(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        t = min(t, self.log_lr.shape[0] - 1)
        return self.log_lr[t].exp(), self._momentum(getattr(self, self._momentum_name)[t])

    def schedule(self) -> dict[str, list[float]]:
        """The learned schedule as plain numbers (for reports and exports)."""
        with torch.no_grad():
            return {"lr": self.log_lr.exp().tolist(),
                    "momentum": self._momentum(getattr(self, self._momentum_name)).tolist()}

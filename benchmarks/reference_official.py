"""The official GTN learner, inner loop and meta-loss in plain PyTorch: the reference tgbench's `paper` profiles
are checked against (``tests/test_official_fidelity.py``). Written from the behaviour of uber-research/GTN's code
(torch 1.2), not copied from it and not using tgbench's engine: ``nn.Module``s holding their weights, the inner
gradient by ``torch.autograd.grad(create_graph=True)``, no ``torch.func``.

What each piece follows:

* ``OfficialLearner`` — models.py ``Classifier(use_global_pooling=False)``, the ``base_fc`` learner of
  experiments/cgtn.json: weight-normalised conv 3×3 (no bias) -> maxpool(3, 2, 1) -> ``BatchNormMeanOnly`` ->
  LeakyReLU(0.1), twice; flatten; WN-Linear -> ``BatchNormMeanOnly`` -> LeakyReLU; WN-Linear classifier;
  log-softmax. ``BatchNormMeanOnly`` (models.py ``fBatchNorm`` with ``mean_only``) computes ``x + (beta - mean)``
  with a learnable per-channel/unit ``beta`` (``bias``, zero at init), which the inner loop trains like any
  weight. Weight norm is ``g · V / ||V||`` per output unit (``make_weight_norm_layer``).
* ``official_sgd_step`` — inner_optimizers.py ``SGD``: per-step ``log_lr`` and ``log_momentum`` parameters, used
  as ``exp(.)`` (momentum unbounded), ``v <- m v + g``, ``theta <- theta - lr v``, velocity starting at 0.
* ``official_meta_loss`` — train_cgtn.py ``compute_learner`` / ``intermediate_loss`` with
  ``use_intermediate_losses = 1`` (cgtn.json): before inner step ``it`` for every ``it >= 1`` a
  ``SurrogateLoss`` adds the NLL of the learner as it is then (after ``it`` steps) on a batch drawn from the real
  training loader at that moment — a fresh batch per loss — and the final loss after the last step is the NLL on
  the iteration's ``meta_x`` batch; every loss has weight 1 (``intermediate_losses_ratio = 1.0``), so their
  gradients add: the meta-loss is the *sum* of the T losses. All of them are computed in eval mode.
  The inner loss on a lesson is ``-(log_probs · y_one_hot).sum() / B`` (the NLL for integer labels).

Where this reference (like tgbench) departs from the official code, on purpose:

* BN statistics when scoring (``reference``): the official BN has momentum 0 and so stores the last lesson's
  per-channel means as they were computed *before* the last update; here, as in tgbench's lesson-statistics
  protocol (tgbench/nn.py, docs/protocol.md), the last lesson's means are recomputed under the scored weights.
* The classifier's bias is added after the weight-norm scale (``g V x / ||V|| + b``); the official layer scales
  the bias too (``(V x + b) · g / ||V||``) and initialises it uniformly (``nn.Linear``), tgbench at 0. The
  hidden WN-Linear's bias of the official learner is left out: the mean-only BN after it cancels it exactly
  (its gradient is 0, so the inner loop never moves it).
* The official code initialises ``log_lr`` at ``log(0.02 + 1e-6)``; the reference takes whatever initial
  values it is given (the test gives both sides the same).
* The real batches are whatever the caller passes (tgbench draws them with replacement; the official loader
  shuffles without replacement per epoch): the test passes tgbench's own.

The options ``intermediate_losses``, ``fresh_batches``, ``reduction``, ``bn_shift`` and ``momentum_form`` switch
single pieces away from the official behaviour, so the fidelity test can show that each one matters.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

SLOPE = 0.1  # LeakyReLU(0.1), models.py


def _wn(v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``g · V / ||V||`` with the norm over every dim but the output one (``torch.norm_except_dim(V, 2, 0)``)."""
    return v * (g / v.flatten(1).norm(dim=1)).view(-1, *([1] * (v.dim() - 1)))


class OfficialLearner(nn.Module):
    """models.py ``Classifier(use_global_pooling=False)`` at given widths, run on explicit weights.

    Parameters, in order: ``conv1_v, conv1_g, bn1_bias, conv2_v, conv2_g, bn2_bias, fc1_v, fc1_g, bn3_bias,
    fc2_v, fc2_g, fc2_b`` (``bn*_bias`` only with ``bn_shift``). ``forward(weights, x, reference)`` computes the
    log-probabilities of ``x`` with ``weights`` (a dict of those names) in place of the module's own — the
    inner loop's weights are non-leaf tensors, as the official ``set_parameters`` swaps them in.
    ``reference``: None = training mode (each BN subtracts the batch's own means); a batch = eval mode, every
    BN subtracting the means of ``reference``'s features under the same weights (see the module docstring).
    """

    def __init__(self, in_channels: int, side: int, widths: tuple[int, int, int], classes: int,
                 bn_shift: bool = True):
        super().__init__()
        c1, c2, fc = widths
        self.bn_shift = bn_shift
        pooled = side
        for _ in range(2):
            pooled = (pooled - 1) // 2 + 1  # maxpool(3, 2, 1)
        shapes = {"conv1_v": (c1, in_channels, 3, 3), "conv1_g": (c1,), "bn1_bias": (c1,),
                  "conv2_v": (c2, c1, 3, 3), "conv2_g": (c2,), "bn2_bias": (c2,),
                  "fc1_v": (fc, c2 * pooled * pooled), "fc1_g": (fc,), "bn3_bias": (fc,),
                  "fc2_v": (classes, fc), "fc2_g": (classes,), "fc2_b": (classes,)}
        for name, shape in shapes.items():
            if name.startswith("bn") and not bn_shift:
                continue
            setattr(self, name, nn.Parameter(torch.zeros(shape)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal V (models.py ``Linear`` / ``Conv2d``), g = ||V|| (the WN layer's function at init),
        BN shifts and the classifier bias at 0."""
        with torch.no_grad():
            for layer in ("conv1", "conv2", "fc1", "fc2"):
                v = getattr(self, f"{layer}_v")
                nn.init.kaiming_normal_(v)
                getattr(self, f"{layer}_g").copy_(v.flatten(1).norm(dim=1))

    def weights(self) -> dict[str, torch.Tensor]:
        return dict(self.named_parameters())

    def _bn(self, h: torch.Tensor, stats: torch.Tensor, weights: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        dims = [0, 2, 3] if h.dim() == 4 else [0]
        mean = stats.mean(dim=dims)
        beta = weights[f"{name}_bias"] if self.bn_shift else torch.zeros_like(mean)
        shift = beta - mean  # fBatchNorm's mean-only form: x + (beta - mean)
        return h + (shift[:, None, None] if h.dim() == 4 else shift)

    def forward(self, weights: dict[str, torch.Tensor], x: torch.Tensor,
                reference: torch.Tensor | None = None) -> torch.Tensor:
        w = weights
        # the scored batch and (in eval mode) the batch that supplies the BN means go through together
        stream = [x] if reference is None else [x, reference]
        for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
            stream = [F.max_pool2d(F.conv2d(h, _wn(w[f"{conv}_v"], w[f"{conv}_g"]), padding=1), 3, 2, 1)
                      for h in stream]
            stream = [F.leaky_relu(self._bn(h, stream[-1], w, bn), SLOPE) for h in stream]
        stream = [F.linear(h.flatten(1), _wn(w["fc1_v"], w["fc1_g"])) for h in stream]
        stream = [F.leaky_relu(self._bn(h, stream[-1], w, "bn3"), SLOPE) for h in stream]
        return F.log_softmax(F.linear(stream[0], _wn(w["fc2_v"], w["fc2_g"]), w["fc2_b"]), dim=-1)


class OfficialSGD(nn.Module):
    """inner_optimizers.py ``SGD(init_lr, init_momentum, num_inner_iterations)``: per-step ``log_lr`` and a
    per-step momentum, stored as ``log_momentum`` and used as ``exp`` (official), or — the flip the fidelity test
    uses — as ``logit_momentum`` through a sigmoid (tgbench's bounded form)."""

    def __init__(self, steps: int, lr: float, momentum: float, momentum_form: str = "exp"):
        super().__init__()
        self.momentum_form = momentum_form
        self.log_lr = nn.Parameter(torch.full((steps,), math.log(lr)))
        stored = math.log(momentum) if momentum_form == "exp" else math.log(momentum / (1 - momentum))
        self.stored_momentum = nn.Parameter(torch.full((steps,), stored))

    def hyperparameters(self, it: int) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.stored_momentum[it]
        return self.log_lr[it].exp(), (m.exp() if self.momentum_form == "exp" else torch.sigmoid(m))


def official_sgd_step(weights: dict[str, torch.Tensor], grads: dict[str, torch.Tensor],
                      velocity: dict[str, torch.Tensor], lr: torch.Tensor, momentum: torch.Tensor
                      ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``SGD.compute_update``: v <- m v + g; theta <- theta - lr v (out of place, so it stays differentiable)."""
    velocity = {n: momentum * velocity[n] + grads[n] for n in weights}
    return {n: weights[n] - lr * velocity[n] for n in weights}, velocity


def lesson_nll(log_probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """train_cgtn.py's inner loss ``-(output * y_one_hot).sum() / B`` (integer labels or probabilities)."""
    one_hot = F.one_hot(y, log_probs.shape[1]).to(log_probs.dtype) if y.dim() == 1 else y
    return -(log_probs * one_hot).sum() / log_probs.shape[0]


def official_meta_loss(learner: OfficialLearner, optimizer: OfficialSGD, weights: dict[str, torch.Tensor],
                       lesson_at: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
                       real_batches: Sequence[tuple[torch.Tensor, torch.Tensor]], *,
                       intermediate_losses: bool = True, fresh_batches: bool = True, reduction: str = "sum"
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """T = ``len(real_batches)`` inner steps of the learner from ``weights`` on ``lesson_at(it)``; returns
    (meta-loss, weights after T steps).

    ``real_batches[it - 1]`` is the real batch scored after step ``it`` (the last one: the final loss's
    ``meta_x``). Official: a loss after every step, each on its own batch, summed. The flips: only the final
    loss (``intermediate_losses=False``), every loss on the final batch (``fresh_batches=False``), their mean
    (``reduction="mean"``). Each loss is scored in eval mode with the BN means of the lesson just trained on.
    """
    steps = len(real_batches)
    velocity = {n: torch.zeros_like(w) for n, w in weights.items()}
    losses = []
    for it in range(steps):
        x, y = lesson_at(it)
        names = list(weights)
        grads = torch.autograd.grad(lesson_nll(learner(weights, x), y), [weights[n] for n in names],
                                    create_graph=True)
        lr, momentum = optimizer.hyperparameters(it)
        weights, velocity = official_sgd_step(weights, dict(zip(names, grads)), velocity, lr, momentum)
        last = it == steps - 1
        if last or intermediate_losses:
            real_x, real_y = real_batches[it] if fresh_batches or last else real_batches[-1]
            losses.append(F.nll_loss(learner(weights, real_x, reference=x), real_y))
    total = torch.stack(losses).sum()
    return (total if reduction == "sum" else total / len(losses)), weights

"""NAS proxies: cheap scores that should rank architectures the way full training on real data does.

A proxy is registered by name in ``tgbench.registry.proxies`` (the same ``Registry`` as methods and datasets) and
scores one architecture at a time; higher always means "predicted better". Three families live here:

* **zero-cost** (no training): ``param_count``, ``synflow``, ``grad_norm``, ``snip``, ``jacob_cov``, ``nwot``,
  implemented from their definitions (Abdelfattah et al. 2021, "Zero-Cost Proxies for Lightweight NAS";
  Mellor et al. 2021, "Neural Architecture Search without Training", v1 and v2);
* **teaching** (``teaching``): train a fresh learner of the architecture for k inner steps on a meta-trained
  teacher's lessons (GTN, dataset distillation, real data with a learned schedule) and score its validation
  accuracy — the GTN paper's NAS use (Sec. 4);
* **early stopping** (``real_epochs``): train on real data with the ground-truth schedule for e epochs and score
  validation accuracy.

Lifecycle of a proxy (what ``tgbench.nas`` calls, and when):

1. ``__init__(params, ctx)`` — once per suite run; ``params`` is the proxy's own pydantic ``Params`` (the YAML
   ``params:`` mapping), ``ctx`` a :class:`ProxyContext` (dataset, suite, meta-trained teachers).
2. ``teacher_source(params)`` — class method, before anything runs: the label of the suite source whose trained
   teacher this proxy needs (``None``: none). The runner meta-trains / loads those teachers first.
3. ``score(spec, seed) -> float`` — once per architecture; must be deterministic given ``seed``. The runner times
   each call (the proxy's cost per architecture).

Proxies never look at the test split; data-dependent ones use a seeded batch of the *training* split, and
accuracy-based ones the *validation* split.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, PositiveFloat, PositiveInt

from tgbench import device as devices
from tgbench.suite.schema import GroundTruthSchedule, Suite
from tgbench.data import Dataset, Split
from tgbench.engine import (EvalPlan, Tensors, Unroll, accuracy_and_loss, build_learner, detached_params, inner_step,
                            train_fresh_learners)
from tgbench.inner import OPTIMIZERS
from tgbench.nn import Learner, LearnerSpec, count_params
from tgbench.source import Lesson, Teacher
from tgbench.strict import Strict

ADAM_BETA1 = 0.9   # ground-truth / early-stopping training: standard Adam (beta2, eps as in tgbench.inner)


class ProxyParams(Strict):
    """Base of every proxy's ``Params``: the one strict base (``tgbench.strict``): unknown keys are errors,
    booleans are not numbers, floats are finite."""


@dataclass
class ProxyContext:
    dataset: Dataset
    suite: Suite
    teachers: dict[str, Teacher] = field(default_factory=dict)   # suite source label -> meta-trained teacher


class Proxy:
    """Base class of NAS proxies; see the module docstring for the lifecycle."""

    Params: ClassVar[type[ProxyParams]] = ProxyParams
    family: ClassVar[str] = "zero-cost"       # zero-cost | teaching | early-stopping (for tables and plots)
    description: ClassVar[str] = ""

    def __init__(self, params: ProxyParams, ctx: ProxyContext):
        self.params, self.ctx = params, ctx

    @classmethod
    def teacher_source(cls, params: ProxyParams) -> str | None:
        return None

    def score(self, spec: LearnerSpec, seed: int) -> float:
        raise NotImplementedError


# ------------------------------------------------------------------------------------ real-data training
def train_real(spec: LearnerSpec, dataset: Dataset, schedule: GroundTruthSchedule, seed: int,
               epochs: float | None = None, evaluate_test: bool = True, every_epoch: bool = True) -> dict[str, Any]:
    """Train a fresh ``spec`` learner on the real training split with Adam (the ground-truth protocol).

    Every epoch is a seeded permutation cut into ``len(train) // batch_size`` full batches (dropping the
    remainder keeps every batch >= 2 for mean-only BN). Validation (and test) accuracy is measured after every
    full epoch (unless ``every_epoch`` is off) and after the last step; the run stops early when validation
    accuracy has not improved for ``schedule.patience`` epochs. Returns the accuracies at the best-validation
    epoch (model selection on validation only) and after the last step, and the per-epoch curve. ``epochs``
    (may be fractional) overrides ``schedule.epochs``. Each step is the package's one inner step
    (``engine.inner_step``) with its Adam update, detached (no meta-gradient).
    """
    device = dataset.train.x.device
    generator = devices.generator(device, seed)
    learner = build_learner(spec, dataset.problem, device)
    learner.reset_parameters(generator)
    names, params = detached_params(learner)
    init, _ = OPTIMIZERS["adam"]
    state = init(params)
    train, batch = dataset.train, schedule.batch_size
    per_epoch = max(1, len(train) // batch)
    total = max(1, round((schedule.epochs if epochs is None else epochs) * per_epoch))
    unroll = Unroll(learner, names, params, None, None, total, "adam")  # real batches: no episode, no meta-loss
    lr, beta1 = torch.tensor(schedule.lr, device=device), torch.tensor(ADAM_BETA1, device=device)
    curve: list[dict[str, float]] = []
    best, since_best, order = None, 0, None
    for t in range(total):
        if t % per_epoch == 0:
            order = torch.randperm(len(train), generator=generator, device=device)
        idx = order[(t % per_epoch) * batch: (t % per_epoch + 1) * batch]
        batch_x = train.x[idx]   # also the BN reference when scoring (the lesson-statistics protocol)
        params, state = inner_step(unroll, params, state, Lesson(batch_x, train.y[idx], lr, beta1), t,
                                   create_graph=False)
        if t + 1 < total and ((t + 1) % per_epoch or not every_epoch):
            continue
        point = {"epoch": (t + 1) / per_epoch,
                 "val_acc": accuracy_and_loss(learner, names, params, dataset.val, batch_x)[0],
                 "test_acc": (accuracy_and_loss(learner, names, params, dataset.test, batch_x)[0]
                              if evaluate_test else None)}
        curve.append(point)
        if best is None or point["val_acc"] > best["val_acc"]:
            best, since_best = point, 0
        else:
            since_best += 1
            if schedule.patience is not None and since_best >= schedule.patience:
                break
    return {"val_acc": best["val_acc"], "test_acc": best["test_acc"], "best_epoch": best["epoch"],
            "val_acc_last": curve[-1]["val_acc"], "test_acc_last": curve[-1]["test_acc"],
            "epochs_run": curve[-1]["epoch"], "curve": curve}


class RealEpochsParams(ProxyParams):
    epochs: PositiveFloat = 1.0                 # may be fractional: 0.5 = half an epoch of steps


class RealEpochs(Proxy):
    """Early stopping: validation accuracy after ``epochs`` epochs of the ground-truth schedule (one seed)."""

    Params = RealEpochsParams
    family = "early-stopping"
    description = "val acc after e epochs of real-data training (the ground-truth schedule, cut short)"

    def score(self, spec: LearnerSpec, seed: int) -> float:
        schedule = self.ctx.suite.nas.ground_truth.model_copy(update={"patience": None})
        result = train_real(spec, self.ctx.dataset, schedule, seed, self.params.epochs, evaluate_test=False,
                            every_epoch=False)   # one validation pass, at the end: the proxy pays for no more
        return result["val_acc_last"]


# ------------------------------------------------------------------------------------ teaching data
class TeachingParams(ProxyParams):
    source: str             # a label of the suite's `sources`, or `<study>/<label>` (e.g. mnist_fewstep@cpu/gtn):
                            # the seed-0 teacher another suite stored in the same store
    steps: PositiveInt | None = None            # k inner steps (default: the suite's inner.steps)
    learners: PositiveInt = 1                   # fresh inits averaged per architecture


class TeachingData(Proxy):
    """Validation accuracy of a fresh learner after k inner steps on a meta-trained teacher's lessons.

    The learners are trained by ``engine.train_fresh_learners``, the loop behind ``engine.evaluate``: with k
    beyond the teacher's horizon T the lessons cycle (step t shows lesson t mod T) and the learned lr / momentum
    of the last step are reused, as in long evaluations. Learners use the weight-norm setting the teacher was
    trained for (WN does not change the function at init).
    """

    Params = TeachingParams
    family = "teaching"
    description = "val acc after k inner steps on a meta-trained teacher (gtn / dataset_distillation / real)"

    @classmethod
    def teacher_source(cls, params: TeachingParams) -> str | None:
        return params.source

    def score(self, spec: LearnerSpec, seed: int) -> float:
        teacher = self.ctx.teachers[self.params.source]
        steps = self.params.steps or self.ctx.suite.inner.steps
        wn = teacher.source.learner_weight_norm
        device = self.ctx.dataset.train.x.device
        learner = build_learner(spec if wn is None else replace(spec, weight_norm=wn), self.ctx.dataset.problem,
                                device)
        accs = []

        def val_acc_at_the_end(t: int, names: list[str], params: Tensors, reference: torch.Tensor) -> None:
            if t == steps:  # (not at init)
                accs.append(accuracy_and_loss(learner, names, params, self.ctx.dataset.val, reference)[0])

        plan = EvalPlan(steps, self.params.learners, teacher.optimizer, per_step=False)
        train_fresh_learners(teacher, learner, plan, devices.generator(device, seed), val_acc_at_the_end)
        return float(np.mean(accs))


# ------------------------------------------------------------------------------------ zero-cost proxies
class BatchParams(ProxyParams):
    batch_size: int = Field(64, ge=2)           # seeded batch of real training examples (mean-only BN needs >= 2)


def _plain_learner(spec: LearnerSpec, ctx: ProxyContext, seed: int) -> Learner:
    """A freshly initialised learner with plain weights W (weight norm off).

    Weight norm is a reparametrisation W = g V/||V|| that computes exactly the plain layer's function at init
    (g = ||V||), and the zero-cost literature defines its per-weight saliencies on W; scoring V and g instead
    would make e.g. sum(V * dR/dV) vanish by scale invariance. So every zero-cost proxy scores W.
    """
    device = ctx.dataset.train.x.device
    learner = build_learner(replace(spec, weight_norm=False), ctx.dataset.problem, device)
    learner.reset_parameters(devices.generator(device, seed))
    return learner


def _train_batch(ctx: ProxyContext, size: int, seed: int) -> Split:
    train = ctx.dataset.train
    device = train.x.device
    idx = torch.randperm(len(train), generator=devices.generator(device, seed), device=device)[:size]
    return Split(train.x[idx], train.y[idx])


def _layer_weights(learner: Learner) -> list[torch.Tensor]:
    """The weight tensors of every conv / linear layer (what the literature's per-layer sums run over)."""
    return [layer.weight for layer in [*learner.convs, *learner.fcs, learner.classifier]]


class ParamCount(Proxy):
    """Number of trainable parameters of the architecture as specified (a classic, surprisingly strong baseline)."""

    description = "number of trainable parameters"

    def score(self, spec: LearnerSpec, seed: int) -> float:
        return float(count_params(build_learner(spec, self.ctx.dataset.problem, self.ctx.dataset.train.x.device)))


class SynFlow(Proxy):
    """SynFlow (Tanaka et al. 2020, as a NAS proxy in Abdelfattah et al. 2021): S = sum |theta * dR/dtheta| with
    R = sum of the network's outputs (logits) for an all-ones input, after replacing every parameter by its
    absolute value, in float64 (the product over layers overflows float32).

    Normalisation layers are removed, as in the reference implementation (which scores a copy built with
    ``bn=False``): with a single all-ones input, mean-only BN would subtract each feature from itself.
    Data-independent: no training batch.
    """

    description = "sum |theta * dR/dtheta|, |theta| weights, all-ones input, float64, no BN"

    def score(self, spec: LearnerSpec, seed: int) -> float:
        # batch_norm off only adds zero biases, which |theta| keeps at 0: they add nothing to the sum
        learner = _plain_learner(replace(spec, batch_norm=False), self.ctx, seed).double()
        with torch.no_grad():
            for p in learner.parameters():
                p.abs_()
        ones = torch.ones(1, *self.ctx.dataset.image_shape, dtype=torch.float64,
                          device=self.ctx.dataset.train.x.device)
        learner.logits(ones).sum().backward()
        with torch.no_grad():
            return float(sum((p * p.grad).abs().sum() for p in learner.parameters()))


def _weights_with_loss_grad(proxy: "Proxy", spec: LearnerSpec, seed: int) -> list[torch.Tensor]:
    """The conv / linear layer weights of a seeded fresh learner, each holding dL/dW of the cross-entropy on a
    seeded batch of real training data (what grad_norm and SNIP score)."""
    learner = _plain_learner(spec, proxy.ctx, seed)
    batch = _train_batch(proxy.ctx, proxy.params.batch_size, seed)
    F.nll_loss(learner(batch.x), batch.y).backward()
    return _layer_weights(learner)


class GradNorm(Proxy):
    """grad_norm (Abdelfattah et al. 2021): sum over conv / linear layers of ||dL/dW||_2, L = cross-entropy on a
    seeded batch of real training data (mean-only BN active on the batch, as in training)."""

    Params = BatchParams
    description = "sum over layers of the L2 norm of the loss gradient on one batch"

    def score(self, spec: LearnerSpec, seed: int) -> float:
        weights = _weights_with_loss_grad(self, spec, seed)
        with torch.no_grad():
            return float(sum(w.grad.norm() for w in weights))


class Snip(Proxy):
    """SNIP saliency (Lee et al. 2019; as a NAS proxy in Abdelfattah et al. 2021): sum over conv / linear layer
    weights of |W * dL/dW| on a seeded batch of real training data."""

    Params = BatchParams
    description = "sum |W * dL/dW| over layer weights on one batch"

    def score(self, spec: LearnerSpec, seed: int) -> float:
        weights = _weights_with_loss_grad(self, spec, seed)
        with torch.no_grad():
            return float(sum((w * w.grad).abs().sum() for w in weights))


JACOB_COV_K = 1e-5


class JacobCov(Proxy):
    """jacob_cov (Mellor et al. 2021, v1): J_i = d(sum_c logits_ic)/dx_i per example of a seeded batch,
    Sigma = corrcoef(J) (B x B), eigenvalues v; score = -sum_i [log(v_i + k) + 1/(v_i + k)], k = 1e-5.
    Higher (closer to 0) = input Jacobians less correlated across examples. Computed in float64."""

    Params = BatchParams
    description = "-sum(log(v+k) + 1/(v+k)) of the eigenvalues of the input-Jacobian correlation matrix"

    def score(self, spec: LearnerSpec, seed: int) -> float:
        learner = _plain_learner(spec, self.ctx, seed).double()
        x = _train_batch(self.ctx, self.params.batch_size, seed).x.double().requires_grad_()
        learner.logits(x).sum().backward()   # examples do not interact except through BN's batch mean
        jac = x.grad.flatten(1).cpu().numpy()
        v = np.linalg.eigvalsh(np.corrcoef(jac))
        return float(-np.sum(np.log(v + JACOB_COV_K) + 1.0 / (v + JACOB_COV_K)))


class NWOT(Proxy):
    """NWOT (Mellor et al. 2021, v2, "neural architecture search without training"): for each example of a
    seeded batch, the binary code c_i of which hidden units are active (ReLU > 0), over every hidden layer;
    K_H[i, j] = N_A - Hamming(c_i, c_j) (= number of units on which i and j agree); score = log|K_H|.

    For activations other than ReLU (LeakyReLU, tanh, ELU) a unit is "active" when its pre-activation is > 0,
    i.e. the code is the sign pattern, which for (leaky) ReLU is exactly the linear region. The code is taken
    on the input of the activation, after mean-only BN (where BN is on). A singular K_H (fewer distinct codes
    than examples) scores -inf; keep the batch below the hidden-unit count of the smallest architecture.
    """

    Params = BatchParams
    description = "log|K_H| of the binary activation codes of a batch (Hamming kernel)"

    def score(self, spec: LearnerSpec, seed: int) -> float:
        learner = _plain_learner(spec, self.ctx, seed)
        codes: list[torch.Tensor] = []
        activation = learner.act

        def recording(h: torch.Tensor) -> torch.Tensor:
            codes.append((h > 0).flatten(1).double())
            return activation(h)

        learner.act = recording
        with torch.no_grad():
            learner.logits(_train_batch(self.ctx, self.params.batch_size, seed).x)
        if not codes:
            return -math.inf
        c = torch.cat(codes, dim=1)                      # (B, N_A)
        k = c @ c.T + (1 - c) @ (1 - c).T                # agreements = N_A - Hamming distance
        sign, logdet = np.linalg.slogdet(k.cpu().numpy())
        return float(logdet) if sign > 0 else -math.inf

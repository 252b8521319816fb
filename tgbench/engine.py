"""The meta-learning engine: functional inner unrolls, meta-gradients, evaluation, and the one meta-step.

Reading order: ``inner_step`` (one learner SGD step of an ``Unroll``, run functionally) -> ``train_learner``
(T steps on a teacher's lessons) -> the three meta-gradient estimators (``backprop_meta_loss``, with optional
checkpointing and vmap population; ``es_gradient`` and ``hybrid_gradient``) -> ``train_fresh_learners`` and
``evaluate`` (fresh learners trained on a trained teacher, for scoring) -> ``MetaTrainer.step``, the single
outer iteration that the runner, the Optuna objective and the asv benchmarks all call.

What the rest of tgbench uses: ``MetaTrainer`` (meta-training; built by ``tgbench.builders``), ``evaluate`` with an
``EvalPlan`` (scores of fresh learners on the test/validation splits), ``train_fresh_learners`` (the one loop
that trains fresh learners on a teacher's lessons: ``evaluate``, the NAS ``teaching`` proxy and so ``tgbench
teach`` all run it), ``build_learner`` (a learner for a ``tgbench.problem.Problem`` on a device), and the pieces
for code that drives an unroll itself (``Unroll``, ``inner_step``, ``train_learner``, ``accuracy_and_loss``).

Learners are plain ``nn.Module``s whose parameters are held *outside* the module as a list of tensors and
applied with ``torch.func.functional_call``; every update is out of place, so the learner's final weights are a
differentiable function of the teacher's meta-parameters.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad as func_grad, vmap
from torch.utils.checkpoint import checkpoint

from tgbench import device as devices
from tgbench.suite.schema import InnerLoop, LearnerSpace, OuterLoop
from tgbench.data import Split
from tgbench.errors import Diverged
from tgbench.inner import OPTIMIZERS
from tgbench.nn import Learner, LearnerSpec
from tgbench.problem import Problem
from tgbench.source import Lesson, Teacher

Tensors = list[torch.Tensor]


# --------------------------------------------------------------------------------------------- one inner step
def lesson_loss(log_probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against integer labels (B,) or soft-label probabilities (B, classes)."""
    if y.dim() == 1:
        return F.nll_loss(log_probs, y)
    return -(y * log_probs).sum(dim=1).mean()


@dataclass
class Unroll:
    """The pieces of one learner training run, shared by every estimator: the learner module with the names of
    its parameters (which ``functional_call`` substitutes), its initial weights, the teacher's episode, the
    meta-loss batch, and how it trains (``steps`` of ``optimizer``, a key of ``tgbench.inner.OPTIMIZERS``).

    The meta-loss: the real-data loss after the last step, or with ``intermediate_losses`` one after every step
    (``loss_batch(t)`` is the real batch scored after step t: ``meta_batch`` for all of them, or, with
    ``intermediate_batches``, a fresh batch for each step before the last, as the official code does), reduced
    by ``intermediate_reduction`` ("mean" or the official "sum"). The batches are drawn once per unroll, so
    every estimator (plain, checkpointed, population, ES / hybrid at each perturbed point) scores the same ones.
    """

    learner: Learner
    names: list[str]
    params: Tensors                     # initial learner weights (leaves)
    episode: Any                        # the source's randomness for this unroll
    meta_batch: Split | None            # real training batch for the meta-loss (None: no meta-loss)
    steps: int
    optimizer: str = "sgd_momentum"
    intermediate_losses: bool = False
    intermediate_batches: list[Split] | None = None   # steps - 1 fresh batches (losses after steps 1..T-1)
    intermediate_reduction: str = "mean"

    def loss_batch(self, t: int) -> Split:
        """The real batch of the meta-loss after inner step t (0-based; t = steps - 1 is the final loss)."""
        if self.intermediate_batches is None or t == self.steps - 1:
            return self.meta_batch
        return self.intermediate_batches[t]

    def reduce_summed(self, total: torch.Tensor) -> torch.Tensor:
        """The meta-loss from the sum of all T losses (intermediate and final)."""
        return total if self.intermediate_reduction == "sum" else total / self.steps


def inner_step(u: Unroll, params: Tensors, state: tuple, lesson: Lesson, t: int, *, create_graph: bool,
               grad_impl: str = "autograd") -> tuple[Tensors, tuple]:
    """Step ``t`` of unroll ``u``: one ``u.optimizer`` step of ``u.learner`` from (``params``, optimiser
    ``state``) on ``lesson``; returns new (params, state), out of place.

    ``grad_impl="autograd"`` uses ``torch.autograd.grad`` (fastest on CPU: ``torch.func.grad`` always builds
    the double-backward graph, measured ~1.6x slower); ``"func"`` uses ``torch.func.grad``, which is what works
    under ``vmap``.
    """
    def loss_of(p: Sequence[torch.Tensor]) -> torch.Tensor:
        return lesson_loss(functional_call(u.learner, dict(zip(u.names, p)), (lesson.x,)), lesson.y)

    if grad_impl == "func":
        grads = list(func_grad(loss_of)(tuple(params)))
    else:
        grads = list(torch.autograd.grad(loss_of(params), params, create_graph=create_graph))
    _, update = OPTIMIZERS[u.optimizer]
    params, state = update(params, grads, state, lesson.lr, lesson.momentum, t)
    if not create_graph:  # cut the graph: forward-only unrolls (evaluation, ES) keep O(1) memory
        params = [p.detach().requires_grad_() for p in params]
        state = tuple([s.detach() for s in group] for group in state)
    return params, state


def scored_log_probs(learner: torch.nn.Module, names: Sequence[str], params: Sequence[torch.Tensor],
                     x: torch.Tensor, bn_reference: torch.Tensor | None) -> torch.Tensor:
    """Log-probabilities of a learner being *scored* (not trained) on ``x``.

    ``bn_reference`` is the lesson the learner last trained on: a tgbench ``Learner`` takes its BN statistics
    from it (the lesson-statistics protocol, see ``tgbench.nn``), so the result for one example never depends
    on the rest of ``x``. A user model (``tgbench teach --model``) is called as it is.
    """
    kwargs = {"bn_reference": bn_reference} if isinstance(learner, Learner) and bn_reference is not None else {}
    return functional_call(learner, dict(zip(names, params)), (x,), kwargs)


def real_loss(learner: Learner, names: Sequence[str], params: Sequence[torch.Tensor], batch: Split,
              bn_reference: torch.Tensor | None) -> torch.Tensor:
    """The meta-loss: the learner's NLL on a batch of *real training* data, scored with the BN statistics of
    ``bn_reference`` (the last lesson)."""
    return F.nll_loss(scored_log_probs(learner, names, params, batch.x, bn_reference), batch.y)


def train_learner(teacher_at: Callable[[int], Lesson], u: Unroll, *, differentiable: bool,
                  grad_impl: str = "autograd", params: Tensors | None = None,
                  after_step: Callable[[int, Tensors, torch.Tensor], None] | None = None
                  ) -> tuple[Tensors, torch.Tensor]:
    """Train ``u.learner`` for ``u.steps`` steps on ``teacher_at(t)``; return (final params, meta-loss or None).

    The meta-loss is the real-data loss after the last step, or (``intermediate_losses``) the mean or sum of
    the losses after every step (on ``u.loss_batch(t)``), each scored with the BN statistics of the lesson just
    trained on. ``after_step(t, params, lesson_x)`` observes the learner (evaluation curves) and gets that
    lesson's images as the BN reference.
    """
    init, _ = OPTIMIZERS[u.optimizer]
    params = list(u.params if params is None else params)
    state = init(params)
    intermediate = []
    lesson = None
    for t in range(u.steps):
        lesson = teacher_at(t)
        params, state = inner_step(u, params, state, lesson, t, create_graph=differentiable, grad_impl=grad_impl)
        if u.intermediate_losses and t < u.steps - 1:
            intermediate.append(real_loss(u.learner, u.names, params, u.loss_batch(t), lesson.x))
        if after_step is not None:
            after_step(t, params, lesson.x)
    if u.meta_batch is None:
        return params, None
    final = real_loss(u.learner, u.names, params, u.meta_batch, lesson.x)
    if not intermediate:
        return params, final
    losses = torch.stack(intermediate + [final])
    return params, losses.sum() if u.intermediate_reduction == "sum" else losses.mean()


# ------------------------------------------------------------------------------------ backprop meta-gradient
def backprop_meta_loss(teacher: Teacher, u: Unroll, checkpoint_every: int = 0) -> torch.Tensor:
    """Meta-loss whose ``.backward()`` is the exact (second-order) meta-gradient through the whole unroll.

    With ``checkpoint_every = k > 0`` the unroll runs in segments of k steps under
    ``torch.utils.checkpoint(use_reentrant=True)``: each segment's forward keeps only its outputs, and the
    backward replays it (2 evaluations per step; memory O(T/k + k) steps instead of O(T)). The reentrant
    variant is the one that can contain a double-backward inner step; it needs the teacher's meta-parameters
    as explicit inputs (hence ``functional_call``) and the outer ``.backward()`` rather than
    ``autograd.grad`` — measured on this CPU, see docs/engine_notes.md.
    """
    if not checkpoint_every:
        return train_learner(lambda t: teacher(t, u.episode), u, differentiable=True)[1]

    init, _ = OPTIMIZERS[u.optimizer]
    named = list(teacher.named_parameters())  # may be empty (e.g. real data with a fixed lr/momentum)
    meta_names, meta_tensors = [n for n, _ in named], [p for _, p in named]
    params, state = list(u.params), init(u.params)
    n_params, n_groups = len(params), len(state)
    intermediate = torch.zeros((), dtype=params[0].dtype, device=params[0].device)

    for t0 in range(0, u.steps, checkpoint_every):
        t1 = min(t0 + checkpoint_every, u.steps)

        def segment(*flat, t0=t0, t1=t1):
            p = list(flat[:n_params])
            s = tuple(list(flat[n_params * (1 + g): n_params * (2 + g)]) for g in range(n_groups))
            meta = dict(zip(meta_names, flat[n_params * (1 + n_groups): -1]))
            acc = flat[-1]
            with torch.enable_grad():
                for t in range(t0, t1):
                    lesson = functional_call(teacher, meta, (t, u.episode))
                    p, s = inner_step(u, p, s, lesson, t, create_graph=True)
                    if u.intermediate_losses and t < u.steps - 1:
                        acc = acc + real_loss(u.learner, u.names, p, u.loss_batch(t), lesson.x)
            return (*p, *[x for group in s for x in group], acc)

        out = checkpoint(segment, *params, *[x for group in state for x in group], *meta_tensors, intermediate,
                         use_reentrant=True)
        params = list(out[:n_params])
        state = tuple(list(out[n_params * (1 + g): n_params * (2 + g)]) for g in range(n_groups))
        intermediate = out[-1]
    # the last lesson again, outside the segments, as the final loss's BN reference (it depends on the
    # meta-parameters, so the meta-gradient flows through the statistics as in the unsegmented unroll)
    last_lesson = teacher(u.steps - 1, u.episode)
    final = real_loss(u.learner, u.names, params, u.meta_batch, last_lesson.x)
    return u.reduce_summed(intermediate + final) if u.intermediate_losses else final


def population_meta_loss(teacher: Teacher, u: Unroll, stacked: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean meta-loss of P learners (one architecture, P inits stacked on dim 0) trained in parallel by vmap.

    All members see the same lessons (computed once, outside vmap) and the same meta-loss batches, so the
    gradient of the mean is the mean of the P individual meta-gradients.
    """
    lessons = [teacher(t, u.episode) for t in range(u.steps)]

    def member(params: dict[str, torch.Tensor]) -> torch.Tensor:
        member_unroll = replace(u, params=[params[n] for n in u.names], episode=None)
        return train_learner(lessons.__getitem__, member_unroll, differentiable=True, grad_impl="func")[1]

    return vmap(member, randomness="different")(stacked).mean()


# ------------------------------------------------------------------------------------- ES and the hybrid
def _perturbations(theta: Sequence[torch.Tensor], sigma: float, generator: torch.Generator) -> Tensors:
    return [torch.randn(p.shape, generator=generator, dtype=p.dtype, device=p.device) * sigma for p in theta]


def _sample_variance(samples: list[Tensors]) -> float:
    """Scalar variance of per-sample gradient estimates: squared deviations summed over parameters, / N."""
    flat = torch.stack([torch.cat([g.flatten() for g in s]) for s in samples])
    return float(((flat - flat.mean(0)) ** 2).sum() / flat.shape[0])


def _mean(samples: list[Tensors]) -> Tensors:
    return [torch.stack(group).mean(0) for group in zip(*samples)]


@dataclass
class GradientEstimate:
    grads: Tensors
    loss: float                       # mean loss over the evaluated points
    variances: dict[str, float] = field(default_factory=dict)


def es_gradient(loss_fn: Callable[[Tensors], float], theta: Sequence[torch.Tensor], sigma: float, pairs: int,
                generator: torch.Generator) -> GradientEstimate:
    """Antithetic ES:  g = 1/(2 N sigma^2) * sum_i [L(theta + e_i) - L(theta - e_i)] e_i,  e_i ~ N(0, sigma^2 I).

    ``loss_fn`` is forward-only; unbiased for the Gaussian-smoothed loss (exactly unbiased on a quadratic).
    """
    samples, losses = [], []
    for _ in range(pairs):
        eps = _perturbations(theta, sigma, generator)
        plus = loss_fn([p + e for p, e in zip(theta, eps)])
        minus = loss_fn([p - e for p, e in zip(theta, eps)])
        samples.append([(plus - minus) / (2 * sigma ** 2) * e for e in eps])
        losses += [plus, minus]
    return GradientEstimate(_mean(samples), sum(losses) / len(losses), {"es": _sample_variance(samples)})


def hybrid_gradient(loss_and_grad_fn: Callable[[Tensors], tuple[float, Tensors]], theta: Sequence[torch.Tensor],
                    sigma: float, pairs: int, generator: torch.Generator) -> GradientEstimate:
    """Inverse-variance-weighted combination of ES and backprop (reparameterisation) estimates (Metz et al.).

    At the same antithetic points theta +/- e_i, the per-pair ES estimate and the per-pair backprop estimate
    (mean of the two gradients) are formed; with s^2 their empirical variances,
        g = (g_RP * s^2_ES + g_ES * s^2_RP) / (s^2_RP + s^2_ES).
    When backprop through a long unroll becomes chaotic its variance explodes and ES takes over.
    """
    es_samples, rp_samples, losses = [], [], []
    for _ in range(pairs):
        eps = _perturbations(theta, sigma, generator)
        plus, g_plus = loss_and_grad_fn([p + e for p, e in zip(theta, eps)])
        minus, g_minus = loss_and_grad_fn([p - e for p, e in zip(theta, eps)])
        es_samples.append([(plus - minus) / (2 * sigma ** 2) * e for e in eps])
        rp_samples.append([(a + b) / 2 for a, b in zip(g_plus, g_minus)])
        losses += [plus, minus]
    s2_es, s2_rp = _sample_variance(es_samples), _sample_variance(rp_samples)
    g_es, g_rp = _mean(es_samples), _mean(rp_samples)
    total = s2_es + s2_rp
    w_rp = 0.5 if total == 0 or not math.isfinite(total) else s2_es / total
    if not math.isfinite(s2_rp):  # backprop blew up: fall back on ES alone
        w_rp = 0.0
    # (w_rp == 0 must not touch g_rp: 0 * nan is nan, which would defeat the fallback above)
    grads = list(g_es) if w_rp == 0.0 else [w_rp * r + (1 - w_rp) * e for r, e in zip(g_rp, g_es)]
    return GradientEstimate(grads, sum(losses) / len(losses), {"es": s2_es, "backprop": s2_rp, "w_backprop": w_rp})


# ---------------------------------------------------------------------------------------------- evaluation
@dataclass
class EvalResult:
    """Accuracy/loss of fresh learners trained on a teacher, after each inner step (index 0 = at init)."""

    test_acc: list[float]
    val_acc: list[float]
    test_loss: list[float]
    val_loss: list[float]

    @property
    def final(self) -> dict[str, float]:
        return {"test_acc": self.test_acc[-1], "val_acc": self.val_acc[-1],
                "test_loss": self.test_loss[-1], "val_loss": self.val_loss[-1]}


@torch.no_grad()
def accuracy_and_loss(learner, names, params, split: Split, bn_reference: torch.Tensor | None,
                      chunk: int = 2000) -> tuple[float, float]:
    """Accuracy and mean NLL on ``split``, scored with the BN statistics of ``bn_reference`` (the last lesson).

    Chunked so that evaluation memory stays flat; under the lesson-statistics protocol the chunking does not
    change any prediction (under ``bn_statistics: scored_batch`` each chunk is normalised with its own mean).
    The sums stay on the device until the end (one host sync per call, not one per chunk); the loss is summed in
    float64, as Python floats summed it before."""
    correct = torch.zeros((), dtype=torch.int64, device=split.x.device)
    loss = torch.zeros((), dtype=torch.float64, device=split.x.device)
    for i in range(0, len(split), chunk):
        out = scored_log_probs(learner, names, params, split.x[i:i + chunk], bn_reference)
        correct += (out.argmax(1) == split.y[i:i + chunk]).sum()
        loss += F.nll_loss(out, split.y[i:i + chunk], reduction="sum").double()
    return int(correct) / len(split), float(loss) / len(split)


# The points before the last inner step (at init, and after steps 1..T-1 with ``evaluate(per_step=True)``) are
# scored on the first CURVE_SUBSET examples of each split; after the last step (the number every table reports)
# always on the whole split. Those points are a figure; 33 full passes over 20k images were half a cell's time.
CURVE_SUBSET = 1000


@dataclass(frozen=True)
class EvalPlan:
    """How fresh learners are trained on a teacher for scoring: ``learners`` per architecture, ``steps`` inner
    steps of ``optimizer``, scored after every step (``per_step``) or only at init and after the last."""

    steps: int
    learners: int
    optimizer: str = "sgd_momentum"
    per_step: bool = True


# A learner to train: a LearnerSpec, or a factory ``problem -> module`` (``tgbench teach --model``) whose module
# returns log-probabilities and has ``reset_parameters(generator)``.
LearnerFactory = Callable[[Problem], torch.nn.Module]


def build_learner(spec: LearnerSpec | LearnerFactory, problem: Problem, device: torch.device) -> torch.nn.Module:
    """A learner of architecture ``spec`` (or built by the factory ``spec(problem)``) for ``problem``, with every
    tensor created on ``device`` (where the data it trains on lives)."""
    with devices.constructing_on(device):
        return Learner(spec, problem) if isinstance(spec, LearnerSpec) else spec(problem)


# score(t, names, params, bn_reference): look at a learner after t inner steps (t = 0: at init)
Scorer = Callable[[int, list[str], Tensors, torch.Tensor], None]


def train_fresh_learners(teacher: Teacher, learner: torch.nn.Module, plan: EvalPlan, generator: torch.Generator,
                         score: Scorer) -> None:
    """Train ``plan.learners`` fresh learners, one after the other, on the teacher's lessons, and let ``score``
    look at each. The one loop behind every "how well does this teacher teach" number: ``evaluate`` (final
    scores and curves), the NAS ``teaching`` proxy, and ``tgbench teach``.

    Each learner, in this order (every recorded number depends on it, since all draws come from ``generator``):

    1. ``learner.reset_parameters(generator)`` — a fresh init of the same module, whose weights are then copied
       out (``detached_params``): the module itself is never trained;
    2. ``teacher.new_episode(generator)`` — the teacher's randomness for this learner;
    3. the ``plan.steps`` lessons ``teacher(t, episode)``, computed without a graph (beyond the teacher's horizon
       its sources cycle their lessons and its schedule repeats the last step's lr / momentum);
    4. ``plan.steps`` steps of ``plan.optimizer`` on them without meta-gradient (``train_learner``, each step's
       graph cut), calling ``score(t, names, params, bn_reference)`` after t steps: at t = 0 (init, with the
       first lesson as BN reference: none has been seen yet) and t = ``plan.steps`` always, and at every t in
       between when ``plan.per_step``. ``params`` are the learner's weights in the order of ``names`` (its
       parameter names, for ``functional_call``), ``bn_reference`` the lesson it last trained on (the
       lesson-statistics protocol of ``tgbench.nn``); score with ``accuracy_and_loss``.

    The learner and ``generator`` must live where the teacher's lessons do. Returns nothing: what a score is,
    and how scores are averaged, is the caller's.
    """
    for _ in range(plan.learners):
        learner.reset_parameters(generator)
        names, params = detached_params(learner)
        episode = teacher.new_episode(generator)
        with torch.no_grad():
            lessons = [teacher(t, episode) for t in range(plan.steps)]

        def after_step(t: int, p: Tensors, reference: torch.Tensor, names=names) -> None:
            if plan.per_step or t == plan.steps - 1:
                score(t + 1, names, p, reference)

        score(0, names, params, lessons[0].x)
        u = Unroll(learner, names, params, episode, None, plan.steps, plan.optimizer)
        train_learner(lessons.__getitem__, u, differentiable=False, after_step=after_step)


def evaluate(teacher: Teacher, specs: Sequence[LearnerSpec | LearnerFactory], test: Split, val: Split,
             plan: EvalPlan, generator: torch.Generator) -> EvalResult:
    """Train ``plan.learners`` fresh learners per architecture on the teacher's data (``train_fresh_learners``,
    no meta-gradient) and average their test/val accuracy and loss after every inner step (``plan.per_step``) or
    only at init and after the last. The last step is scored on the whole splits, earlier points on their first
    ``CURVE_SUBSET`` examples.

    An entry of ``specs`` may also be a factory ``problem -> module`` returning log-probabilities with a
    ``reset_parameters(generator)`` (``tgbench teach --model``). Learners are built for the teacher's problem on
    the splits' device; ``generator`` must live there too."""
    # rows: test_acc, test_loss, val_acc, val_loss; column t = after t steps (host numbers: scores are synced)
    sums = [[0.0] * (plan.steps + 1) for _ in range(4)]
    test_curve, val_curve = test.head(CURVE_SUBSET), val.head(CURVE_SUBSET)
    for spec in specs:
        learner = build_learner(spec, teacher.problem, test.x.device)

        def score(t: int, names: list[str], params: Tensors, reference: torch.Tensor, learner=learner) -> None:
            on_test, on_val = (test, val) if t == plan.steps else (test_curve, val_curve)
            scores = (*accuracy_and_loss(learner, names, params, on_test, reference),
                      *accuracy_and_loss(learner, names, params, on_val, reference))
            for row, value in zip(sums, scores):
                row[t] += value

        train_fresh_learners(teacher, learner, plan, generator, score)
    count = len(specs) * plan.learners
    rows = [[total / count for total in row] for row in sums]
    if not plan.per_step:  # only the endpoints were measured
        rows = [[row[0], row[-1]] for row in rows]
    return EvalResult(test_acc=rows[0], test_loss=rows[1], val_acc=rows[2], val_loss=rows[3])


def detached_params(learner: torch.nn.Module) -> tuple[list[str], Tensors]:
    """The learner's parameter names and a detached copy of its weights (leaves that require grad): the starting
    point of a functional unroll, which never touches the module's own parameters."""
    names = [n for n, _ in learner.named_parameters()]
    return names, [p.detach().clone().requires_grad_() for p in learner.parameters()]


# ------------------------------------------------------------------------------------------ the meta-step
def cosine_factor(iteration: int, total: int, final_fraction: float) -> float:
    """Cosine decay from 1 to ``final_fraction`` over ``total`` iterations (the official schedule)."""
    progress = min(iteration / max(total, 1), 1.0)
    return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class StepStats:
    iteration: int
    meta_loss: float
    grad_norm: float
    seconds: float
    architecture: str
    extras: dict[str, float] = field(default_factory=dict)


class OuterAdam:
    """Adam on the meta-parameters: ``torch.optim.Adam``'s update with its defaults (no weight decay, no amsgrad),
    written out in the same operations, so the meta-parameters follow the same path (a test compares the two
    step by step). Why not ``torch.optim.Adam`` itself: constructing it imports ``torch._dynamo``, ~1.1 s per
    process — a tenth of the smoke run, paid again by every worker and test process."""

    def __init__(self, params: Sequence[torch.Tensor], lr: float, betas: tuple[float, float], eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps, self.steps = list(params), lr, betas, eps, 0
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        beta1, beta2 = self.betas
        step_size = self.lr / (1 - beta1 ** self.steps)
        bias_correction2_sqrt = (1 - beta2 ** self.steps) ** 0.5
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            if p.grad is None:
                continue
            m.lerp_(p.grad, 1 - beta1)
            v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            p.addcdiv_(m, (v.sqrt() / bias_correction2_sqrt).add_(self.eps), value=-step_size)

    def state_dict(self) -> dict:
        """The moments and the step count (copies): what, with the parameters, continues the same path."""
        return {"steps": self.steps, "exp_avg": [m.detach().clone() for m in self.exp_avg],
                "exp_avg_sq": [v.detach().clone() for v in self.exp_avg_sq]}

    def load_state_dict(self, state: dict) -> None:
        """Copy ``state_dict()``'s values in (onto this optimiser's device); the learning rate is not state: the
        schedule sets it before every step."""
        for name in ("exp_avg", "exp_avg_sq"):
            mine, theirs = getattr(self, name), state[name]
            if len(theirs) != len(mine) or any(a.shape != b.shape for a, b in zip(mine, theirs)):
                raise ValueError(f"optimizer state: {name} does not match the meta-parameters' shapes")
            for a, b in zip(mine, theirs):
                a.copy_(b)
        self.steps = int(state["steps"])


class MetaTrainer:
    """Owns a teacher's outer optimisation. ``step()`` is *the* meta-step: sample an architecture and a fresh
    init, unroll T inner steps on the teacher's lessons, estimate the meta-gradient (backprop / ES / hybrid,
    optionally checkpointed or over a vmap population), and apply one Adam update with the cosine schedule.

    Learners are drawn from ``space`` and built for the teacher's problem (``teacher.problem``) with the
    weight-norm setting its source asks for (``learner_weight_norm``; None: the space's own), as every
    evaluation of the teacher builds them; ``train`` is the real data of the meta-loss.

    Raises ``Diverged`` when the meta-loss, the meta-gradient or the meta-parameters stop being finite.
    """

    def __init__(self, teacher: Teacher, space: LearnerSpace, train: Split, inner: InnerLoop, outer: OuterLoop,
                 *, seed: int = 0):
        self.teacher, self.space, self.train = teacher, space, train
        self.inner, self.outer = inner, outer
        self.problem = teacher.problem
        self.learner_weight_norm = teacher.source.learner_weight_norm
        self.device = train.x.device                         # where the data is, everything is
        self.rng = random.Random(seed)                       # architecture sampling
        self.generator = devices.generator(self.device, seed)  # inits, episodes, meta-batches, ES noise
        self.meta_params = [p for p in teacher.parameters() if p.requires_grad]
        self.optimizer = OuterAdam(self.meta_params, lr=outer.lr, betas=outer.betas) if self.meta_params else None
        self.iteration = 0
        self._learners: dict[LearnerSpec, Learner] = {}

    def state_dict(self) -> dict:
        """Everything a fresh ``MetaTrainer`` of the same cell needs to continue exactly where this one is (pure
        data: tensors, copied, on this trainer's device, and python values): the teacher's parameters and buffers
        (a GTN's curriculum codes and labels, the learned schedule), the outer optimiser's moments and step count,
        the iteration (the schedule's position) and both random streams — the torch generator (inits, episodes,
        meta-batches, ES noise) and the python one (architecture sampling). Sources draw every random number
        from the generator they are handed (``Source.new_episode``) and learners keep no state between steps
        (they are re-initialised from the generator), so nothing else carries over."""
        version, internal, gauss_next = self.rng.getstate()
        return {"iteration": self.iteration,
                "teacher": {k: v.detach().clone() for k, v in self.teacher.state_dict().items()},
                "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
                "generator": self.generator.get_state(),
                "rng": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()`` (of a trainer built for the same cell on the same kind of device):
        copies the values into this trainer's own tensors, so ``meta_params`` stay the teacher's parameters."""
        self.teacher.load_state_dict(state["teacher"])
        if (state["optimizer"] is None) != (self.optimizer is None):
            raise ValueError("optimizer state: saved for a teacher with other meta-parameters")
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        rng = state["rng"]
        self.rng.setstate((rng["version"], tuple(rng["internal"]), rng["gauss_next"]))
        self.iteration = int(state["iteration"])

    def _learner(self, spec: LearnerSpec) -> Learner:
        if spec not in self._learners:
            self._learners[spec] = build_learner(spec, self.problem, self.device)
        return self._learners[spec]

    def _meta_batch(self) -> Split:
        idx = torch.randint(len(self.train), (self.outer.meta_batch_size,), generator=self.generator,
                            device=self.device)
        return Split(self.train.x[idx], self.train.y[idx])

    def step(self) -> StepStats:
        start = time.perf_counter()
        spec = self.space.sample(self.rng, self.learner_weight_norm)
        learner = self._learner(spec)
        learner.reset_parameters(self.generator)
        names, params = detached_params(learner)
        # with fresh intermediate batches, steps - 1 more meta-batches, drawn after the final loss's (so a run
        # without them keeps its random stream)
        fresh = self.outer.intermediate_losses and self.outer.intermediate_batches == "fresh"
        u = Unroll(learner, names, params, self.teacher.new_episode(self.generator), self._meta_batch(),
                   self.inner.steps, self.inner.optimizer, self.outer.intermediate_losses,
                   [self._meta_batch() for _ in range(self.inner.steps - 1)] if fresh else None,
                   self.outer.intermediate_reduction)
        for p in self.meta_params:
            p.grad = None
        extras: dict[str, float] = {}
        if self.outer.meta_gradient == "backprop" or not self.meta_params:  # nothing to estimate: loss only
            if self.outer.population > 1:
                inits = []
                for _ in range(self.outer.population):
                    learner.reset_parameters(self.generator)
                    inits.append(detached_params(learner)[1])
                stacked = {n: torch.stack([init[i] for init in inits]) for i, n in enumerate(names)}
                loss = population_meta_loss(self.teacher, u, stacked)
            else:
                loss = backprop_meta_loss(self.teacher, u, self.outer.checkpoint_every)
            meta_loss = float(loss.detach())
            self._check_finite("meta-loss", meta_loss)
            if self.meta_params:
                loss.backward()
        else:
            estimate = self._es_or_hybrid(u)
            meta_loss, extras = estimate.loss, estimate.variances
            self._check_finite("meta-loss", meta_loss)
            for p, g in zip(self.meta_params, estimate.grads):
                p.grad = g
        grad_norm = self._apply_update()
        self.iteration += 1
        devices.synchronize(self.device)  # (the Adam update is still queued on a GPU)
        return StepStats(self.iteration, meta_loss, grad_norm, time.perf_counter() - start, spec.describe(), extras)

    def _es_or_hybrid(self, u: Unroll) -> GradientEstimate:
        names = [n for n, p in self.teacher.named_parameters() if p.requires_grad]
        theta = [p.detach() for p in self.meta_params]

        def loss_fn(point: Tensors) -> float:  # forward-only unroll at perturbed meta-parameters
            meta = dict(zip(names, point))
            with torch.no_grad():
                lessons = [functional_call(self.teacher, meta, (t, u.episode)) for t in range(u.steps)]
            return float(train_learner(lessons.__getitem__, u, differentiable=False)[1].detach())

        def loss_and_grad(point: Tensors) -> tuple[float, Tensors]:
            leaves = [p.clone().requires_grad_() for p in point]
            meta = dict(zip(names, leaves))
            loss = train_learner(lambda t: functional_call(self.teacher, meta, (t, u.episode)), u,
                                 differentiable=True)[1]
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
            return float(loss.detach()), [torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads)]

        if self.outer.meta_gradient == "es":
            return es_gradient(loss_fn, theta, self.outer.es_sigma, self.outer.es_pairs, self.generator)
        return hybrid_gradient(loss_and_grad, theta, self.outer.es_sigma, self.outer.es_pairs, self.generator)

    def _apply_update(self) -> float:
        if not self.meta_params:
            return 0.0
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.meta_params]
        grad_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        self._check_finite("meta-gradient norm", grad_norm)
        if self.outer.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.meta_params, self.outer.grad_clip)
        factor = (cosine_factor(self.iteration, self.outer.iterations, self.outer.final_lr_fraction)
                  if self.outer.schedule == "cosine" else 1.0)
        self.optimizer.lr = self.outer.lr * factor
        self.optimizer.step()
        for p in self.meta_params:
            if not torch.isfinite(p).all():
                raise Diverged(f"meta-parameters became non-finite at outer iteration {self.iteration}")
        return grad_norm

    def _check_finite(self, what: str, value: float) -> None:
        if not math.isfinite(value):
            raise Diverged(f"{what} is {value} at outer iteration {self.iteration}")

    def evaluate(self, test: Split, val: Split, specs: Sequence[LearnerSpec], learners: int, seed: int,
                 per_step: bool = True) -> EvalResult:
        """Evaluation with its own seeded generator, so it never perturbs the meta-training random stream."""
        return evaluate(self.teacher, specs, test, val, EvalPlan(self.inner.steps, learners, self.inner.optimizer,
                                                                 per_step), devices.generator(self.device, seed))

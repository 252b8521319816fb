"""Correctness tests of the meta-learning engine (tgbench.engine / inner / nn).

Every comparison here is against an independent reference: central finite differences, ``torch.optim``,
plain ``F.linear``/``F.conv2d``, a Python loop instead of vmap, closed-form gradients of a quadratic. Models
are tiny (8x8 images, a 2-channel conv learner, a 4-d-noise generator) so the file runs in seconds.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from tgbench.data import Split
from tgbench.engine import (
    Unroll,
    accuracy_and_loss,
    backprop_meta_loss,
    es_gradient,
    hybrid_gradient,
    lesson_loss,
    population_meta_loss,
    scored_log_probs,
    train_learner,
)
from tgbench.inner import InnerHyperparameters
from tgbench.nn import Conv2d, Learner, LearnerSpec, Linear
from tgbench.problem import Problem
from tgbench.registry import methods
from tgbench.source import Lesson, SourceContext, Teacher

SHAPE = (1, 8, 8)
CLASSES = 4
PROBLEM = Problem(SHAPE, CLASSES)
TINY_LEARNER = LearnerSpec(conv_channels=(2,), fc_hidden=(4,))
TINY_GTN = dict(noise_dim=4, fc_hidden=8, channels=(4, 2))


# ------------------------------------------------------------------------------------------------ helpers
pytestmark = pytest.mark.usefixtures("single_thread")  # fixture in conftest.py


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def random_split(n: int, seed: int, shape=SHAPE, classes=CLASSES) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, *shape, generator=g).to(torch.get_default_dtype()),
                 torch.randint(classes, (n,), generator=g))


def make_ctx(steps: int, batch: int, seed: int = 0) -> SourceContext:
    return SourceContext(random_split(64, seed), steps, batch, PROBLEM)


def make_source(name: str, ctx: SourceContext, seed: int = 0, **params):
    cls = methods.get(name)
    torch.manual_seed(seed)
    return cls(cls.Params(**params), ctx)


def make_teacher(name: str, ctx: SourceContext, seed: int = 0, lr: float = 0.1, momentum: float = 0.5,
                 **params) -> Teacher:
    source = make_source(name, ctx, seed, **params)
    return Teacher(source, InnerHyperparameters(ctx.steps, lr, momentum))


def make_unroll(teacher: Teacher, ctx: SourceContext, *, spec: LearnerSpec = TINY_LEARNER, seed: int = 1,
                intermediate: bool = False, meta_batch: Split | None = None) -> Unroll:
    learner = Learner(spec, ctx.problem)
    learner.reset_parameters(torch.Generator().manual_seed(seed))
    names = [n for n, _ in learner.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in learner.parameters()]
    episode = teacher.new_episode(torch.Generator().manual_seed(seed + 100))
    if meta_batch is None:
        meta_batch = random_split(16, seed + 200)
    return Unroll(learner, names, params, episode, meta_batch, ctx.steps, intermediate_losses=intermediate)


def meta_gradients(teacher: Teacher, u: Unroll, checkpoint_every: int = 0) -> tuple[float, dict[str, torch.Tensor]]:
    teacher.zero_grad(set_to_none=True)
    loss = backprop_meta_loss(teacher, u, checkpoint_every)
    loss.backward()
    grads = {n: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
             for n, p in teacher.named_parameters() if p.requires_grad}
    return float(loss.detach()), grads


def central_difference(f, tensor: torch.Tensor, index: int, h: float) -> float:
    flat = tensor.data.view(-1)
    original = flat[index].item()
    try:
        flat[index] = original + h
        plus = f()
        flat[index] = original - h
        minus = f()
    finally:
        flat[index] = original
    return (plus - minus) / (2 * h)


# ---------------------------------------------------------------------- 1. meta-gradient vs finite differences
FD_CASES = {
    "gtn-full": ("gtn", dict(TINY_GTN), ["source.generator.fc1.weight", "source.generator.conv1.weight",
                                         "source.generator.conv2.bias", "source.codes"]),
    "gtn-none": ("gtn", dict(TINY_GTN, curriculum="none"), ["source.generator.fc2.weight",
                                                            "source.generator.conv2.weight"]),
    "gtn-learned-labels": ("gtn", dict(TINY_GTN, curriculum="all_shuffled", learn_labels=True),
                           ["source.codes", "source.label_logits"]),
    "dd": ("dataset_distillation", {}, ["source.images"]),
    "dd-learned-labels": ("dataset_distillation", dict(learn_labels=True), ["source.images", "source.label_logits"]),
}


@pytest.mark.parametrize("case", list(FD_CASES))
def test_meta_gradient_matches_central_finite_differences(float64, case):
    name, params, checked = FD_CASES[case]
    ctx = make_ctx(steps=3, batch=8)
    teacher = make_teacher(name, ctx, **params)
    u = make_unroll(teacher, ctx)
    _, grads = meta_gradients(teacher, u)
    tensors = dict(teacher.named_parameters())

    def f() -> float:
        with torch.no_grad():  # lessons only; the inner loop's own autograd runs inside train_learner
            lessons = [teacher(t, u.episode) for t in range(u.steps)]
        return float(train_learner(lessons.__getitem__, u, differentiable=False)[1].detach())

    pick = torch.Generator().manual_seed(7)
    compared, largest = 0, 0.0
    for pname in checked + ["hyper.log_lr", "hyper.logit_momentum"]:
        tensor = tensors[pname]
        assert tensor.dtype == torch.float64, f"{pname} ignores the default dtype ({tensor.dtype})"
        if pname.startswith("hyper."):
            indices = range(tensor.numel())                     # every step's lr and momentum
        else:
            indices = torch.randperm(tensor.numel(), generator=pick)[:4].tolist()
        for i in indices:
            fd = central_difference(f, tensor, i, 1e-5)
            analytic = grads[pname].view(-1)[i].item()
            assert analytic == pytest.approx(fd, rel=1e-5, abs=1e-8), f"{pname}[{i}]: {analytic} vs FD {fd}"
            compared += 1
            largest = max(largest, abs(fd))
    assert compared >= 10 and largest > 1e-3  # the comparison is not vacuous (all-zero gradients)


def test_momentum_of_first_step_has_no_effect(float64):
    # v_0 = 0, so m_0 multiplies zero: its exact meta-gradient is 0 while every later step's is not
    ctx = make_ctx(steps=3, batch=8)
    teacher = make_teacher("dataset_distillation", ctx)
    _, grads = meta_gradients(teacher, make_unroll(teacher, ctx))
    g = grads["hyper.logit_momentum"]
    assert g[0].item() == 0.0
    assert (g[1:].abs() > 1e-8).all()


# ------------------------------------------------------------------- 2. functional inner loop == torch.optim
def _fixed_batches(steps: int, batch: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = random_split(steps * batch, seed)
    return [(data.x[t * batch:(t + 1) * batch], data.y[t * batch:(t + 1) * batch]) for t in range(steps)]


@pytest.mark.parametrize("weight_norm", [False, True])
@pytest.mark.parametrize("differentiable", [False, True])
@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam"])
def test_functional_inner_loop_matches_torch_optim(float64, weight_norm, differentiable, optimizer):
    steps, lr, momentum = 5, 0.05, 0.7
    spec = LearnerSpec(conv_channels=(3,), fc_hidden=(5,), weight_norm=weight_norm)
    learner = Learner(spec, PROBLEM)
    learner.reset_parameters(torch.Generator().manual_seed(3))
    reference = copy.deepcopy(learner)
    batches = _fixed_batches(steps, 8, seed=4)
    hyper = InnerHyperparameters(steps, lr, momentum, learn_lr=False, learn_momentum=False)
    assert not list(hyper.parameters())  # frozen: buffers only

    names = [n for n, _ in learner.named_parameters()]
    assert ("convs.0.gain" in names) == weight_norm
    params = [p.detach().clone().requires_grad_() for p in learner.parameters()]
    u = Unroll(learner, names, params, None, None, steps, optimizer)

    def teacher_at(t: int) -> Lesson:
        return Lesson(*batches[t], *hyper(t))

    final, meta_loss = train_learner(teacher_at, u, differentiable=differentiable)
    assert meta_loss is None

    if optimizer == "sgd_momentum":
        opt = torch.optim.SGD(reference.parameters(), lr=lr, momentum=momentum)
    else:
        opt = torch.optim.Adam(reference.parameters(), lr=lr, betas=(momentum, 0.999), eps=1e-8)
    for x, y in batches:
        opt.zero_grad()
        lesson_loss(reference(x), y).backward()
        opt.step()
    expected = dict(reference.named_parameters())
    moved = 0.0
    for n, p, p0 in zip(names, final, learner.parameters()):
        torch.testing.assert_close(p.detach(), expected[n].detach(), rtol=1e-10, atol=1e-12, msg=n)
        moved = max(moved, float((p0 - p).detach().abs().max()))
    assert moved > 1e-3  # the learner actually trained


def test_lesson_loss_soft_labels_match_hard_labels_and_cross_entropy():
    g = torch.Generator().manual_seed(0)
    log_probs = torch.log_softmax(torch.randn(6, CLASSES, generator=g), dim=1)
    y = torch.randint(CLASSES, (6,), generator=g)
    onehot = F.one_hot(y, CLASSES).to(log_probs.dtype)
    torch.testing.assert_close(lesson_loss(log_probs, onehot), F.nll_loss(log_probs, y))
    soft = torch.softmax(torch.randn(6, CLASSES, generator=g), dim=1)
    torch.testing.assert_close(lesson_loss(log_probs, soft), F.cross_entropy(log_probs, soft))


def test_inner_hyperparameters_parametrisation():
    hyper = InnerHyperparameters(4, lr=0.03, momentum=0.8)
    lr, m = hyper(2)
    assert lr.item() == pytest.approx(0.03) and m.item() == pytest.approx(0.8)
    with torch.no_grad():
        hyper.log_lr[3] = math.log(0.5)
    assert hyper(3)[0].item() == pytest.approx(0.5)
    assert hyper(10)[0].item() == pytest.approx(0.5)  # beyond the horizon: the last step's values
    assert {n for n, _ in hyper.named_parameters()} == {"log_lr", "logit_momentum"}
    assert not list(InnerHyperparameters(4, 0.03, 0.8, learn_lr=False, learn_momentum=False).parameters())
    with pytest.raises(ValueError):
        InnerHyperparameters(4, 0.03, 1.0)


# ----------------------------------------------------------------- 3. checkpointed == plain meta-gradients
@pytest.mark.parametrize("k,intermediate", [(1, False), (2, False), (3, False), (5, False), (2, True), (3, True)])
def test_checkpointed_meta_gradient_equals_plain(float64, k, intermediate):
    ctx = make_ctx(steps=5, batch=8)
    teacher = make_teacher("gtn", ctx, **TINY_GTN)
    u = make_unroll(teacher, ctx, intermediate=intermediate)
    loss, plain = meta_gradients(teacher, u)
    loss_k, ckpt = meta_gradients(teacher, u, checkpoint_every=k)
    assert loss_k == pytest.approx(loss, rel=1e-12)
    assert plain.keys() == ckpt.keys() and len(plain) > 5
    for n in plain:
        assert plain[n].abs().sum() > 0 or n == "hyper.logit_momentum", n
        torch.testing.assert_close(ckpt[n], plain[n], rtol=1e-5, atol=1e-10, msg=n)


def test_intermediate_losses_average_every_step(float64):
    ctx = make_ctx(steps=4, batch=8)
    teacher = make_teacher("dataset_distillation", ctx)
    u = make_unroll(teacher, ctx, intermediate=True)
    per_step = []
    plain = Unroll(u.learner, u.names, u.params, u.episode, u.meta_batch, u.steps)
    for T in range(1, u.steps + 1):
        short = Unroll(u.learner, u.names, u.params, u.episode, u.meta_batch, T)
        per_step.append(float(train_learner(lambda t: teacher(t, u.episode), short, differentiable=False)[1].detach()))
    expected = sum(per_step) / len(per_step)
    assert float(backprop_meta_loss(teacher, u).detach()) == pytest.approx(expected, rel=1e-10)
    assert float(backprop_meta_loss(teacher, u, checkpoint_every=3).detach()) == pytest.approx(expected, rel=1e-10)
    assert float(backprop_meta_loss(teacher, plain).detach()) == pytest.approx(per_step[-1], rel=1e-10)


# ----------------------------------------------------------------------------------------- 4. weight norm
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_weight_norm_layer_computes_plain_function_at_init(float64, kind):
    torch.manual_seed(0)
    if kind == "linear":
        wn, plain, x = Linear(6, 5, weight_norm=True), Linear(6, 5, weight_norm=False), torch.randn(7, 6)
    else:
        wn, plain, x = Conv2d(3, 4, 3, weight_norm=True), Conv2d(3, 4, 3, weight_norm=False), torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        plain.weight.copy_(wn.weight)
        wn.bias.normal_()
        plain.bias.copy_(wn.bias)
    assert {n for n, _ in wn.named_parameters()} == {"weight", "gain", "bias"}
    assert {n for n, _ in plain.named_parameters()} == {"weight", "bias"}
    reference = (F.linear(x, wn.weight, wn.bias) if kind == "linear"
                 else F.conv2d(x, wn.weight, wn.bias, padding=1))
    torch.testing.assert_close(wn(x), reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(plain(x), reference, rtol=1e-12, atol=1e-12)
    # away from init the WN layer is g * V / ||V|| per output unit, not V
    with torch.no_grad():
        wn.gain.mul_(torch.arange(1.0, 1.0 + wn.gain.numel()))
        wn.weight.mul_(3.0)
    v = wn.weight
    w = v * (wn.gain / v.flatten(1).norm(dim=1)).view(-1, *([1] * (v.dim() - 1)))
    expected = F.linear(x, w, wn.bias) if kind == "linear" else F.conv2d(x, w, wn.bias, padding=1)
    torch.testing.assert_close(wn(x), expected, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(wn(x), reference)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_weight_norm_gradients_gradcheck(float64, kind):
    torch.manual_seed(1)
    layer = Linear(4, 3) if kind == "linear" else Conv2d(2, 3, 3)
    x = torch.randn(5, 4) if kind == "linear" else torch.randn(2, 2, 5, 5)
    names = [n for n, _ in layer.named_parameters()]

    def f(*params):
        return functional_call(layer, dict(zip(names, params)), (x,))

    inputs = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)
    assert torch.autograd.gradgradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)  # meta-gradients need it


@pytest.mark.parametrize("weight_norm", [True, False])
def test_vmap_over_stacked_learner_params_matches_loop(float64, weight_norm):
    learner = Learner(LearnerSpec(conv_channels=(3,), fc_hidden=(5,), weight_norm=weight_norm), PROBLEM)
    g = torch.Generator().manual_seed(5)
    inits = []
    for _ in range(4):
        learner.reset_parameters(g)
        inits.append({n: p.detach().clone() for n, p in learner.named_parameters()})
    stacked = {n: torch.stack([i[n] for i in inits]) for n in inits[0]}
    x = random_split(6, 9).x
    batched = vmap(lambda p: functional_call(learner, p, (x,)))(stacked)
    looped = torch.stack([functional_call(learner, p, (x,)) for p in inits])
    torch.testing.assert_close(batched, looped, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(looped[0], looped[1])  # the inits really differ


def test_learner_weight_norm_matches_plain_learner_at_init(float64):
    x = random_split(6, 2).x
    out = {}
    for wn in (True, False):
        learner = Learner(LearnerSpec(conv_channels=(3, 4), fc_hidden=(5,), weight_norm=wn), PROBLEM)
        learner.reset_parameters(torch.Generator().manual_seed(11))
        out[wn] = learner(x)
    torch.testing.assert_close(out[True], out[False], rtol=1e-10, atol=1e-12)


# -------------------------------------------------------------------------------------- 5. ES and hybrid
def _quadratic(dim: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    a = m @ m.T / dim + torch.eye(dim, dtype=torch.float64)
    b = torch.randn(dim, generator=g, dtype=torch.float64)
    theta = [torch.randn(3, generator=g, dtype=torch.float64), torch.randn(dim - 3, generator=g, dtype=torch.float64)]

    def loss(point) -> float:
        v = torch.cat(point)
        return float(0.5 * v @ a @ v + b @ v)

    true = a @ torch.cat(theta) + b
    return a, b, theta, loss, true


def _z_critical(alpha: float, tests: int) -> float:
    """Two-sided Bonferroni-corrected standard-normal critical value (no scipy needed)."""
    p = 1 - alpha / (2 * tests)
    return math.sqrt(2) * torch.erfinv(torch.tensor(2 * p - 1, dtype=torch.float64)).item()


def test_es_gradient_is_unbiased_on_a_quadratic():
    _, _, theta, loss, true = _quadratic()
    gen = torch.Generator().manual_seed(123)
    estimates = torch.stack([torch.cat(es_gradient(loss, theta, 0.1, 2, gen).grads) for _ in range(3000)])
    mean, se = estimates.mean(0), estimates.std(0) / math.sqrt(len(estimates))
    z = _z_critical(0.01, true.numel())  # 99 % simultaneous CI per coordinate
    assert ((mean - true).abs() <= z * se).all(), (mean, true, se)
    # and the CI is tight enough to catch a wrong normalisation (e.g. a missing factor 2 or sigma)
    assert (z * se < 0.25 * true.abs().max()).all()


def test_es_gradient_shapes_loss_and_variance():
    _, _, theta, loss, _ = _quadratic()
    est = es_gradient(loss, theta, 0.1, 4, torch.Generator().manual_seed(0))
    assert [g.shape for g in est.grads] == [p.shape for p in theta]
    assert est.loss == pytest.approx(loss(theta), abs=0.1)  # mean over theta +/- e: within O(sigma^2)
    assert est.variances["es"] > 0
    # seeded: reproducible
    again = es_gradient(loss, theta, 0.1, 4, torch.Generator().manual_seed(0))
    assert all(torch.equal(p, q) for p, q in zip(est.grads, again.grads))


def _noisy_backprop(loss, true_grad_fn, noise: float, seed: int):
    g = torch.Generator().manual_seed(seed)

    def loss_and_grad(point):
        grad = true_grad_fn(point)
        return loss(point), [p + noise * torch.randn(p.shape, generator=g, dtype=p.dtype)
                             for p in torch.split(grad, [q.numel() for q in point])]

    return loss_and_grad


@pytest.mark.parametrize("noise", [1.0, 10.0, 30.0])  # backprop much better than / comparable to / worse than ES
def test_hybrid_gradient_variance_not_larger_than_either_estimator(noise):
    a, b, theta, loss, true = _quadratic()

    def true_grad(point):
        return a @ torch.cat(point) + b

    pairs, reps, sigma = 8, 400, 0.1
    hybrid, es, rp = [], [], []
    lag = _noisy_backprop(loss, true_grad, noise, seed=99)
    for r in range(reps):
        h = hybrid_gradient(lag, theta, sigma, pairs, torch.Generator().manual_seed(r))
        e = es_gradient(loss, theta, sigma, pairs, torch.Generator().manual_seed(r))  # the same pairs
        hybrid.append(torch.cat(h.grads))
        es.append(torch.cat(e.grads))
        # the backprop estimator alone: mean of the per-pair RP samples, recovered from the combination
        w = h.variances["w_backprop"]
        assert 0.0 <= w <= 1.0
        if w > 0:
            rp.append((torch.cat(h.grads) - (1 - w) * torch.cat(e.grads)) / w)
    var = {k: float(torch.stack(v).var(0).sum()) for k, v in (("hybrid", hybrid), ("es", es), ("rp", rp))}
    assert len(rp) == reps
    assert var["hybrid"] <= 1.02 * min(var["es"], var["rp"]), var
    if 0.1 < var["rp"] / var["es"] < 10:  # comparable estimators: the combination is clearly better than both
        assert var["hybrid"] < 0.9 * min(var["es"], var["rp"]), var
    # and it is still an (essentially) unbiased estimate of the true gradient
    assert (torch.stack(hybrid).mean(0) - true).norm() < 4 * math.sqrt(var["hybrid"] / reps)


def test_hybrid_gradient_uses_es_and_backprop_per_pair_means():
    # direct check of the documented formula on recorded per-pair samples
    a, b, theta, loss, _ = _quadratic()
    lag = _noisy_backprop(loss, lambda p: a @ torch.cat(p) + b, 2.0, seed=5)
    recorded = []

    def recording(point):
        out = lag(point)
        recorded.append(out)
        return out

    sigma, pairs = 0.1, 6
    h = hybrid_gradient(recording, theta, sigma, pairs, torch.Generator().manual_seed(1))
    e = es_gradient(loss, theta, sigma, pairs, torch.Generator().manual_seed(1))
    rp_samples = torch.stack([torch.cat([(x + y) / 2 for x, y in zip(recorded[2 * i][1], recorded[2 * i + 1][1])])
                              for i in range(pairs)])
    es_var = e.variances["es"]
    rp_var = float(((rp_samples - rp_samples.mean(0)) ** 2).sum() / pairs)
    assert h.variances["es"] == pytest.approx(es_var)
    assert h.variances["backprop"] == pytest.approx(rp_var)
    expected = (rp_samples.mean(0) * es_var + torch.cat(e.grads) * rp_var) / (es_var + rp_var)
    torch.testing.assert_close(torch.cat(h.grads), expected)


def test_hybrid_gradient_is_exact_when_backprop_is_noiseless():
    a, b, theta, loss, true = _quadratic()
    h = hybrid_gradient(_noisy_backprop(loss, lambda p: a @ torch.cat(p) + b, 0.0, seed=0), theta, 0.1, 4,
                        torch.Generator().manual_seed(0))
    assert h.variances["w_backprop"] == pytest.approx(1.0)
    torch.testing.assert_close(torch.cat(h.grads), true, rtol=1e-9, atol=1e-9)


def test_hybrid_gradient_falls_back_on_es_when_backprop_is_not_finite():
    _, _, theta, loss, _ = _quadratic()

    def broken(point):
        return loss(point), [torch.full_like(p, float("nan")) for p in point]

    h = hybrid_gradient(broken, theta, 0.1, 4, torch.Generator().manual_seed(0))
    e = es_gradient(loss, theta, 0.1, 4, torch.Generator().manual_seed(0))
    assert h.variances["w_backprop"] == 0.0
    torch.testing.assert_close(torch.cat(h.grads), torch.cat(e.grads))


# ------------------------------------------------------------------------------------ 7. vmap population
@pytest.mark.parametrize("intermediate", [False, True])
def test_population_meta_gradient_is_mean_of_individual_gradients(float64, intermediate):
    ctx = make_ctx(steps=3, batch=8)
    teacher = make_teacher("gtn", ctx, **TINY_GTN)
    u = make_unroll(teacher, ctx, intermediate=intermediate)
    g = torch.Generator().manual_seed(21)
    inits = []
    for _ in range(3):
        u.learner.reset_parameters(g)
        inits.append([p.detach().clone().requires_grad_() for p in u.learner.parameters()])
    stacked = {n: torch.stack([init[i] for init in inits]) for i, n in enumerate(u.names)}

    teacher.zero_grad(set_to_none=True)
    pop_loss = population_meta_loss(teacher, u, stacked)
    pop_loss.backward()
    pop = {n: p.grad.detach().clone() for n, p in teacher.named_parameters()}

    losses, individual = [], []
    for init in inits:
        member = Unroll(u.learner, u.names, init, u.episode, u.meta_batch, u.steps, u.optimizer, u.intermediate_losses)
        loss, grads = meta_gradients(teacher, member)
        losses.append(loss)
        individual.append(grads)
    assert float(pop_loss.detach()) == pytest.approx(sum(losses) / 3, rel=1e-10)
    assert len(set(losses)) == 3  # distinct inits, distinct losses
    for n in pop:
        mean = torch.stack([grads[n] for grads in individual]).mean(0)
        torch.testing.assert_close(pop[n], mean, rtol=1e-8, atol=1e-12, msg=n)


# ------------------------------------------------------------------- BN statistics: the scoring protocol
def _trained_learner(bn_statistics: str):
    """A tiny learner trained 3 steps on a real-data teacher; returns it, its params and the last lesson."""
    ctx = make_ctx(steps=3, batch=8)
    teacher = make_teacher("real", ctx)
    spec = LearnerSpec(conv_channels=(2,), fc_hidden=(4,), bn_statistics=bn_statistics)
    u = make_unroll(teacher, ctx, spec=spec)
    lessons = [teacher(t, u.episode) for t in range(u.steps)]
    final, _ = train_learner(lessons.__getitem__, u, differentiable=False)
    return u, final, lessons[-1].x


def _predictions(u: Unroll, params, test: Split, reference, chunk: int, order: torch.Tensor) -> torch.Tensor:
    """Per-example log-probs of ``test`` scored in the given order and chunk size, returned in the original order."""
    x = test.x[order]
    with torch.no_grad():
        out = torch.cat([scored_log_probs(u.learner, u.names, params, x[i:i + chunk], reference)
                         for i in range(0, len(x), chunk)])
    return out[torch.argsort(order)]


@pytest.mark.parametrize("bn_statistics", ["lesson", "scored_batch"])
def test_test_predictions_do_not_depend_on_which_examples_share_a_batch(float64, bn_statistics):
    u, params, reference = _trained_learner(bn_statistics)
    test = random_split(2000, seed=9)
    identity, shuffled = torch.arange(len(test)), torch.randperm(len(test), generator=torch.Generator().manual_seed(1))
    baseline = _predictions(u, params, test, reference, 2000, identity)
    variants = [_predictions(u, params, test, reference, chunk, order)
                for chunk in (1, 7, 2000) for order in (identity, shuffled)]
    same = [torch.allclose(v, baseline, rtol=0, atol=1e-10) for v in variants]
    if bn_statistics == "lesson":   # the default protocol: every chunking and order gives the same predictions
        assert all(same)
        for chunk in (1, 7):
            acc, loss = accuracy_and_loss(u.learner, u.names, params, test, reference, chunk=chunk)
            acc_full, loss_full = accuracy_and_loss(u.learner, u.names, params, test, reference)
            assert acc == acc_full and loss == pytest.approx(loss_full, rel=1e-10)
    else:                           # the named transductive option: they change with the batch
        assert not all(same)


def test_lesson_statistics_are_the_last_lessons_means_under_the_final_weights(float64):
    """Against a plain re-computation: conv -> maxpool -> subtract the *lesson's* channel mean -> act -> FC ..."""
    u, params, lesson_x = _trained_learner("lesson")
    p = dict(zip(u.names, params))
    x = random_split(5, seed=3).x

    def plain(inp: torch.Tensor, mean_from: torch.Tensor) -> torch.Tensor:
        def conv(h):
            w = p["convs.0.weight"]
            w = w * (p["convs.0.gain"].view(-1, 1, 1, 1) / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
            return F.max_pool2d(F.conv2d(h, w, padding=1), 3, 2, 1)

        def fc(h, name):
            w = p[f"{name}.weight"]
            w = w * (p[f"{name}.gain"].view(-1, 1) / w.norm(dim=1, keepdim=True))
            return F.linear(h, w, p.get(f"{name}.bias"))

        h, r = conv(inp), conv(mean_from)
        m = r.mean(dim=(0, 2, 3), keepdim=True)
        h, r = F.leaky_relu(h - m, 0.1).flatten(1), F.leaky_relu(r - m, 0.1).flatten(1)
        h, r = fc(h, "fcs.0"), fc(r, "fcs.0")
        h = F.leaky_relu(h - r.mean(0, keepdim=True), 0.1)
        return F.log_softmax(fc(h, "classifier"), dim=1)

    with torch.no_grad():
        got = scored_log_probs(u.learner, u.names, params, x, lesson_x)
        torch.testing.assert_close(got, plain(x, lesson_x), rtol=1e-10, atol=1e-12)
        # and not the scored batch's own statistics
        assert not torch.allclose(got, plain(x, x), atol=1e-6)


def test_outer_adam_follows_torch_optim_adam_step_for_step():
    """The meta-parameters' optimiser is torch.optim.Adam's update written out: the same path, to the last bit
    on this CPU, over a changing learning rate (the cosine schedule sets it every step)."""
    from tgbench.engine import OuterAdam

    g = torch.Generator().manual_seed(0)
    ours = [torch.randn(5, 3, generator=g).requires_grad_(), torch.randn(4, generator=g).requires_grad_()]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    mine, reference = OuterAdam(ours, lr=0.02, betas=(0.9, 0.99)), torch.optim.Adam(theirs, lr=0.02, betas=(0.9, 0.99))
    for step in range(25):
        grads = [torch.randn(p.shape, generator=g) * (step + 1) for p in ours]
        for p, q, grad in zip(ours, theirs, grads):
            p.grad, q.grad = grad.clone(), grad.clone()
        mine.lr = reference.param_groups[0]["lr"] = 0.02 * (1 - step / 30)
        mine.step()
        reference.step()
        for p, q in zip(ours, theirs):
            assert torch.equal(p, q), f"step {step}: max diff {(p - q).abs().max()}"

"""The shared source battery, for any registered method — built-in, installed or a ``--methods-dir`` file.

    tgbench check-method herding --methods-dir plugins/     # every check, one line each; exit 1 if one fails

or from a plug-in's own tests::

    from tgbench.testing import battery
    assert all(check.passed for check in battery("herding")), battery("herding")

Each check builds the source with its own ``example_params`` on a small random context (8×8 images, 10 classes,
T=3, B=10) and holds it to the contract in ``tgbench/source.py``: lesson shapes, dtypes and label ranges; a
finite, non-zero meta-gradient for every meta-parameter (and one exactly when ``learns_data`` says so);
bit-identical results under the same seeds; lessons that follow parameters substituted by ``functional_call``
(what checkpointing and ES do); one meta-step of every estimator the class claims (``supports_es``); and no
tensor created off the run's device (``tgbench.device.strict``). ``tests/test_sources.py`` runs it on every
registered method.
"""
from __future__ import annotations

import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.func import functional_call

from tgbench import device as devices
from tgbench.suite.schema import InnerLoop, LearnerSpace, OuterLoop
from tgbench.data import Split
from tgbench.engine import MetaTrainer, Unroll, backprop_meta_loss, detached_params
from tgbench.inner import InnerHyperparameters
from tgbench.nn import Learner, LearnerSpec
from tgbench.problem import Problem
from tgbench.registry import methods
from tgbench.source import Source, SourceContext, Teacher

SHAPE, CLASSES, STEPS, BATCH = (1, 8, 8), 10, 3, 10
PROBLEM = Problem(SHAPE, CLASSES)
TINY_LEARNER = LearnerSpec(conv_channels=(2,), fc_hidden=(4,))


@dataclass
class Check:
    name: str
    passed: bool
    message: str = ""

    def __str__(self) -> str:
        return f"{'ok  ' if self.passed else 'FAIL'} {self.name}{': ' + self.message if self.message else ''}"


def context(steps: int = STEPS, batch: int = BATCH, seed: int = 0) -> SourceContext:
    """A small random training split with every class present (sources that pick examples per label can)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.arange(CLASSES), torch.randint(CLASSES, (100 - CLASSES,), generator=g)])
    return SourceContext(Split(torch.randn(100, *SHAPE, generator=g), y), steps, batch, PROBLEM)


_EXAMPLE_FILES = Path(tempfile.gettempdir()) / "tgbench-battery"


def build(name: str, ctx: SourceContext, seed: int = 0, **params) -> Source:
    """Method ``name`` on ``ctx`` with its ``example_params``, overridden by ``params``; torch seeded first."""
    cls = methods.get(name)
    _EXAMPLE_FILES.mkdir(exist_ok=True)
    torch.manual_seed(seed)
    with devices.constructing_on(ctx.train.x.device):
        return cls(cls.Params(**{**cls.example_params(ctx, _EXAMPLE_FILES), **params}), ctx)


def teacher_for(source: Source, ctx: SourceContext) -> Teacher:
    with devices.constructing_on(ctx.train.x.device):
        return Teacher(source, InnerHyperparameters(ctx.steps, 0.1, 0.5))


def unroll(teacher: Teacher, ctx: SourceContext, seed: int = 1) -> Unroll:
    learner = Learner(TINY_LEARNER, ctx.problem)
    learner.reset_parameters(torch.Generator().manual_seed(seed))
    names, params = detached_params(learner)
    episode = teacher.new_episode(torch.Generator().manual_seed(seed + 100))
    meta_batch = context(seed=seed + 200).train.head(20)
    return Unroll(learner, names, params, episode, meta_batch, ctx.steps)


def meta_gradients(teacher: Teacher, u: Unroll) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    teacher.zero_grad(set_to_none=True)
    loss = backprop_meta_loss(teacher, u)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in teacher.named_parameters() if p.requires_grad}


# ------------------------------------------------------------------------------------------ the checks
def check_lessons(name: str, **params) -> None:
    ctx = context()
    source = build(name, ctx, **params)
    for episode_seed in (0, 1):
        episode = source.new_episode(torch.Generator().manual_seed(episode_seed))
        for t in range(ctx.steps):
            x, y = source(t, episode)
            assert x.shape == (ctx.batch_size, *ctx.image_shape), \
                f"step {t}: x has shape {tuple(x.shape)}, expected {(ctx.batch_size, *ctx.image_shape)}"
            assert x.dtype == torch.get_default_dtype(), f"x dtype {x.dtype}"
            assert torch.isfinite(x).all(), f"step {t}: x has non-finite values"
            assert y.shape[0] == x.shape[0], "y and x disagree on the batch size"
            if params.get("learn_labels"):
                assert y.dim() == 2, "learn_labels must produce soft labels"
            if y.dim() == 1:
                assert y.dtype == torch.int64, f"integer labels must be int64, got {y.dtype}"
                assert 0 <= int(y.min()) and int(y.max()) < ctx.num_classes, "labels outside the classes"
            else:
                assert y.shape[1] == ctx.num_classes and (y >= 0).all(), "soft labels: (B, classes) probabilities"
                torch.testing.assert_close(y.sum(1), torch.ones(y.shape[0], dtype=y.dtype))
    learned = [p for p in source.parameters() if p.requires_grad]
    assert bool(learned) == methods.get(name).learns_data, (
        f"learns_data = {methods.get(name).learns_data}, but the source has {len(learned)} learned parameters")


def check_meta_gradient(name: str, **params) -> None:
    cls = methods.get(name)
    ctx = context()
    teacher = teacher_for(build(name, ctx, **params), ctx)
    loss, grads = meta_gradients(teacher, unroll(teacher, ctx))
    assert torch.isfinite(loss), f"meta-loss {float(loss)}"
    assert bool([n for n in grads if n.startswith("source.")]) == cls.learns_data
    assert {"hyper.log_lr", "hyper.logit_momentum"} <= grads.keys()
    if params.get("learn_labels"):
        assert "source.label_logits" in grads, "learn_labels but no learned label_logits"
    for n, g in grads.items():
        assert g is not None, f"{n} got no gradient (disconnected from the meta-loss)"
        assert torch.isfinite(g).all(), f"{n}: non-finite meta-gradient"
        assert g.abs().sum() > 0, f"{n} has an all-zero meta-gradient"
    assert (grads["hyper.log_lr"] != 0).all(), "some step's learning rate does not reach the meta-loss"


def check_determinism(name: str, **params) -> None:
    ctx = context()
    runs = []
    for _ in range(2):
        teacher = teacher_for(build(name, ctx, seed=5, **params), ctx)
        runs.append(meta_gradients(teacher, unroll(teacher, ctx, seed=3)))
    (loss_a, grads_a), (loss_b, grads_b) = runs
    assert torch.equal(loss_a, loss_b), "the same seeds gave different meta-losses"
    for n in grads_a:
        assert torch.equal(grads_a[n], grads_b[n]), f"the same seeds gave different meta-gradients for {n}"


def check_substitution(name: str, **params) -> None:
    if not methods.get(name).learns_data:
        return
    ctx = context(steps=2)
    teacher = teacher_for(build(name, ctx, **params), ctx)
    episode = teacher.new_episode(torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    g = torch.Generator().manual_seed(1)
    perturbed = {n: p.detach() + 0.5 * torch.randn(p.shape, generator=g)
                 for n, p in teacher.named_parameters() if n.startswith("source.")}
    for t in range(ctx.steps):
        plain, swapped = teacher(t, episode), functional_call(teacher, perturbed, (t, episode))
        assert not torch.allclose(plain.x, swapped.x), "substituted parameters did not change the lessons"
    for n, p in teacher.named_parameters():
        assert torch.equal(p, before[n]), f"functional_call changed the module's own {n}"


def check_meta_step(name: str, **params) -> None:
    cls = methods.get(name)
    estimators = ["backprop"] + (["es", "hybrid"] if cls.supports_es and cls.learns_data else [])
    for estimator in estimators:
        ctx = context()
        teacher = teacher_for(build(name, ctx, **params), ctx)
        trainer = MetaTrainer(teacher, LearnerSpace(conv_channels=[[2]], fc_hidden=[[4]]), ctx.train,
                              InnerLoop(steps=ctx.steps, batch_size=ctx.batch_size),
                              OuterLoop(iterations=2, meta_batch_size=8, meta_gradient=estimator, es_pairs=2))
        stats = trainer.step()
        assert torch.isfinite(torch.tensor(stats.meta_loss)), f"{estimator}: meta-loss {stats.meta_loss}"


def check_devices(name: str, **params) -> None:
    """Nothing created off the run's device: lessons, a meta-step and an evaluation under ``device.strict``."""
    cpu = torch.device("cpu")
    ctx = context()
    with devices.strict(cpu):
        teacher = teacher_for(build(name, ctx, **params), ctx)
        trainer = MetaTrainer(teacher, LearnerSpace(conv_channels=[[2]], fc_hidden=[[4]]), ctx.train,
                              InnerLoop(steps=ctx.steps, batch_size=ctx.batch_size),
                              OuterLoop(iterations=1, meta_batch_size=8))
        trainer.step()
        trainer.evaluate(ctx.train.head(20), ctx.train.head(20), [TINY_LEARNER], learners=1, seed=0)


CHECKS: dict[str, Callable[..., None]] = {
    "lessons": check_lessons, "meta-gradient": check_meta_gradient, "determinism": check_determinism,
    "substituted parameters": check_substitution, "meta-step": check_meta_step, "devices": check_devices,
}


def battery(name: str, **params) -> list[Check]:
    """Every check on method ``name`` (with ``params`` over its ``example_params``); one ``Check`` each."""
    out = []
    for check_name, check in CHECKS.items():
        try:
            check(name, **params)
            out.append(Check(check_name, True))
        except Exception as exc:  # a failed assertion, or the method raising: either way the check failed
            frames = traceback.extract_tb(exc.__traceback__)
            # the innermost frame of the method or of tgbench, not of torch or of the audit reporting it
            where = next((f for f in reversed(frames) if "/torch/" not in f.filename
                          and not f.filename.endswith(("device.py", "testing.py"))), frames[-1])
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            out.append(Check(check_name, False, f"{text} ({Path(where.filename).name}:{where.lineno})"))
    return out

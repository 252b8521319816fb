"""The learner's max-pool under autograd (``tgbench.nn.max_pool``, issue 24) gives the numbers of the NCHW pool it
replaced bit for bit: forward values, the meta-gradient through a double-backward unroll (plain, with fresh
intermediate losses, residual learners, a vmap population) and a learner's weights after training. Compared at
float32, where any change of kernel or summation order would show in the low bits."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tgbench.engine import backprop_meta_loss, population_meta_loss, train_learner
from tgbench.nn import LearnerSpec

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a top-level folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks.reference import nchw_pooling  # noqa: E402
from tests.test_engine import TINY_GTN, make_ctx, make_teacher, make_unroll, random_split  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")  # fixture in conftest.py

SPECS = {"plain": LearnerSpec(conv_channels=(3, 5), fc_hidden=(4,)),
         "residual": LearnerSpec(conv_channels=(3,), fc_hidden=(4,), residual=True, bn_shift=True)}


def _meta_gradient(teacher, u) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    teacher.zero_grad(set_to_none=True)
    loss = backprop_meta_loss(teacher, u)
    loss.backward()
    weights = train_learner(lambda t: teacher(t, u.episode), u, differentiable=False)[0]
    return (loss.detach(), [p.grad.clone() for p in teacher.parameters() if p.grad is not None],
            [w.detach() for w in weights])


@pytest.mark.parametrize("spec", list(SPECS))
@pytest.mark.parametrize("intermediate", [False, True])
def test_meta_gradient_and_weights_equal_the_nchw_pools_bit_for_bit(spec, intermediate):
    ctx = make_ctx(steps=4, batch=16)
    teacher = make_teacher("gtn", ctx, **TINY_GTN)
    u = make_unroll(teacher, ctx, spec=SPECS[spec], intermediate=intermediate)
    if intermediate:  # a fresh real batch per intermediate loss, as the official configuration scores them
        u.intermediate_batches = [random_split(16, 300 + t) for t in range(ctx.steps - 1)]
    new = _meta_gradient(teacher, u)
    with nchw_pooling():
        old = _meta_gradient(teacher, u)
    assert torch.equal(new[0], old[0])
    assert len(new[1]) == len(old[1]) > 0
    for got, want in zip(new[1] + new[2], old[1] + old[2]):
        assert torch.equal(got, want)


def test_population_meta_gradient_equals_the_nchw_pools_bit_for_bit():
    ctx = make_ctx(steps=3, batch=8)
    teacher = make_teacher("gtn", ctx, **TINY_GTN)
    u = make_unroll(teacher, ctx, spec=SPECS["plain"])
    g = torch.Generator().manual_seed(3)
    inits = []
    for _ in range(3):
        u.learner.reset_parameters(g)
        inits.append([p.detach().clone() for p in u.learner.parameters()])
    stacked = {n: torch.stack([init[i] for init in inits]) for i, n in enumerate(u.names)}

    def run():
        teacher.zero_grad(set_to_none=True)
        population_meta_loss(teacher, u, stacked).backward()
        return [p.grad.clone() for p in teacher.parameters() if p.grad is not None]

    new = run()
    with nchw_pooling():
        old = run()
    assert all(torch.equal(a, b) for a, b in zip(new, old))

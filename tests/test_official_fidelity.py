"""tgbench's official configuration (the `paper` profile of the fewstep suites) against a plain-PyTorch reference of
the official GTN learner, inner loop and meta-loss (benchmarks/reference_official.py).

At tiny sizes in float64, with identical initial weights, curriculum codes, lessons and real batches, the meta-step
tgbench runs (``MetaTrainer.step`` building its ``Unroll``, through each backprop estimator: plain, checkpointed,
vmap population) and the reference agree to 1e-6 on the learner's weights after T steps and on the meta-gradients
of the generator's weights, the curriculum codes, the learned lr and the learned momentum. Then each official
piece is flipped in the reference alone (no intermediate losses, one batch for every loss, their mean, no BN
shift, the logit momentum): every flip must disagree with tgbench by far more than that tolerance, so each piece is
shown to matter at these sizes and a tgbench that lost one would fail the agreement test.

The tgbench side reads its settings from mnist_fewstep's `paper` profile, so the test follows that profile.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import tgbench.engine as engine
from benchmarks.reference_official import OfficialLearner, OfficialSGD, official_meta_loss
from tgbench.suite.loading import load_suite
from tgbench.suite.schema import InnerLoop, LearnerSpace, OuterLoop
from tgbench.data import Split
from tgbench.inner import InnerHyperparameters
from tgbench.problem import Problem
from tgbench.registry import methods
from tgbench.source import SourceContext, Teacher

SUITE = Path(__file__).resolve().parents[1] / "tgbench" / "suites" / "mnist_fewstep.yaml"
SHAPE, CLASSES = (1, 8, 8), 4
WIDTHS = (3, 4, 5)             # conv1, conv2, fc (the official learner's 64, 128, 256)
STEPS, BATCH, META_BATCH = 4, 8, 6
TINY_GTN = dict(curriculum="full", weight_norm=True, noise_dim=4, fc_hidden=8, channels=(4, 2))
AGREE, DISAGREE = 1e-6, 1e-3   # relative discrepancy: the test's tolerance, and what a flipped piece must exceed
# tgbench learner parameter -> the reference's (the official module's layers, in its order)
NAMES = {"convs.0.weight": "conv1_v", "convs.0.gain": "conv1_g", "convs.1.weight": "conv2_v",
         "convs.1.gain": "conv2_g", "fcs.0.weight": "fc1_v", "fcs.0.gain": "fc1_g", "classifier.weight": "fc2_v",
         "classifier.gain": "fc2_g", "classifier.bias": "fc2_b", "bn_shifts.0": "bn1_bias",
         "bn_shifts.1": "bn2_bias", "bn_shifts.2": "bn3_bias"}
OFFICIAL = dict(intermediate_losses=True, fresh_batches=True, reduction="sum", bn_shift=True, momentum_form="exp")
FLIPS = {"intermediate_losses": False, "fresh_batches": False, "reduction": "mean", "bn_shift": False,
         "momentum_form": "logit"}

pytestmark = pytest.mark.usefixtures("single_thread")  # fixture in conftest.py


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def paper_settings() -> tuple[LearnerSpace, InnerLoop, OuterLoop]:
    """The paper profile's learner / inner / outer settings at the test's sizes."""
    paper = load_suite(SUITE, "paper")
    space = LearnerSpace(**{**paper.learner.model_dump(), "conv_channels": [list(WIDTHS[:2])],
                            "fc_hidden": [[WIDTHS[2]]]})
    inner = InnerLoop(**{**paper.inner.model_dump(), "steps": STEPS, "batch_size": BATCH})
    outer = OuterLoop(**{**paper.outer.model_dump(), "meta_batch_size": META_BATCH, "iterations": 1})
    return space, inner, outer


def real_split(n: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, *SHAPE, generator=g), torch.randint(CLASSES, (n,), generator=g))


@dataclass
class TgbenchStep:
    teacher: Teacher                       # restored to its values before the step
    unroll: engine.Unroll                  # what MetaTrainer.step built
    inits: list[list[torch.Tensor]]        # the learner inits the estimator used (P of them for a population)
    grads: dict[str, torch.Tensor]         # the meta-gradient tgbench computed (teacher parameter -> grad)
    space: LearnerSpace
    inner: InnerLoop


def tgbench_step(monkeypatch, *, checkpoint_every: int = 0, population: int = 1) -> TgbenchStep:
    """One ``MetaTrainer.step()`` of the paper configuration at tiny sizes, with the Unroll it built captured."""
    space, inner, outer = paper_settings()
    outer = OuterLoop(**{**outer.model_dump(), "checkpoint_every": checkpoint_every, "population": population})
    train = real_split(64, seed=0)
    ctx = SourceContext(train, STEPS, BATCH, Problem(SHAPE, CLASSES))
    torch.manual_seed(0)
    cls = methods.get("gtn")
    teacher = Teacher(cls(cls.Params(**TINY_GTN), ctx),
                      InnerHyperparameters(STEPS, inner.lr, inner.momentum, inner.learn_lr, inner.learn_momentum,
                                           inner.momentum_form))
    trainer = engine.MetaTrainer(teacher, space, train, inner, outer, seed=3)
    captured = {}

    def backprop(t, u, k=0):
        captured["unroll"], captured["inits"] = u, [list(u.params)]
        return original_backprop(t, u, k)

    def population_loss(t, u, stacked):
        captured["unroll"] = u
        captured["inits"] = [[stacked[n][i] for n in u.names] for i in range(population)]
        return original_population(t, u, stacked)

    original_backprop, original_population = engine.backprop_meta_loss, engine.population_meta_loss
    monkeypatch.setattr(engine, "backprop_meta_loss", backprop)
    monkeypatch.setattr(engine, "population_meta_loss", population_loss)
    before = copy.deepcopy(teacher.state_dict())
    trainer.step()
    grads = {n: p.grad.detach().clone() for n, p in teacher.named_parameters() if p.grad is not None}
    teacher.load_state_dict(before)  # (the step's Adam update moved them: the reference starts where tgbench did)
    return TgbenchStep(teacher, captured["unroll"], captured["inits"], grads, space, inner)


def reference_run(step: TgbenchStep, **pieces) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The reference on tgbench's inits, lessons and batches: (meta-gradients keyed by tgbench's teacher
    parameter names, learner weights after T steps of the first init keyed by tgbench's learner names)."""
    pieces = {**OFFICIAL, **pieces}
    u, teacher = step.unroll, step.teacher
    learner = OfficialLearner(SHAPE[0], SHAPE[1], WIDTHS, CLASSES, bn_shift=pieces["bn_shift"])
    optimizer = OfficialSGD(STEPS, step.inner.lr, step.inner.momentum, pieces["momentum_form"])
    batches = [(b.x, b.y) for b in (u.intermediate_batches or [])] + [(u.meta_batch.x, u.meta_batch.y)]
    assert len(batches) == STEPS, "the paper profile draws a fresh batch for every loss"
    teacher.zero_grad(set_to_none=True)
    losses, finals = [], []
    for init in step.inits:
        weights = {NAMES[n]: p.detach().clone().requires_grad_() for n, p in zip(u.names, init)
                   if pieces["bn_shift"] or not n.startswith("bn_shifts")}
        loss, final = official_meta_loss(
            learner, optimizer, weights, lambda it: teacher.source(it, u.episode), batches,
            intermediate_losses=pieces["intermediate_losses"], fresh_batches=pieces["fresh_batches"],
            reduction=pieces["reduction"])
        losses.append(loss)
        finals.append(final)
    torch.stack(losses).mean().backward()
    grads = {f"source.{n}": p.grad for n, p in teacher.source.named_parameters() if p.grad is not None}
    momentum_name = dict(teacher.hyper.named_parameters()).keys() - {"log_lr"}
    grads[f"hyper.{momentum_name.pop()}"] = optimizer.stored_momentum.grad  # (of whichever form it stores)
    grads["hyper.log_lr"] = optimizer.log_lr.grad
    back = {v: k for k, v in NAMES.items()}
    return grads, {back[n]: w.detach() for n, w in finals[0].items()}


def tgbench_final_weights(step: TgbenchStep) -> dict[str, torch.Tensor]:
    u = step.unroll
    params, _ = engine.train_learner(lambda t: step.teacher(t, u.episode), u, differentiable=False)
    return {n: p.detach() for n, p in zip(u.names, params)}


def discrepancy(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per common key: max |ours - reference| / max |reference| (relative to the tensor's scale)."""
    return {n: float((ours[n] - reference[n]).abs().max() / reference[n].abs().max().clamp_min(1e-300))
            for n in reference if n in ours}


def checked_keys(grads: dict[str, torch.Tensor]) -> set[str]:
    return {"source.generator.fc1.weight", "source.codes", "hyper.log_lr"} | {
        n for n in grads if n.startswith("hyper.") and "momentum" in n}


@pytest.mark.parametrize("estimator", ["plain", "checkpointed", "population"])
def test_paper_profile_matches_the_official_reference(float64, monkeypatch, estimator):
    step = tgbench_step(monkeypatch, checkpoint_every=3 if estimator == "checkpointed" else 0,
                        population=2 if estimator == "population" else 1)
    ref_grads, ref_final = reference_run(step)
    # every meta-parameter the teacher has got a gradient on both sides: generator weights, codes, lr, momentum
    assert step.grads.keys() == ref_grads.keys()
    assert checked_keys(ref_grads) <= ref_grads.keys() and "hyper.log_momentum" in ref_grads
    assert all(ref_grads[n].abs().max() > 0 for n in checked_keys(ref_grads))
    off = discrepancy(step.grads, ref_grads)
    assert max(off.values()) < AGREE, sorted(off.items(), key=lambda kv: -kv[1])[:4]
    if estimator != "population":
        weights_off = discrepancy(tgbench_final_weights(step), ref_final)
        assert set(weights_off) == set(step.unroll.names)  # every learner weight, the BN shifts included
        assert max(weights_off.values()) < AGREE, weights_off


def test_the_forward_only_unroll_es_evaluates_is_the_reference_meta_loss(float64, monkeypatch):
    """ES and the hybrid score a perturbed teacher with ``train_learner`` on the same Unroll (its fresh batches
    included): at the unperturbed point that must be the reference's meta-loss."""
    step = tgbench_step(monkeypatch)
    u = step.unroll
    with torch.no_grad():
        lessons = [step.teacher(t, u.episode) for t in range(STEPS)]
    es_loss = engine.train_learner(lessons.__getitem__, u, differentiable=False)[1]
    learner = OfficialLearner(SHAPE[0], SHAPE[1], WIDTHS, CLASSES)
    weights = {NAMES[n]: p.detach().clone().requires_grad_() for n, p in zip(u.names, u.params)}
    batches = [(b.x, b.y) for b in u.intermediate_batches] + [(u.meta_batch.x, u.meta_batch.y)]
    ref_loss, _ = official_meta_loss(learner, OfficialSGD(STEPS, step.inner.lr, step.inner.momentum), weights,
                                     lambda it: step.teacher.source(it, u.episode), batches)
    assert float(es_loss.detach()) == pytest.approx(float(ref_loss.detach()), rel=AGREE)


@pytest.mark.parametrize("piece", sorted(FLIPS))
def test_each_official_piece_matters(float64, monkeypatch, piece):
    """A reference with one piece flipped disagrees with tgbench's paper configuration far beyond the tolerance
    of the agreement test, so that test would catch tgbench losing that piece."""
    step = tgbench_step(monkeypatch)
    ref_grads, ref_final = reference_run(step, **{piece: FLIPS[piece]})
    off = discrepancy(step.grads, ref_grads)  # (flipped momentum form: the gradient of its own stored momentum)
    off.update({f"weights:{n}": v for n, v in discrepancy(tgbench_final_weights(step), ref_final).items()})
    assert max(off.values()) > DISAGREE, off


@pytest.mark.parametrize("k", [1, 2, 3])
def test_checkpointed_meta_gradient_equals_plain_with_fresh_batches(float64, monkeypatch, k):
    """``backprop_meta_loss`` with ``checkpoint_every = k`` replays each segment's losses on their own fresh
    batches: the same meta-loss and meta-gradient as the unsegmented unroll (the test_engine pattern)."""
    step = tgbench_step(monkeypatch)
    teacher, u = step.teacher, step.unroll
    results = []
    for every in (0, k):
        teacher.zero_grad(set_to_none=True)
        loss = engine.backprop_meta_loss(teacher, u, every)
        loss.backward()
        results.append((float(loss.detach()), {n: p.grad.clone() for n, p in teacher.named_parameters()}))
    (plain_loss, plain), (loss_k, ckpt) = results
    assert loss_k == pytest.approx(plain_loss, rel=1e-12)
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], rtol=1e-9, atol=1e-14, msg=n)


# ------------------------------------------------------------------------------- the settings and the hashes
def test_official_settings_are_hashed_only_when_set():
    """Left at their defaults the new settings change no cell hash or table protocol (every stored key stays);
    set, each one does."""
    from tgbench.cells import cell_hash
    from tgbench.identity import protocol_of

    suite = load_suite(SUITE, "cpu")
    entry = suite.sources[0]

    def keys(s):
        return cell_hash(s, entry, "mnist-5k"), str(protocol_of(s.model_dump(mode="json"), "mnist-5k"))

    base = keys(suite)
    assert "bn_shift" not in base[1]
    settings = [("learner", {"bn_shift": True}), ("inner", {"momentum_form": "exp"}),
                ("outer", {"intermediate_batches": "fresh"}), ("outer", {"intermediate_reduction": "sum"})]
    for section, change in settings:
        at_default = {key: type(getattr(suite, section)).model_fields[key].default for key in change}
        update = {section: getattr(suite, section).model_copy(update=at_default)}
        assert keys(suite.model_copy(update=update)) == base
        model = type(getattr(suite, section))
        before = getattr(suite, section).model_dump()
        if section == "outer":  # (the intermediate settings apply with intermediate losses on)
            before["intermediate_losses"] = True
        without, with_it = (suite.model_copy(update={section: model(**fields)})
                            for fields in (before, {**before, **change}))
        assert keys(with_it)[0] != keys(without)[0], change


def test_intermediate_settings_need_intermediate_losses():
    with pytest.raises(ValueError, match="intermediate_losses: true"):
        OuterLoop(intermediate_batches="fresh")
    with pytest.raises(ValueError, match="intermediate_losses: true"):
        OuterLoop(intermediate_reduction="sum")
    OuterLoop(intermediate_losses=True, intermediate_batches="fresh", intermediate_reduction="sum")


def test_momentum_forms_give_the_same_schedule_at_init():
    logit, exp = InnerHyperparameters(3, 0.02, 0.5), InnerHyperparameters(3, 0.02, 0.5, momentum_form="exp")
    assert {n for n, _ in exp.named_parameters()} == {"log_lr", "log_momentum"}
    for key in ("lr", "momentum"):
        assert logit.schedule()[key] == pytest.approx(exp.schedule()[key])
    exp.start_from([0.1], [1.2])  # exp(log m) is unbounded: a momentum above 1 can be stored
    assert exp.schedule()["momentum"] == pytest.approx([1.2] * 3)
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        logit.start_from([0.1], [1.2])

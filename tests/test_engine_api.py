"""The engine's public API: ``Problem``, ``train_fresh_learners`` and the signatures grouped around them.

Two kinds of evidence that the API change kept every number:

* ``PINNED`` holds numbers of the public paths — three ``MetaTrainer`` steps of every estimator on gtn, real and
  dataset distillation, ``evaluate`` curves and endpoints, ``TeachingData`` proxy scores and ``train_real`` —
  measured at revision 1116417, before the change, through the old signatures (``image_shape=`` /
  ``num_classes=`` / ``learner_weight_norm=`` keywords, the proxy's own training loop). On that machine they came
  out bit for bit the same after it. They are compared to 1e-5 here, so that another CPU's kernels do not fail
  them, while a changed random stream, step or scoring point moves them by far more.
* the contract tests below compare the new loop with a hand-written one exactly, on any machine.
"""
from __future__ import annotations

import pickle
import warnings

import pytest
import torch

from tgbench import device as devices
from tgbench.suite.schema import GroundTruthSchedule, InnerLoop, LearnerSpace, OuterLoop
from tgbench.data import Dataset, Split
from tgbench.engine import EvalPlan, MetaTrainer, Unroll, detached_params, evaluate, train_fresh_learners, train_learner
from tgbench.inner import InnerHyperparameters
from tgbench.nn import Learner, LearnerSpec
from tgbench.problem import Problem
from tgbench.proxies import ProxyContext, TeachingData, train_real
from tgbench.registry import methods
from tgbench.source import SourceContext, Teacher

pytestmark = pytest.mark.usefixtures("single_thread")  # fixture in conftest.py

SHAPE, CLASSES = (1, 8, 8), 4
PROBLEM = Problem(SHAPE, CLASSES)
SPACE = LearnerSpace(conv_channels=[[2], [3]], fc_hidden=[[4]])
PARAMS = {"gtn": dict(noise_dim=4, fc_hidden=8, channels=(4, 2)), "real": {}, "dataset_distillation": {}}
OUTERS = {"backprop": {}, "checkpoint": dict(checkpoint_every=2), "population": dict(population=2),
          "intermediate": dict(intermediate_losses=True), "es": dict(meta_gradient="es", es_pairs=2),
          "hybrid": dict(meta_gradient="hybrid", es_pairs=2)}


def split(n: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, *SHAPE, generator=g), torch.randint(CLASSES, (n,), generator=g))


DATA = Dataset("tiny", "tiny", split(100, 0), split(40, 12), split(50, 11), CLASSES, SHAPE, (0.0,), (1.0,), "random")


def trainer(method: str, estimator: str = "backprop", steps: int = 3) -> MetaTrainer:
    cls = methods.get(method)
    torch.manual_seed(0)
    source = cls(cls.Params(**PARAMS[method]), SourceContext(DATA.train, steps, 10, DATA.problem))
    teacher = Teacher(source, InnerHyperparameters(steps, 0.1, 0.5))
    outer = OuterLoop(meta_batch_size=20, iterations=4, **OUTERS[estimator])
    return MetaTrainer(teacher, SPACE, DATA.train, InnerLoop(steps=steps, batch_size=10), outer, seed=7)


# ------------------------------------------------------------------------------------ numbers kept
PINNED = {'endpoints:dataset_distillation': {'test_acc': [0.26, 0.25],
                                             'test_loss': [1.5818016815185547, 1.4969088745117187],
                                             'val_acc': [0.325, 0.275],
                                             'val_loss': [1.584119129180908, 1.5269064903259277]},
          'endpoints:gtn': {'test_acc': [0.22999999999999998, 0.31],
                            'test_loss': [1.5907225036621093, 1.4987930297851562],
                            'val_acc': [0.225, 0.2875],
                            'val_loss': [1.5866087913513183, 1.4984589576721192]},
          'endpoints:real': {'test_acc': [0.32999999999999996, 0.31000000000000005],
                             'test_loss': [1.4272940063476565, 1.364250717163086],
                             'val_acc': [0.2375, 0.1625],
                             'val_loss': [1.5649429321289063, 1.4718533515930177]},
          'evaluate:dataset_distillation': {'test_acc': [0.265, 0.255, 0.24, 0.26],
                                            'test_loss': [1.5709830474853517, 1.557682876586914, 1.5239793014526368,
                                                          1.49908748626709],
                                            'val_acc': [0.29375, 0.30625, 0.32499999999999996, 0.29375],
                                            'val_loss': [1.5470798969268797, 1.535944390296936, 1.498183512687683,
                                                         1.4998298168182371]},
          'evaluate:gtn': {'test_acc': [0.235, 0.24, 0.25, 0.3],
                           'test_loss': [1.5809022903442382, 1.6795568466186523, 1.598277244567871, 1.5598917770385743],
                           'val_acc': [0.225, 0.2375, 0.25, 0.28125],
                           'val_loss': [1.6009554386138916, 1.590602421760559, 1.5691111087799072, 1.492947578430176]},
          'evaluate:real': {'test_acc': [0.26999999999999996, 0.245, 0.255, 0.27],
                            'test_loss': [1.5101876068115236, 1.4972858810424805, 1.4697672271728517, 1.4615859985351562],
                            'val_acc': [0.25625, 0.2375, 0.24375000000000002, 0.23750000000000002],
                            'val_loss': [1.4777369260787963, 1.4567123174667358, 1.4408660650253295, 1.4483638763427735]},
          'step:dataset_distillation:backprop': [1.378226637840271, 1.513714075088501, 1.5124895572662354],
          'step:dataset_distillation:checkpoint': [1.378226637840271, 1.513714075088501, 1.5124895572662354],
          'step:dataset_distillation:intermediate': [1.412673830986023, 1.5387001037597656, 1.5269289016723633],
          'step:dataset_distillation:population': [1.540820837020874, 1.3990427255630493, 1.7613580226898193],
          'step:gtn:backprop': [1.4865838289260864, 1.897005319595337, 1.3375303745269775],
          'step:gtn:checkpoint': [1.4865838289260864, 1.897005319595337, 1.3375303745269775],
          'step:gtn:es': [1.4806697368621826, 1.496071457862854, 1.9142790138721466],
          'step:gtn:hybrid': [1.4806697368621826, 1.4048103988170624, 1.793182611465454],
          'step:gtn:intermediate': [1.593058705329895, 2.004551649093628, 1.4209171533584595],
          'step:gtn:population': [2.4313788414001465, 2.3994553089141846, 1.5778921842575073],
          'step:real:backprop': [1.3733670711517334, 1.3981597423553467, 1.3740098476409912],
          'step:real:checkpoint': [1.3733670711517334, 1.3981597423553467, 1.3740098476409912],
          'step:real:intermediate': [1.3760679960250854, 1.4552377462387085, 1.3741302490234375],
          'step:real:population': [1.4526457786560059, 1.633974313735962, 1.620043158531189],
          'teaching:dataset_distillation': [0.3, 0.275, 0.2625, 0.3125],
          'teaching:gtn': [0.25, 0.35, 0.3, 0.45],
          'teaching:real': [0.3, 0.275, 0.2875, 0.2],
          'train_real': {'best_epoch': 2.0, 'test_acc': 0.24, 'test_acc_last': 0.24, 'val_acc': 0.2, 'val_acc_last': 0.2}}


@pytest.fixture(scope="module")
def measured() -> dict:
    """The numbers of ``PINNED``, measured now the way they were measured at 1116417."""
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for method in PARAMS:
            for estimator in OUTERS:
                if estimator in ("es", "hybrid") and method != "gtn":
                    continue
                t = trainer(method, estimator)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out[f"step:{method}:{estimator}"] = [t.step().meta_loss for _ in range(3)]
            specs = [SPACE.reference(), LearnerSpec((3,), (4,), 3, "tanh")]
            out[f"evaluate:{method}"] = t.evaluate(DATA.test, DATA.val, specs, learners=2, seed=5).__dict__
            out[f"endpoints:{method}"] = t.evaluate(DATA.test, DATA.val, specs[:1], learners=2, seed=5,
                                                    per_step=False).__dict__
            ctx = ProxyContext(DATA, None, {method: t.teacher})
            out[f"teaching:{method}"] = [
                TeachingData(TeachingData.Params(source=method, steps=k, learners=n), ctx).score(spec, 3)
                for k, n in [(3, 1), (5, 2)] for spec in [LearnerSpec((2,), (4,)), LearnerSpec((), (8,), 3, "tanh")]]
        real = train_real(LearnerSpec((2,), (4,)), DATA, GroundTruthSchedule(epochs=2, batch_size=16), seed=4)
        out["train_real"] = {k: real[k] for k in PINNED["train_real"]}
    finally:
        torch.set_num_threads(old_threads)
    return out


@pytest.mark.parametrize("key", sorted(PINNED))
def test_numbers_are_those_measured_before_the_api_change(measured, key):
    expected = PINNED[key] if isinstance(PINNED[key], dict) else {"": PINNED[key]}
    got = measured[key] if isinstance(measured[key], dict) else {"": measured[key]}
    assert got.keys() == expected.keys()
    for name, value in expected.items():  # (approx compares flat lists and scalars)
        assert got[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name


# ------------------------------------------------------------------------------------ the contract
def test_a_problem_is_small_frozen_and_picklable():
    problem = Problem([1, 8, 8], torch.tensor(4).item())
    assert problem == PROBLEM and hash(problem) == hash(PROBLEM) and problem.image_shape == (1, 8, 8)
    assert pickle.loads(pickle.dumps(problem)) == problem     # travels to worker processes
    with pytest.raises(AttributeError):
        problem.num_classes = 5
    assert DATA.problem == PROBLEM
    ctx = SourceContext(DATA.train, 3, 10, DATA.problem)
    assert (ctx.image_shape, ctx.num_classes) == (SHAPE, CLASSES)  # what sources read, as before
    assert trainer("real").teacher.problem == PROBLEM


def test_train_fresh_learners_trains_and_scores_as_its_contract_says():
    t = trainer("gtn")
    teacher, learner = t.teacher, Learner(SPACE.reference(), PROBLEM)
    for per_step, points in [(True, [0, 1, 2, 3, 4]), (False, [0, 4])]:
        seen = []

        def score(step, names, params, reference):
            seen.append((step, names, [p.detach().clone() for p in params], reference))

        plan = EvalPlan(steps=4, learners=2, optimizer="sgd_momentum", per_step=per_step)
        train_fresh_learners(teacher, learner, plan, torch.Generator().manual_seed(9), score)
        assert [s[0] for s in seen] == points * 2

        # the same by hand: reset, episode, lessons, train_learner without meta-gradient; same generator stream
        generator, by_hand = torch.Generator().manual_seed(9), []
        for _ in range(2):
            learner.reset_parameters(generator)
            names, params = detached_params(learner)
            episode = teacher.new_episode(generator)
            with torch.no_grad():
                lessons = [teacher(k, episode) for k in range(4)]
            final, _ = train_learner(lessons.__getitem__, Unroll(learner, names, params, episode, None, 4),
                                     differentiable=False)
            by_hand.append((names, params, final, lessons))
        for i, (names, init, final, lessons) in enumerate(by_hand):
            first, last = seen[i * len(points)], seen[(i + 1) * len(points) - 1]
            assert first[1] == last[1] == names
            assert all(torch.equal(a, b) for a, b in zip(first[2], init))
            assert all(torch.equal(a, b) for a, b in zip(last[2], final))
            assert torch.equal(first[3], lessons[0].x) and torch.equal(last[3], lessons[-1].x)


@pytest.mark.parametrize("learners", [1, 2])
def test_the_teaching_proxy_scores_what_evaluate_reports_as_validation_accuracy(learners):
    t = trainer("gtn")
    ctx = ProxyContext(DATA, None, {"gtn": t.teacher})
    spec = LearnerSpec((2,), (4,))
    proxy = TeachingData(TeachingData.Params(source="gtn", steps=5, learners=learners), ctx).score(spec, seed=3)
    result = evaluate(t.teacher, [spec], DATA.test, DATA.val, EvalPlan(5, learners, per_step=False),
                      devices.generator(DATA.train.x.device, 3))
    assert proxy == result.val_acc[-1]

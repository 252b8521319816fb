"""Reference code paths the benchmarks measure tgbench against (the project's own code, not a copy of the engine).

``reference_final_evaluation`` is the final evaluation as tgbench scored it before issue 19: every learner
scored on the *whole* test and validation splits after every inner step, in NCHW layout with autograd recording
(max-pooling then takes its slow with-indices path). Training is tgbench's own (``train_learner`` with the same
generator stream as ``tgbench.engine.evaluate``), so after the last inner step the two must give the same
accuracies; only the scoring differs. ``benchmarks/compare.py`` (section 5) times the two side by side and
``tests/test_benchmarks.py`` checks that they agree.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tgbench.data import Split
from tgbench.engine import Unroll, detached_params, scored_log_probs, train_learner
from tgbench.nn import Learner, LearnerSpec
from tgbench.source import Teacher


def reference_scores(learner: Learner, names, params, split: Split, reference: torch.Tensor,
                     chunk: int = 2000) -> tuple[float, float]:
    """(accuracy, mean NLL) over the whole split, autograd recording (NCHW feature maps throughout)."""
    correct, loss = 0, 0.0
    with torch.enable_grad():
        for i in range(0, len(split), chunk):
            out = scored_log_probs(learner, names, params, split.x[i:i + chunk], reference).detach()
            correct += int((out.argmax(1) == split.y[i:i + chunk]).sum())
            loss += float(F.nll_loss(out, split.y[i:i + chunk], reduction="sum"))
    return correct / len(split), loss / len(split)


def reference_final_evaluation(teacher: Teacher, spec: LearnerSpec, test: Split, val: Split, steps: int,
                               learners: int, generator: torch.Generator) -> list[list[float]]:
    """Rows test_acc, test_loss, val_acc, val_loss; column t = after t inner steps (0 = at init), each the mean
    over ``learners`` fresh learners, every point on the whole splits."""
    image_shape, num_classes = tuple(test.x.shape[1:]), int(teacher.source.ctx.num_classes)
    sums = torch.zeros(4, steps + 1, device="cpu")  # (host numbers)
    with torch.device(test.x.device):
        learner = Learner(spec, image_shape, num_classes)
    for _ in range(learners):
        learner.reset_parameters(generator)
        names, params = detached_params(learner)
        episode = teacher.new_episode(generator)
        with torch.no_grad():
            lessons = [teacher(t, episode) for t in range(steps)]

        def record(t: int, p, reference: torch.Tensor) -> None:
            sums[:, t + 1] += torch.tensor([*reference_scores(learner, names, p, test, reference),
                                            *reference_scores(learner, names, p, val, reference)])

        record(-1, params, lessons[0].x)
        train_learner(lessons.__getitem__, Unroll(learner, names, params, episode, None, steps, teacher.optimizer),
                      differentiable=False, after_step=record)
    return (sums / learners).tolist()

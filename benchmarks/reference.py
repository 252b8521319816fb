"""Reference code paths the benchmarks measure tgbench against (the project's own code, not a copy of the engine).

``reference_final_evaluation`` is the final evaluation as tgbench scored it before issue 19: every learner
scored on the *whole* test and validation splits after every inner step, in NCHW layout with autograd recording
(max-pooling then takes its slow with-indices path). Training is tgbench's own (``train_fresh_learners``, the loop
behind ``tgbench.engine.evaluate``, with the same generator stream), so after the last inner step the two must give
the same accuracies; only the scoring differs. ``benchmarks/compare.py`` (section 5) times the two side by side and
``tests/test_benchmarks.py`` checks that they agree.

``nchw_pooling`` restores the learner's max-pool as it was before issue 24 (NCHW ``F.max_pool2d`` whenever a graph
is recorded): ``benchmarks/compare.py`` (section 6) times the cpu-size meta-iteration with and without it, and
``tests/test_benchmarks.py`` checks that both give the same numbers bit for bit.

``PlainGTN`` is a paper-scale GTN meta-iteration in plain PyTorch (section 1's reference; see its docstring).
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from tgbench.data import Split
from tgbench.engine import EvalPlan, build_learner, scored_log_probs, train_fresh_learners
from tgbench import nn as tgnn
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
    sums = torch.zeros(4, steps + 1, device="cpu")  # (host numbers)
    learner = build_learner(spec, teacher.problem, test.x.device)

    def record(t: int, names, params, reference: torch.Tensor) -> None:
        sums[:, t] += torch.tensor([*reference_scores(learner, names, params, test, reference),
                                    *reference_scores(learner, names, params, val, reference)])

    train_fresh_learners(teacher, learner, EvalPlan(steps, learners, teacher.optimizer), generator, record)
    return (sums / learners).tolist()


# ------------------------------------------------------------------------------ the learner's old max-pool
def nchw_max_pool(h: torch.Tensor) -> torch.Tensor:
    """``tgbench.nn.max_pool`` before issue 24: scoring in channels-last, training with the NCHW kernel."""
    if not torch.is_grad_enabled() or h.dim() != 4:
        return F.max_pool2d(h.contiguous(memory_format=torch.channels_last) if h.dim() == 4 else h, 3, 2, 1)
    return F.max_pool2d(h, 3, 2, 1)


@contextlib.contextmanager
def nchw_pooling():
    """Learners pool as before issue 24 while the block runs (the module's function is swapped and restored)."""
    fast = tgnn.max_pool
    tgnn.max_pool = nchw_max_pool
    try:
        yield
    finally:
        tgnn.max_pool = fast


# ------------------------------------------------------------------------------ the plain meta-iteration
class PlainGTN:
    """One paper-scale GTN meta-iteration written directly in PyTorch, without any tgbench code: the reference
    ``benchmarks/compare.py`` (section 1) times ``MetaTrainer.step()`` against, on the same device.

    The models are the paper's MNIST ones (as tgbench's defaults): a generator z(128) ⊕ one-hot(y) -> FC 1024 ->
    BN -> LReLU -> FC 128·7·7 -> BN -> LReLU -> [×2, reflect pad, conv 3×3 -> 64, BN, LReLU] -> [×2, reflect pad,
    conv 3×3 -> 1] -> 2·tanh, and a learner conv 64 -> conv 128 (3×3, max-pool 3/2/1, mean-only BN, LReLU 0.1)
    -> FC 256 -> classifier, every layer weight-normalised (w = g·v/‖v‖). A full curriculum of T×B learned
    codes, heavy-ball SGD with learned per-step lr and momentum, the meta-loss on a real batch scored with the BN
    means of the last lesson, and one Adam step on every meta-parameter: the same FLOPs as tgbench's step (the
    compare script prints both counts). The data are random tensors of MNIST's shape: only time is measured.
    """

    NOISE, HIDDEN, CHANNELS, LEARNER, FC, CLASSES, SLOPE = 128, 1024, (128, 64), (64, 128), 256, 10, 0.1

    def __init__(self, steps: int = 32, batch: int = 128, device: torch.device | None = None, seed: int = 0):
        self.steps, self.batch = steps, batch
        self.device = torch.device("cpu") if device is None else device
        self.rng = torch.Generator(device=self.device).manual_seed(seed)
        c0, c1 = self.CHANNELS
        self.generator = {  # name -> (direction v, gain g) of a weight-normalised layer, or a plain tensor
            "fc1": self._layer(self.HIDDEN, self.NOISE + self.CLASSES), "fc2": self._layer(c0 * 49, self.HIDDEN),
            "conv1": self._layer(c1, c0, 3, 3), "conv2": self._layer(1, c1, 3, 3),
            "conv2_bias": torch.zeros(1, device=self.device),
            "bn1": (torch.ones(self.HIDDEN, device=self.device), torch.zeros(self.HIDDEN, device=self.device)),
            "bn2": (torch.ones(c0 * 49, device=self.device), torch.zeros(c0 * 49, device=self.device)),
            "bn3": (torch.ones(c1, device=self.device), torch.zeros(c1, device=self.device)),
        }
        self.codes = torch.randn(steps, batch, self.NOISE, generator=self.rng, device=self.device)
        self.labels = (torch.arange(steps * batch, device=self.device) % self.CLASSES).view(steps, batch)
        self.log_lr = torch.full((steps,), math.log(0.02), device=self.device)
        self.logit_momentum = torch.zeros(steps, device=self.device)  # momentum 0.5
        self.meta = [t for v in self.generator.values() for t in (v if isinstance(v, tuple) else (v,))]
        self.meta += [self.codes, self.log_lr, self.logit_momentum]
        for t in self.meta:
            t.requires_grad_()
        self.optimizer = torch.optim.Adam(self.meta, lr=0.02)
        self.real_x = torch.randn(batch, 1, 28, 28, generator=self.rng, device=self.device)
        self.real_y = torch.randint(self.CLASSES, (batch,), generator=self.rng, device=self.device)

    def _layer(self, *shape: int) -> tuple[torch.Tensor, torch.Tensor]:
        fan_in = math.prod(shape[1:])
        v = torch.randn(*shape, generator=self.rng, device=self.device) * math.sqrt(2 / (1 + self.SLOPE ** 2) / fan_in)
        return v, v.flatten(1).norm(dim=1)

    @staticmethod
    def _weight(v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return v * (g / v.flatten(1).norm(dim=1)).view(-1, *([1] * (v.dim() - 1)))

    def _generate(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p, w, act = self.generator, self._weight, lambda h: F.leaky_relu(h, self.SLOPE)

        def bn(h, name):
            return F.batch_norm(h, None, None, *p[name], training=True)

        h = act(bn(F.linear(torch.cat([z, F.one_hot(y, self.CLASSES).to(z.dtype)], 1), w(*p["fc1"])), "bn1"))
        h = act(bn(F.linear(h, w(*p["fc2"])), "bn2")).view(-1, self.CHANNELS[0], 7, 7)
        h = F.pad(F.interpolate(h, scale_factor=2), (1, 1, 1, 1), mode="reflect")
        h = act(bn(F.conv2d(h, w(*p["conv1"])), "bn3"))
        h = F.pad(F.interpolate(h, scale_factor=2), (1, 1, 1, 1), mode="reflect")
        return torch.tanh(F.conv2d(h, w(*p["conv2"]), p["conv2_bias"])) * 2

    def _fresh_learner(self) -> list[torch.Tensor]:
        (a, b), fc = self.LEARNER, self.FC
        layers = [self._layer(a, 1, 3, 3), self._layer(b, a, 3, 3), self._layer(fc, b * 49),
                  self._layer(self.CLASSES, fc)]
        return [t.requires_grad_() for v, g in layers for t in (v, g)] + [
            torch.zeros(self.CLASSES, device=self.device, requires_grad=True)]

    def _log_probs(self, params: list[torch.Tensor], x: torch.Tensor,
                   reference: torch.Tensor | None = None) -> torch.Tensor:
        """Log-probabilities of ``x``; every BN layer normalises with the means of ``reference``'s features
        (``None``: of ``x``'s own, as in training)."""
        w, act = self._weight, lambda h: F.leaky_relu(h, self.SLOPE)
        stream = [x] if reference is None else [x, reference]
        for i in range(2):
            stream = [F.max_pool2d(F.conv2d(h, w(params[2 * i], params[2 * i + 1]), padding=1), 3, 2, 1)
                      for h in stream]
            mean = stream[-1].mean(dim=(0, 2, 3), keepdim=True)
            stream = [act(h - mean) for h in stream]
        stream = [F.linear(h.flatten(1), w(params[4], params[5])) for h in stream]
        mean = stream[-1].mean(dim=0, keepdim=True)
        return F.log_softmax(F.linear(act(stream[0] - mean), w(params[6], params[7]), params[8]), dim=1)

    def step(self) -> float:
        params = self._fresh_learner()
        velocity = [torch.zeros_like(p) for p in params]
        x = None
        for t in range(self.steps):
            x = self._generate(self.codes[t], self.labels[t])
            loss = F.nll_loss(self._log_probs(params, x), self.labels[t])
            grads = torch.autograd.grad(loss, params, create_graph=True)
            lr, momentum = self.log_lr[t].exp(), torch.sigmoid(self.logit_momentum[t])
            velocity = [momentum * v + g for v, g in zip(velocity, grads)]
            params = [p - lr * v for p, v in zip(params, velocity)]
        meta_loss = F.nll_loss(self._log_probs(params, self.real_x, x), self.real_y)
        self.optimizer.zero_grad()
        meta_loss.backward()
        self.optimizer.step()
        return float(meta_loss.detach())

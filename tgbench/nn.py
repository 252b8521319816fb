"""Layers, learner architectures and generators that run inside differentiated unrolls.

Everything here is an ordinary ``nn.Module`` so the engine can run it with ``torch.func.functional_call`` on a
params dict (and ``vmap`` over a stack of such dicts). Two rules follow from that:

* Weight normalisation is hand-written (``W = g * V / ||V||``) instead of ``torch.nn.utils.parametrizations``:
  the latter silently disconnects gradients under ``functional_call`` unless its private key names are used,
  and has no vmap batching rule (see docs/engine_notes.md).
* Normalisation layers keep no running statistics (in-place buffer writes break vmap and make an unroll's
  result depend on earlier unrolls): learners use *mean-only* batch norm, generators batch-statistics BN.

Learner BN statistics — the evaluation protocol (docs/protocol.md). A learner trains on a lesson with that
lesson's batch mean. When it is *scored* (meta-loss, validation, test, NAS ground truth) it is given the lesson
it last trained on as ``bn_reference`` and normalises every scored example with that lesson's means, so a
prediction never depends on which other examples share the scored batch. This is the official GTN code's rule
(BN with momentum 0 stores the last inner-step lesson's statistics) with one difference: the means are those of
the last lesson under the learner's *final* weights (one extra forward of the lesson), where the official code
keeps the means computed before the last update — an artefact of PyTorch's running-stats mechanics that would
normalise one function with another's statistics. It stays a pure function (no buffers), so vmap,
checkpointing and ES work unchanged, and the meta-gradient flows through the statistics. The old transductive
rule (each scored batch normalised with its own mean) is kept as ``bn_statistics: scored_batch``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from tgbench.problem import Problem

LEAKY_SLOPE = 0.1  # LeakyReLU(0.1) throughout, as in the official GTN code


def weight_norm(v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``g * v / ||v||`` with the norm taken per output unit (over every dim but 0)."""
    norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
    return v * (g.view_as(norm) / norm)


class _WeightNormed(nn.Module):
    """Shared machinery of the WN linear/conv layers: parameters ``weight`` (V, or W when WN is off) and ``gain``."""

    def _make(self, shape: tuple[int, ...], bias: bool, use_weight_norm: bool) -> None:
        self.use_weight_norm = use_weight_norm
        self.weight = nn.Parameter(torch.empty(shape))
        self.gain = nn.Parameter(torch.empty(shape[0])) if use_weight_norm else None
        self.bias = nn.Parameter(torch.zeros(shape[0])) if bias else None
        # Built on the meta device, a layer has shapes only (tgbench.fit counts them): nothing to initialise, and
        # the init's ops would run there through PyTorch's Python decompositions, whose first use imports
        # torch._dynamo (measured 1.4 s of every run's start).
        if not self.weight.is_meta:
            self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        # Kaiming init for LeakyReLU(0.1) as in the official code; g = ||V|| so the WN layer computes exactly
        # the plain layer's function at init.
        with torch.no_grad():
            nn.init.kaiming_normal_(self.weight, a=LEAKY_SLOPE, generator=generator)
            if self.gain is not None:
                self.gain.copy_(self.weight.flatten(1).norm(dim=1))
            if self.bias is not None:
                self.bias.zero_()

    def effective_weight(self) -> torch.Tensor:
        return weight_norm(self.weight, self.gain) if self.use_weight_norm else self.weight


class Linear(_WeightNormed):
    def __init__(self, fan_in: int, fan_out: int, bias: bool = True, weight_norm: bool = True):
        super().__init__()
        self._make((fan_out, fan_in), bias, weight_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


class Conv2d(_WeightNormed):
    def __init__(self, c_in: int, c_out: int, kernel: int = 3, padding: int | None = None, bias: bool = True,
                 weight_norm: bool = True):
        super().__init__()
        self.padding = kernel // 2 if padding is None else padding
        self._make((c_out, c_in, kernel, kernel), bias, weight_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.effective_weight(), self.bias, padding=self.padding)


def channel_mean(h: torch.Tensor) -> torch.Tensor:
    """Per-channel mean over the batch (and the spatial dims of a feature map), kept broadcastable."""
    return h.mean(dim=[0, *range(2, h.dim())], keepdim=True)


BN_STATISTICS = ("lesson", "scored_batch")


def _activation(name: str):
    if name == "leaky_relu":
        return lambda h: F.leaky_relu(h, LEAKY_SLOPE)
    if name == "relu":
        return F.relu
    if name == "tanh":
        return torch.tanh
    if name == "elu":
        return F.elu
    raise ValueError(f"unknown activation {name!r}")


ACTIVATIONS = ("leaky_relu", "relu", "tanh", "elu")


@dataclass(frozen=True)
class LearnerSpec:
    """One concrete learner architecture (a point of a suite's learner space)."""

    conv_channels: tuple[int, ...] = (64, 128)  # one conv block (conv -> maxpool/2 -> BN -> act) per entry
    fc_hidden: tuple[int, ...] = (256,)          # hidden fully-connected layers before the classifier
    kernel_size: int = 3
    activation: str = "leaky_relu"
    batch_norm: bool = True                      # mean-only BN after every hidden layer
    weight_norm: bool = True
    bn_statistics: str = "lesson"                # scoring: the last lesson's means, or "scored_batch" (transductive)
    residual: bool = False                       # conv blocks become residual blocks (another family of CNN)
    bn_shift: bool = False                       # a learnable per-channel/unit shift after every mean-only BN

    def describe(self) -> str:
        conv = "-".join(map(str, self.conv_channels)) or "none"
        fc = "-".join(map(str, self.fc_hidden)) or "none"
        return (f"{'res' if self.residual else ''}conv[{conv}] k{self.kernel_size} fc[{fc}] {self.activation}"
                f"{' bn' if self.batch_norm else ''}{' wn' if self.weight_norm else ''}"
                f"{' scored-batch-bn' if self.batch_norm and self.bn_statistics == 'scored_batch' else ''}"
                f"{' bn-shift' if self.batch_norm and self.bn_shift else ''}")

    def as_dict(self) -> dict:
        return asdict(self)


def held_out_variants(reference: LearnerSpec) -> dict[str, LearnerSpec]:
    """The default held-out learners of a fewstep report: architectures a teacher was *not* meta-trained with,
    derived from the reference learner — twice as wide, one conv block deeper, another activation, an MLP (no
    conv), and a residual CNN (another family). Named by what changed."""
    conv, fc = reference.conv_channels, reference.fc_hidden
    other_activation = "tanh" if reference.activation != "tanh" else "relu"
    return {
        "wider": replace(reference, conv_channels=tuple(2 * c for c in conv), fc_hidden=tuple(2 * f for f in fc)),
        "deeper": replace(reference, conv_channels=conv + conv[-1:] if conv else (16,)),
        other_activation: replace(reference, activation=other_activation),
        "mlp": replace(reference, conv_channels=(), fc_hidden=(4 * fc[0] if fc else 256,)),
        "residual": replace(reference, residual=True),
    }


def _scoring_layout(h: torch.Tensor) -> torch.Tensor:
    """Conv feature maps in channels-last memory layout when no graph is recorded (scoring): on CPU the max-pool
    and the next convolution of a large no-grad batch run ~3x faster in it (``benchmarks/compare.py``'s
    evaluation benchmark). Only the layout changes, never a value. Training keeps NCHW: the double-backward
    unroll measured no gain from channels-last, and conversions there would sit on the meta-gradient's path."""
    if torch.is_grad_enabled() or h.dim() != 4:
        return h
    return h.contiguous(memory_format=torch.channels_last)


def max_pool(h: torch.Tensor) -> torch.Tensor:
    """The learner's max-pool (3, stride 2, pad 1). Scoring (no graph): in channels-last layout (see
    ``_scoring_layout``). Training (a graph is recorded): the winners are found by a no-grad channels-last pool
    and the output is *gathered* from ``h`` at them. On CPU, PyTorch's NCHW ``max_pool2d_with_indices`` is ~10x
    slower than its channels-last kernel (measured 13 ms vs 1.3 ms for 128 x 16 x 28 x 28 at one thread), and
    the pooled maps of every inner step, meta-loss and intermediate loss went through it; a channels-last
    autograd graph changes the low bits of the meta-gradient (other backward kernels, another summation order),
    which a T-step unroll amplifies. The gather keeps every value bit for bit: the forward picks the same
    elements (both kernels take the first maximum of a window, so the indices are equal), gather's backward
    scatter-adds into zeros in the same order as ``max_pool2d_with_indices_backward`` and its double backward is
    the same gather (``tests/test_engine_api.py`` pins the exact numbers; ``benchmarks/compare.py`` section 6
    times it against the NCHW pool). The gather works under ``vmap`` and ``torch.func.grad`` too (a population).
    Bit for bit on NCHW feature maps: a channels-last input (CIFAR's pickles once arrived as one) made the old
    pool take its channels-last kernel and the numbers differed in the last bits, so ``tgbench.data.load_dataset``
    hands every dataset over in NCHW order."""
    if not torch.is_grad_enabled() or h.dim() != 4:
        return F.max_pool2d(_scoring_layout(h), 3, 2, 1)
    with torch.no_grad():  # (channels-last by permutes: ``contiguous(memory_format=...)`` fails under vmap)
        nhwc = h.detach().permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        _, winners = F.max_pool2d(nhwc, 3, 2, 1, return_indices=True)
    winners = winners.contiguous()
    return h.flatten(2).gather(2, winners.flatten(2)).view(winners.shape)


class Learner(nn.Module):
    """A CNN/MLP classifier for a ``Problem``, built from a ``LearnerSpec``; returns log-probabilities.

    Conv blocks follow the official GTN learner: conv k×k -> maxpool(3, stride 2, pad 1) -> mean-only BN ->
    LeakyReLU; then hidden FC layers (FC -> BN -> act) and a linear classifier with bias.

    ``forward(x, bn_reference)``: with a reference batch (the lesson last trained on) and ``bn_statistics =
    "lesson"``, every BN layer subtracts the reference's per-channel mean, computed alongside in the same pass;
    without one (a training step, where the lesson *is* the batch) or under ``"scored_batch"`` it subtracts the
    mean of ``x`` itself.

    ``bn_shift``: every mean-only BN adds a learnable per-channel (conv) / per-unit (FC) shift after subtracting
    the mean, initialised at 0 and trained by the inner loop like any learner weight — the official learner's
    ``BatchNormMeanOnly.bias`` (models.py: ``x + (beta - mean)``; 64 + 128 + 256 shifts for the paper learner).
    Off (the default) the layer has no parameter at all, so older learners keep their parameter lists.

    ``residual``: each conv block is ``h = act(bn(conv_a(x))); out = pool(act(bn(conv_b(h)) + h))`` instead —
    a residual CNN, the "other family" of the held-out learners.
    """

    def __init__(self, spec: LearnerSpec, problem: Problem):
        super().__init__()
        self.spec = spec
        c, h, w = problem.image_shape
        self.convs = nn.ModuleList()
        self.residual_convs = nn.ModuleList()
        for width in spec.conv_channels:
            self.convs.append(Conv2d(c, width, spec.kernel_size, bias=not spec.batch_norm,
                                     weight_norm=spec.weight_norm))
            if spec.residual:
                self.residual_convs.append(Conv2d(width, width, spec.kernel_size, bias=not spec.batch_norm,
                                                  weight_norm=spec.weight_norm))
            c, h, w = width, (h - 1) // 2 + 1, (w - 1) // 2 + 1  # maxpool(3, 2, 1) halves, rounding up
        features = c * h * w
        self.fcs = nn.ModuleList()
        for width in spec.fc_hidden:
            self.fcs.append(Linear(features, width, bias=not spec.batch_norm, weight_norm=spec.weight_norm))
            features = width
        self.classifier = Linear(features, problem.num_classes, bias=True, weight_norm=spec.weight_norm)
        if spec.bn_statistics not in BN_STATISTICS:
            raise ValueError(f"bn_statistics must be one of {BN_STATISTICS}, got {spec.bn_statistics!r}")
        self.act = _activation(spec.activation)
        # one shift per BN layer, in the order the layers run (a residual block has two); none without bn_shift
        bn_widths = [w for w in spec.conv_channels for _ in range(2 if spec.residual else 1)] + list(spec.fc_hidden)
        self.bn_shifts = nn.ParameterList([nn.Parameter(torch.zeros(w)) for w in bn_widths]
                                          if spec.batch_norm and spec.bn_shift else [])

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for layer in [*self.convs, *self.residual_convs, *self.fcs, self.classifier]:
            layer.reset_parameters(generator)
        with torch.no_grad():
            for shift in self.bn_shifts:  # (no random draw: the init streams stay those of a learner without them)
                shift.zero_()

    def logits(self, x: torch.Tensor, bn_reference: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, classes) pre-softmax outputs."""
        use_reference = bn_reference is not None and self.spec.batch_norm and self.spec.bn_statistics == "lesson"
        # the scored batch and (when used) the reference travel together; the last entry supplies the BN means
        stream = [x, bn_reference] if use_reference else [x]
        bn_layers = iter(range(len(self.convs) * (2 if self.spec.residual else 1) + len(self.fcs)))
        for i, conv in enumerate(self.convs):
            if self.spec.residual:
                inner = self._normalise_and_activate([_scoring_layout(conv(h)) for h in stream], next(bn_layers))
                outer = self._normalise([self.residual_convs[i](h) for h in inner], next(bn_layers))
                stream = [max_pool(self.act(a + b)) for a, b in zip(outer, inner)]
                continue
            stream = self._normalise_and_activate([max_pool(conv(h)) for h in stream],
                                                  next(bn_layers))
        stream = [h.flatten(1) for h in stream]
        for fc in self.fcs:
            stream = self._normalise_and_activate([fc(h) for h in stream], next(bn_layers))
        return self.classifier(stream[0])

    def _normalise(self, stream: list[torch.Tensor], layer: int) -> list[torch.Tensor]:
        """Mean-only BN number ``layer``: subtract the means of the stream's last entry (see ``logits``), then
        add the layer's learned shift when the spec has them."""
        if not self.spec.batch_norm:
            return stream
        mean = channel_mean(stream[-1])
        if not len(self.bn_shifts):
            return [h - mean for h in stream]
        shift = self.bn_shifts[layer].view(-1, *([1] * (mean.dim() - 2)))  # broadcast over the spatial dims
        return [h - mean + shift for h in stream]

    def _normalise_and_activate(self, stream: list[torch.Tensor], layer: int) -> list[torch.Tensor]:
        return [self.act(h) for h in self._normalise(stream, layer)]

    def forward(self, x: torch.Tensor, bn_reference: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, classes) log-probs; ``bn_reference``: see the class docstring."""
        return F.log_softmax(self.logits(x, bn_reference), dim=1)


@dataclass(frozen=True)
class GeneratorSpec:
    """Label-conditional generator G(z, y); the official MNIST generator is the default (paper sizes)."""

    noise_dim: int = 128
    fc_hidden: int = 1024
    channels: tuple[int, int] = (128, 64)  # channels at H/4 and H/2 resolution
    weight_norm: bool = True


class Generator(nn.Module):
    """z ⊕ one-hot(y) -> FC -> BN -> LReLU -> FC to (c0, H/4, W/4) -> BN -> LReLU -> [×2 upsample, reflect pad,
    conv3×3, BN, LReLU] -> [×2 upsample, reflect pad, conv3×3 to image channels] -> tanh × 2.

    BN uses batch statistics only (no running stats) so that the generator is a pure function of its inputs.
    Soft labels (B, classes) are accepted as well as integer labels.
    """

    def __init__(self, spec: GeneratorSpec, problem: Problem):
        super().__init__()
        (c_img, h, w), num_classes = problem.image_shape, problem.num_classes
        if h % 4 or w % 4:
            raise ValueError(f"generator needs image sides divisible by 4, got {problem.image_shape}")
        self.spec, self.num_classes, self.base = spec, num_classes, (h // 4, w // 4)
        c0, c1 = spec.channels
        wn = spec.weight_norm
        self.fc1 = Linear(spec.noise_dim + num_classes, spec.fc_hidden, bias=False, weight_norm=wn)
        self.bn1 = nn.BatchNorm1d(spec.fc_hidden, track_running_stats=False)
        self.fc2 = Linear(spec.fc_hidden, c0 * self.base[0] * self.base[1], bias=False, weight_norm=wn)
        self.bn2 = nn.BatchNorm1d(c0 * self.base[0] * self.base[1], track_running_stats=False)
        self.conv1 = Conv2d(c0, c1, 3, padding=0, bias=False, weight_norm=wn)
        self.bn3 = nn.BatchNorm2d(c1, track_running_stats=False)
        self.conv2 = Conv2d(c1, c_img, 3, padding=0, bias=True, weight_norm=wn)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # z: (B, noise), y: (B,) or (B, classes)
        onehot = F.one_hot(y, self.num_classes).to(z.dtype) if y.dim() == 1 else y
        h = F.leaky_relu(self.bn1(self.fc1(torch.cat([z, onehot], 1))), LEAKY_SLOPE)
        h = F.leaky_relu(self.bn2(self.fc2(h)), LEAKY_SLOPE)
        h = h.view(z.shape[0], self.spec.channels[0], *self.base)
        h = F.pad(F.interpolate(h, scale_factor=2), (1, 1, 1, 1), mode="reflect")
        h = F.leaky_relu(self.bn3(self.conv1(h)), LEAKY_SLOPE)
        h = F.pad(F.interpolate(h, scale_factor=2), (1, 1, 1, 1), mode="reflect")
        return torch.tanh(self.conv2(h)) * 2


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


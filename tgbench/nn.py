"""Layers, learner architectures and generators that run inside differentiated unrolls.

Everything here is an ordinary ``nn.Module`` so the engine can run it with ``torch.func.functional_call`` on a
params dict (and ``vmap`` over a stack of such dicts). Two rules follow from that:

* Weight normalisation is hand-written (``W = g * V / ||V||``) instead of ``torch.nn.utils.parametrizations``:
  the latter silently disconnects gradients under ``functional_call`` unless its private key names are used,
  and has no vmap batching rule (see DESIGN.md).
* Normalisation layers keep no running statistics (in-place buffer writes break vmap and make an unroll's
  result depend on earlier unrolls): learners use *mean-only* batch norm, generators batch-statistics BN.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

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


class MeanOnlyBatchNorm(nn.Module):
    """Subtract the batch mean per channel; no scale, no running statistics (the official learner's 'BN')."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        dims = [0] + list(range(2, h.dim()))
        return h - h.mean(dim=dims, keepdim=True)


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

    def describe(self) -> str:
        conv = "-".join(map(str, self.conv_channels)) or "none"
        fc = "-".join(map(str, self.fc_hidden)) or "none"
        return (f"conv[{conv}] k{self.kernel_size} fc[{fc}] {self.activation}"
                f"{' bn' if self.batch_norm else ''}{' wn' if self.weight_norm else ''}")

    def as_dict(self) -> dict:
        return asdict(self)


class Learner(nn.Module):
    """A CNN/MLP classifier built from a ``LearnerSpec``; returns log-probabilities.

    Conv blocks follow the official GTN learner: conv k×k -> maxpool(3, stride 2, pad 1) -> mean-only BN ->
    LeakyReLU; then hidden FC layers (FC -> BN -> act) and a linear classifier with bias.
    """

    def __init__(self, spec: LearnerSpec, image_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.spec = spec
        c, h, w = image_shape
        self.convs = nn.ModuleList()
        for width in spec.conv_channels:
            self.convs.append(Conv2d(c, width, spec.kernel_size, bias=not spec.batch_norm,
                                     weight_norm=spec.weight_norm))
            c, h, w = width, (h - 1) // 2 + 1, (w - 1) // 2 + 1  # maxpool(3, 2, 1) halves, rounding up
        features = c * h * w
        self.fcs = nn.ModuleList()
        for width in spec.fc_hidden:
            self.fcs.append(Linear(features, width, bias=not spec.batch_norm, weight_norm=spec.weight_norm))
            features = width
        self.classifier = Linear(features, num_classes, bias=True, weight_norm=spec.weight_norm)
        self.bn = MeanOnlyBatchNorm() if spec.batch_norm else nn.Identity()
        self.act = _activation(spec.activation)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for layer in [*self.convs, *self.fcs, self.classifier]:
            layer.reset_parameters(generator)

    def logits(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W) -> (B, classes) pre-softmax outputs
        h = x
        for conv in self.convs:
            h = self.act(self.bn(F.max_pool2d(conv(h), 3, 2, 1)))
        h = h.flatten(1)
        for fc in self.fcs:
            h = self.act(self.bn(fc(h)))
        return self.classifier(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W) -> (B, classes) log-probs
        return F.log_softmax(self.logits(x), dim=1)


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

    def __init__(self, spec: GeneratorSpec, image_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        c_img, h, w = image_shape
        if h % 4 or w % 4:
            raise ValueError(f"generator needs image sides divisible by 4, got {image_shape}")
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


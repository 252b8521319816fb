"""``external``: teach from a file of plain tensors — a published distilled set, or another harness's output.

The file is what ``tgbench export --format tensors`` writes and what dataset-distillation benchmarks
(DD-Ranking, DC-BENCH) exchange: a ``torch.save``d dict with ``images`` ``(N, C, H, W)`` float in the dataset's
normalised space, ``labels`` ``(N,)`` int64 or ``(N, classes)`` soft-label probabilities, and optionally
``batch_size`` B (default: the suite's inner batch size), ``lr`` and ``momentum`` ``(S,)``. Rows ``s*B:(s+1)*B``
are lesson s; the ``S = N // B`` lessons are shown in order and repeat when the suite's T is larger. Nothing is
learned from the data: it is fixed, like real data, and the inner lr/momentum schedule is whatever the suite
says (tuned and meta-learned like every arm's, the fair protocol) unless ``schedule: file`` starts it from the
file's ``lr`` / ``momentum``. The file is read with ``torch.load(weights_only=True)`` (tensors and plain values
only) when the suite is validated and again when a cell builds the source; the images are kept in the teacher's
state, so an exported teacher does not need the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import model_validator

from tgbench.errors import BadInput
from tgbench.source import Source, SourceParams


class ExternalParams(SourceParams):
    path: str
    schedule: Literal["suite", "file"] = "suite"   # where the inner lr/momentum schedule starts from

    @model_validator(mode="after")
    def _readable(self) -> "ExternalParams":
        read_lessons_file(self.path, need_schedule=self.schedule == "file")
        return self


def read_lessons_file(path: str, need_schedule: bool = False) -> dict:
    """The file's dict, checked: ``BadInput`` naming the file and the key at fault otherwise."""
    from tgbench.store import load_weights_only

    try:
        data = load_weights_only(Path(path).expanduser())
    except FileNotFoundError:
        raise BadInput(f"{path}: path: no such file") from None
    except Exception as exc:
        raise BadInput(f"{path}: not a readable tensor file ({exc})") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path}: expected a dict of tensors (images, labels, ...), got a {type(data).__name__}")
    images, labels = data.get("images"), data.get("labels")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise BadInput(f"{path}: images: expected a float tensor (N, C, H, W)")
    if not isinstance(labels, torch.Tensor) or labels.shape[0] != images.shape[0] or labels.dim() not in (1, 2):
        raise BadInput(f"{path}: labels: expected (N,) class indices or (N, classes) probabilities for the "
                       f"{images.shape[0]} images")
    if labels.dim() == 1 and labels.dtype != torch.int64:
        raise BadInput(f"{path}: labels: class indices must be int64, got {labels.dtype}")
    if not torch.isfinite(images).all():
        raise BadInput(f"{path}: images: contains NaN or infinite values")
    for key in ("lr", "momentum") if need_schedule else ():
        value = data.get(key)
        if not isinstance(value, torch.Tensor) or value.dim() != 1 or not len(value):
            raise BadInput(f"{path}: {key}: schedule: file needs a 1-d tensor of per-step values")
    return data


class ExternalData(Source):
    """Fixed lessons read from a tensor file (see the module docstring)."""

    Params = ExternalParams
    learns_data = False
    supports_es = True
    description = "fixed lessons from a tensor file (images, labels[, lr, momentum]): rank a published distilled set"

    def __init__(self, params: ExternalParams, ctx):
        super().__init__(params, ctx)
        data = read_lessons_file(params.path, need_schedule=params.schedule == "file")
        images, labels = data["images"].float(), data["labels"]
        if tuple(images.shape[1:]) != tuple(ctx.image_shape):
            raise BadInput(f"{params.path}: images: shape {tuple(images.shape[1:])} per image, but the suite's "
                           f"dataset has {tuple(ctx.image_shape)}")
        classes = labels.shape[1] if labels.dim() == 2 else int(labels.max()) + 1
        if classes > ctx.num_classes or (labels.dim() == 1 and int(labels.min()) < 0):
            raise BadInput(f"{params.path}: labels: outside the dataset's {ctx.num_classes} classes")
        self.batch = int(data.get("batch_size") or ctx.batch_size)
        if self.batch < 2 or images.shape[0] < self.batch:
            raise BadInput(f"{params.path}: batch_size: {self.batch} does not fit {images.shape[0]} images "
                           "(a lesson needs at least 2: mean-only batch norm)")
        lessons = images.shape[0] // self.batch
        device = ctx.train.x.device
        self.register_buffer("images", images[:lessons * self.batch].to(device))
        self.register_buffer("labels", labels[:lessons * self.batch].to(device))
        self.lessons = lessons
        self._schedule = (data["lr"], data["momentum"]) if params.schedule == "file" else None

    @classmethod
    def example_params(cls, ctx, workdir: Path) -> dict:
        path = Path(workdir) / f"external-{'x'.join(map(str, ctx.image_shape))}-{ctx.num_classes}.pt"
        generator = torch.Generator().manual_seed(0)
        n = 2 * ctx.batch_size
        torch.save({"images": torch.randn(n, *ctx.image_shape, generator=generator),
                    "labels": torch.arange(n) % ctx.num_classes, "batch_size": ctx.batch_size}, path)
        return {"path": str(path)}

    def initial_schedule(self) -> tuple[list[float], list[float]] | None:
        if self._schedule is None:
            return None
        lr, momentum = self._schedule
        return lr.tolist(), momentum.tolist()

    def forward(self, t: int, episode) -> tuple[torch.Tensor, torch.Tensor]:
        rows = slice((t % self.lessons) * self.batch, (t % self.lessons + 1) * self.batch)
        return self.images[rows], self.labels[rows]

"""``external``: teach from a file of plain tensors — a published distilled set, or another harness's output.

Three layouts are read (``format:``; ``auto``, the default, tells them apart by what ``path`` holds):

* ``tgbench`` — one file, what ``tgbench export --format tensors`` writes: a ``torch.save``d dict with ``images``
  ``(N, C, H, W)``, ``labels``, and optionally ``batch_size`` B (default: the suite's inner batch size), ``lr``
  and ``momentum`` ``(S,)``;
* ``dd-ranking`` — a folder, DD-Ranking's (NUS-HPC-AI-Lab) exchange: ``images.pt`` (a tensor ``(N, C, H, W)``),
  optionally ``labels.pt`` (``(N,)`` class indices, or ``(N, classes)`` soft labels) and ``lr.pt`` (the one
  learned learning rate, a number or 0-d tensor). Without ``labels.pt`` the images are class-ordered, as
  DD-Ranking's hard-label evaluation takes them: ``N / classes`` images of class 0, then of class 1, ...;
* ``dc-bench`` — DC-BENCH's (justincui03): one file holding ``{'data': [(images, labels), ...]}`` (the last pair
  is the distilled set, as DC-BENCH's loaders take it), or a folder with ``images_best.pt`` and
  ``labels_best.pt``.

In every layout the images are float, in the dataset's normalised space (as distillation methods store them),
and labels are ``(N,)`` int64 class indices or ``(N, classes)`` soft labels: rows that are probabilities (non-
negative, summing to 1) are used as they are, any other rows are taken as logits and soft-maxed. Rows
``s*B:(s+1)*B`` are lesson s; the ``S = N // B`` lessons are shown in order and repeat when the suite's T is
larger. Nothing is learned from the data: it is fixed, like real data, and the inner lr/momentum schedule is
whatever the suite says (tuned and meta-learned like every arm's, the fair protocol) unless ``schedule: file``
starts it from the file's ``lr`` / ``momentum`` (a tgbench file's; a single lr, DD-Ranking's, is not a per-step
schedule and is not used for it). Every tensor is read with ``torch.load(weights_only=True)`` (tensors and plain
values only) when the suite is validated and again when a cell builds the source; the images are kept in the
teacher's state, so an exported teacher does not need the files.

``path`` is a data path (``tgbench.inputs.DataPath``): relative to the suite file, and the cell's hash holds the
digest of the bytes read (the folder's files, for a folder), not the path — replace the file and its cells run
again.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
from pydantic import model_validator

from tgbench.errors import BadInput
from tgbench.inputs import DataPath
from tgbench.source import Source, SourceParams

FORMATS = ("auto", "tgbench", "dd-ranking", "dc-bench")
DD_RANKING_FILES = ("images.pt", "labels.pt", "lr.pt")
DC_BENCH_FILES = ("images_best.pt", "labels_best.pt")


class ExternalParams(SourceParams):
    path: DataPath
    format: Literal["auto", "tgbench", "dd-ranking", "dc-bench"] = "auto"   # the layout of `path` (see above)
    schedule: Literal["suite", "file"] = "suite"   # where the inner lr/momentum schedule starts from

    @model_validator(mode="after")
    def _readable(self) -> "ExternalParams":
        try:
            read_lessons(self.path, self.format, need_schedule=self.schedule == "file")
        except BadInput as exc:  # (a ValueError: validation names the suite file and sources[i].params)
            raise ValueError(str(exc)) from None
        return self


def _load(path: Path, what: str):
    from tgbench.store import load_weights_only

    try:
        return load_weights_only(path)
    except FileNotFoundError:
        raise BadInput(f"path: no such file {path}") from None
    except Exception as exc:
        raise BadInput(f"path: {path} is not a readable tensor file of {what} ({exc})") from None


def detect_format(path: str | Path) -> str:
    """The layout at ``path`` (``tgbench``, ``dd-ranking`` or ``dc-bench``), from its files' names and, for one
    file, its top-level keys; ``BadInput`` when it is none of them."""
    path = Path(path).expanduser()
    if path.is_dir():
        if (path / "images.pt").is_file():
            return "dd-ranking"
        if (path / "images_best.pt").is_file():
            return "dc-bench"
        raise BadInput(f"path: folder {path} holds neither images.pt (DD-Ranking) nor images_best.pt (DC-BENCH)")
    data = _load(path, "lessons")
    if isinstance(data, dict) and "data" in data and "images" not in data:
        return "dc-bench"
    return "tgbench"


def read_lessons(path: str, layout: str = "auto", need_schedule: bool = False) -> dict:
    """The lessons at ``path`` as tgbench's dict (``images``, ``labels`` — None where the layout leaves them to
    the class order —, optional ``batch_size``, ``lr``, ``momentum``), checked: ``BadInput`` naming the file and
    the key at fault otherwise."""
    where = Path(path).expanduser()
    layout = detect_format(where) if layout == "auto" else layout
    if layout == "tgbench":
        data = _load(where, "lessons")
        if not isinstance(data, dict):
            raise BadInput(f"path: {where}: expected a dict of tensors (images, labels, ...), "
                           f"got a {type(data).__name__}")
    elif layout == "dd-ranking":
        if not where.is_dir():
            raise BadInput(f"path: format dd-ranking reads a folder ({', '.join(DD_RANKING_FILES)}); "
                           f"{where} is not one")
        data = {"images": _load(where / "images.pt", "images")}
        if (where / "labels.pt").is_file():
            data["labels"] = _load(where / "labels.pt", "labels")
        if (where / "lr.pt").is_file():
            data["learned_lr"] = _load(where / "lr.pt", "the learning rate")
    else:  # dc-bench
        data = _dc_bench(where)
    return _checked(where, data, need_schedule)


def _dc_bench(where: Path) -> dict:
    if where.is_dir():
        missing = [name for name in DC_BENCH_FILES if not (where / name).is_file()]
        if missing:
            raise BadInput(f"path: format dc-bench: folder {where} has no {', '.join(missing)}")
        return {"images": _load(where / DC_BENCH_FILES[0], "images"), "labels": _load(where / DC_BENCH_FILES[1], "labels")}
    raw = _load(where, "lessons")
    pairs = raw.get("data") if isinstance(raw, dict) else None
    if not isinstance(pairs, (list, tuple)) or not pairs or not isinstance(pairs[-1], (list, tuple)) \
            or len(pairs[-1]) != 2:
        raise BadInput(f"path: {where}: data: format dc-bench expects {{'data': [(images, labels), ...]}}")
    images, labels = pairs[-1]
    return {"images": images, "labels": labels}


def _checked(where: Path, data: dict, need_schedule: bool) -> dict:
    images, labels = data.get("images"), data.get("labels")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise BadInput(f"path: {where}: images: expected a float tensor (N, C, H, W)")
    if labels is not None and (not isinstance(labels, torch.Tensor) or labels.shape[0] != images.shape[0]
                               or labels.dim() not in (1, 2)):
        raise BadInput(f"path: {where}: labels: expected (N,) class indices or (N, classes) soft labels for the "
                       f"{images.shape[0]} images")
    if labels is not None and labels.dim() == 1 and labels.dtype != torch.int64:
        raise BadInput(f"path: {where}: labels: class indices must be int64, got {labels.dtype}")
    if labels is not None and labels.dim() == 2 and not labels.is_floating_point():
        raise BadInput(f"path: {where}: labels: soft labels must be float, got {labels.dtype}")
    if not torch.isfinite(images).all() or (labels is not None and labels.dim() == 2
                                            and not torch.isfinite(labels).all()):
        raise BadInput(f"path: {where}: images/labels: contains NaN or infinite values")
    _check_batch_size(where, data.get("batch_size"), images.shape[0])
    for key in ("lr", "momentum") if need_schedule else ():
        value = data.get(key)
        if not isinstance(value, torch.Tensor) or value.dim() != 1 or not len(value):
            raise BadInput(f"path: {where}: {key}: schedule: file needs a 1-d tensor of per-step values (a "
                           "tgbench lessons file's; DD-Ranking's and DC-BENCH's layouts have no per-step schedule)")
        # the values start the learned schedule (log lr, logit momentum): each must be a legal starting point
        # (a momentum of 1 or more suits only the suite's `inner.momentum_form: exp`, which the file cannot know)
        high = MAX_FILE_LR if key == "lr" else math.inf
        if not value.is_floating_point() or not torch.isfinite(value).all() or not bool(
                ((value > 0) & (value <= high)).all()):
            raise BadInput(f"path: {where}: {key}: schedule: file needs finite float values above 0"
                           f"{f' and at most {MAX_FILE_LR:g}' if key == 'lr' else ''}, got {_preview(value)}")
    return data


# a lessons file's learning rates start the learned schedule: bounded as a suite's (tgbench.fit.MAX_LR), within
# float32 (a lr of 1e300 overflows the first inner step)
MAX_FILE_LR = 1e30


def _check_batch_size(where: Path, value, images: int) -> None:
    """A file's ``batch_size`` (absent: the suite's): a whole number from 2 (mean-only batch norm needs two) to
    the number of images, as a plain int or a 0-d integer tensor."""
    if value is None:
        return
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point() \
            and value.dtype != torch.bool:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 2 <= value <= images:
        raise BadInput(f"path: {where}: batch_size: expected a whole number from 2 to the {images} images (a "
                       f"lesson needs at least 2: mean-only batch norm), got {_preview(value)}")


def _preview(value) -> str:
    text = repr(value.tolist() if isinstance(value, torch.Tensor) and value.numel() <= 8 else value)
    return text if len(text) <= 60 else text[:57] + "..."


def as_probabilities(labels: torch.Tensor) -> torch.Tensor:
    """Soft labels as probabilities: rows that already are (non-negative, summing to 1) unchanged, else logits
    soft-maxed (DD-Ranking's soft labels are often a teacher's logits)."""
    labels = labels.float()
    if bool((labels >= 0).all()) and torch.allclose(labels.sum(1), torch.ones(len(labels)), atol=1e-3):
        return labels
    return labels.softmax(dim=1)


class ExternalData(Source):
    """Fixed lessons read from a tensor file (see the module docstring)."""

    Params = ExternalParams
    learns_data = False
    supports_es = True
    description = ("fixed lessons from a tensor file or folder (tgbench, DD-Ranking or DC-BENCH layout): rank a "
                   "published distilled set")

    def __init__(self, params: ExternalParams, ctx):
        super().__init__(params, ctx)
        data = read_lessons(params.path, params.format, need_schedule=params.schedule == "file")
        images, labels = data["images"].float(), data.get("labels")
        if labels is None:  # DD-Ranking's hard-label layout: class-ordered, N / classes images per class
            if images.shape[0] % ctx.num_classes:
                raise BadInput(f"{params.path}: labels.pt: absent, and {images.shape[0]} images are not "
                               f"{ctx.num_classes} classes of equal size (class-ordered images need N / classes)")
            labels = torch.arange(ctx.num_classes).repeat_interleave(images.shape[0] // ctx.num_classes)
        elif labels.dim() == 2:
            labels = as_probabilities(labels)
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

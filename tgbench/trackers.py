"""Experiment trackers: ``tgbench run --log tensorboard`` / ``--log wandb`` stream each cell's meta-loss (every
outer iteration), its periodic validation accuracy and, at the end, its sample grid.

TensorBoard uses torch's own writer (``torch.utils.tensorboard``, which needs the ``tensorboard`` package:
``pip install tensorboard``); event files go to ``<report dir>/tensorboard/<suite>/<cell>/`` — point
``tensorboard --logdir`` at that folder. Weights & Biases is used only when ``wandb`` is installed; without a
login it runs offline (``WANDB_MODE=offline`` unless you set another mode) and writes under ``<report dir>/wandb``
(``wandb sync`` uploads later). Without ``--log`` nothing here is imported and nothing changes. A tracker only
observes: it never changes what a cell computes or records.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from tgbench.errors import BadInput
from tgbench.locations import child_path, safe_name

KINDS = ("tensorboard", "wandb")


class Tracker(Protocol):
    def scalar(self, tag: str, value: float, step: int) -> None: ...

    def images(self, tag: str, grid: np.ndarray, step: int) -> None: ...   # (rows, classes, C, H, W) in [0, 1]

    def close(self) -> None: ...


def check_available(kinds: tuple[str, ...]) -> None:
    """Refuse a ``--log`` whose package is missing before any work (exit 2, one line)."""
    for kind in kinds:
        if kind not in KINDS:
            raise BadInput(f"--log: {kind!r} is not a tracker; use one of {', '.join(KINDS)}")
        if importlib.util.find_spec(kind) is None:
            raise BadInput(f"--log {kind}: the {kind} package is not installed (pip install {kind})")


def _mosaic(grid: np.ndarray) -> np.ndarray:
    """(rows, classes, C, H, W) -> one (C, rows*H, classes*W) image."""
    rows, classes, c, h, w = grid.shape
    return grid.transpose(2, 0, 3, 1, 4).reshape(c, rows * h, classes * w)


class TensorBoardTracker:
    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def scalar(self, tag: str, value: float, step: int) -> None:
        if value is not None:
            self.writer.add_scalar(tag, value, step)

    def images(self, tag: str, grid: np.ndarray, step: int) -> None:
        self.writer.add_image(tag, _mosaic(grid), step, dataformats="CHW")

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, log_dir: Path, group: str, name: str, config: dict):
        import wandb

        os.environ.setdefault("WANDB_MODE", "offline")
        log_dir.mkdir(parents=True, exist_ok=True)
        self.wandb = wandb
        self.run = wandb.init(project="tgbench", group=group, name=name, dir=str(log_dir), config=config,
                              reinit=True)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if value is not None:
            self.run.log({tag: value}, step=step)

    def images(self, tag: str, grid: np.ndarray, step: int) -> None:
        self.run.log({tag: self.wandb.Image(_mosaic(grid).transpose(1, 2, 0).squeeze())}, step=step)

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """Every tracker a cell was asked for, behind one ``Tracker`` interface (none: all calls do nothing)."""

    def __init__(self, trackers: list):
        self.trackers = trackers

    def scalar(self, tag: str, value: float, step: int) -> None:
        for t in self.trackers:
            t.scalar(tag, value, step)

    def images(self, tag: str, grid: np.ndarray, step: int) -> None:
        for t in self.trackers:
            t.images(tag, grid, step)

    def close(self) -> None:
        for t in self.trackers:
            t.close()


def open_trackers(kinds: tuple[str, ...], log_dir: str | None, suite: str, cell: str, config: dict) -> Trackers:
    """The trackers of one cell (``cell`` names its folder / run; ``config``: what W&B shows as the run config)."""
    if not kinds:
        return Trackers([])
    root = Path(log_dir)
    # suite and cell are user text (a label may read "../../x" or "/etc/x"): one safe name each, checked to
    # stay under the log folder; a plain cell "gtn|seed=0" keeps its folder "gtn_seed0"
    folder = safe_name(cell.replace("|", "_").replace("=", ""))
    made = []
    for kind in kinds:
        if kind == "tensorboard":
            made.append(TensorBoardTracker(child_path(root / "tensorboard", suite, folder)))
        elif kind == "wandb":
            made.append(WandbTracker(root / "wandb", suite, folder, config))
    return Trackers(made)

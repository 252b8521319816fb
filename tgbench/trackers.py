"""Experiment trackers: ``tgbench run --log tensorboard`` / ``--log wandb`` stream each cell's meta-loss (every
outer iteration), its periodic validation accuracy and, at the end, its sample grid; each run also carries the
cell's resolved hyperparameters (the suite at its profile and ``--set``, the arm, the seed; flattened to dotted
keys) and its final metrics (test/validation accuracy and loss after the last inner step, meta-training seconds):
TensorBoard's ``add_hparams`` (the HPARAMS tab), W&B's run config and summary.

Both need the ``log`` extra (``pip install "tgbench[log]"``). TensorBoard uses torch's own writer
(``torch.utils.tensorboard``); event files go to ``<report dir>/tensorboard/<suite>/<cell>/`` — point
``tensorboard --logdir`` at that folder. Weights & Biases follows its own environment variables: ``WANDB_PROJECT``
(default ``tgbench``), ``WANDB_DIR`` (default ``<report dir>/wandb``), ``WANDB_MODE`` and the rest; only when
``WANDB_MODE`` is unset and there is no login (no ``WANDB_API_KEY``, no api.wandb.ai entry in ``~/.netrc``) does
a run go offline (``wandb sync`` uploads it later) instead of waiting for a login prompt. Without ``--log``
nothing here is imported and nothing changes. A tracker only observes: it never changes what a cell computes or
records.
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

    def summary(self, metrics: dict[str, float]) -> None: ...   # the final metrics, once, with the hyperparameters

    def close(self) -> None: ...


# the record fields a tracker gets as the run's final metrics (those that are numbers)
FINAL_METRICS = ("test_acc_final", "val_acc_final", "test_loss_final", "val_loss_final", "meta_train_seconds",
                 "outer_iterations")


def final_metrics(fields: dict) -> dict[str, float]:
    """The finite numbers among a cell's final record fields (:data:`FINAL_METRICS`)."""
    import math

    return {k: float(fields[k]) for k in FINAL_METRICS
            if isinstance(fields.get(k), (int, float)) and math.isfinite(fields[k])}


def flat_hyperparameters(config: dict, prefix: str = "") -> dict[str, float | int | str | bool]:
    """A nested config as ``{dotted key: value}`` of the scalar types TensorBoard's ``add_hparams`` takes (lists
    and None as text)."""
    out: dict = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_hyperparameters(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def check_available(kinds: tuple[str, ...]) -> None:
    """Refuse a ``--log`` whose package is missing before any work (exit 2, one line)."""
    for kind in kinds:
        if kind not in KINDS:
            raise BadInput(f"--log: {kind!r} is not a tracker; use one of {', '.join(KINDS)}")
        if importlib.util.find_spec(kind) is None:
            raise BadInput(f"--log {kind}: the {kind} package is not installed (pip install \"tgbench[log]\", "
                           f"or pip install {kind})")


def _mosaic(grid: np.ndarray) -> np.ndarray:
    """(rows, classes, C, H, W) -> one (C, rows*H, classes*W) image."""
    rows, classes, c, h, w = grid.shape
    return grid.transpose(2, 0, 3, 1, 4).reshape(c, rows * h, classes * w)


class TensorBoardTracker:
    def __init__(self, log_dir: Path, hyperparameters: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.hyperparameters = flat_hyperparameters(hyperparameters)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if value is not None:
            self.writer.add_scalar(tag, value, step)

    def images(self, tag: str, grid: np.ndarray, step: int) -> None:
        self.writer.add_image(tag, _mosaic(grid), step, dataformats="CHW")

    def summary(self, metrics: dict[str, float]) -> None:
        # run_name ".": in the cell's own folder, not a time-stamped subfolder; "final/" keeps the metric tags
        # apart from the streamed series
        self.writer.add_hparams(self.hyperparameters, {f"final/{k}": v for k, v in metrics.items()}, run_name=".")

    def close(self) -> None:
        self.writer.close()


def _wandb_logged_in() -> bool:
    """A W&B login is there (an API key in the environment or ~/.netrc), so an online run will not prompt."""
    import netrc

    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracker:
    def __init__(self, log_dir: Path, group: str, name: str, config: dict):
        import wandb

        directory = Path(os.environ.get("WANDB_DIR") or log_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.wandb = wandb
        options = {} if os.environ.get("WANDB_MODE") or _wandb_logged_in() else {"mode": "offline"}
        # (no reinit: each cell's run is finished before the next starts; reinit=True is deprecated)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "tgbench", group=group, name=name,
                              dir=str(directory), config=config, **options)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if value is not None:
            self.run.log({tag: value}, step=step)

    def images(self, tag: str, grid: np.ndarray, step: int) -> None:
        self.run.log({tag: self.wandb.Image(_mosaic(grid).transpose(1, 2, 0).squeeze())}, step=step)

    def summary(self, metrics: dict[str, float]) -> None:
        self.run.summary.update(metrics)

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

    def summary(self, metrics: dict[str, float]) -> None:
        for t in self.trackers:
            t.summary(metrics)

    def close(self) -> None:
        for t in self.trackers:
            t.close()


def open_trackers(kinds: tuple[str, ...], log_dir: str | None, suite: str, cell: str, config: dict) -> Trackers:
    """The trackers of one cell (``cell`` names its folder / run; ``config``: its resolved hyperparameters, W&B's
    run config and TensorBoard's hparams)."""
    if not kinds:
        return Trackers([])
    root = Path(log_dir)
    # suite and cell are user text (a label may read "../../x" or "/etc/x"): one safe name each, checked to
    # stay under the log folder; a plain cell "gtn|seed=0" keeps its folder "gtn_seed0"
    folder = safe_name(cell.replace("|", "_").replace("=", ""))
    made = []
    for kind in kinds:
        if kind == "tensorboard":
            made.append(TensorBoardTracker(child_path(root / "tensorboard", suite, folder), config))
        elif kind == "wandb":
            made.append(WandbTracker(root / "wandb", suite, folder, config))
    return Trackers(made)

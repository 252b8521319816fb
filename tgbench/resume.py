"""Saved meta-training states: what lets a cell stopped mid-way (``kill -9``, SIGTERM, a lost machine) continue
from its last save instead of outer iteration 0, with the same final numbers as a run never stopped.

A ``SavedState`` is one file, written atomically (a temporary file in the same folder, fsync, ``os.replace``:
a kill mid-write leaves the previous state whole) and read back with ``torch.load(weights_only=True``) —
tensors and plain containers only, never unpickled code. It records who may continue from it: the format
version, the config hash of the cell, and the kind of device and TF32 setting it was computed with (a torch
generator's state is device-specific, and the numbers of the rest of the run would be another device's). A
file that does not match is ignored with a one-line note, never mixed into the run.

What goes into the file is the caller's (``tgbench.cells.meta_train``: the ``MetaTrainer``'s state plus the
curve and seconds so far); this module only keeps it safe.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch

from tgbench.store import NoSpaceLeft, write_found_disk_full

FORMAT = 1   # bump when what meta_train saves changes shape: older files are then ignored, never misread


class SavedState:
    """The saved state of one meta-training at ``path`` (``Store.saved_state_path`` for a cell), valid for a
    run whose ``config_hash`` and device match; ``label`` names it in notes (a cell key)."""

    def __init__(self, path: str | Path, config_hash: str, device: torch.device, label: str):
        self.path, self.label = Path(path), label
        self.identity = {"format": FORMAT, "config_hash": config_hash, "device": torch.device(device).type,
                         "tf32": bool(torch.backends.cuda.matmul.allow_tf32)}

    def save(self, state: dict) -> None:
        """Write ``state`` (tensors, moved to the CPU, and python values) with this run's identity, atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"identity": self.identity, "state": _to_cpu(state)}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f"{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(payload, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, Exception) and write_found_disk_full(exc, self.path.parent):
                raise NoSpaceLeft(f"no space left on {self.path.parent} (saving {self.label}'s meta-training "
                                  "state); free some space and run again: the cell resumes from its last saved "
                                  "state") from None
            raise
        _fsync_folder(self.path.parent)  # (the rename itself survives a lost machine)

    def load(self) -> dict | None:
        """The saved state, or None when there is none or it is not this run's (then a one-line note says why)."""
        if not self.path.is_file():
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unreadable or not plain data: start over rather than guess
            first_line = (str(exc).splitlines() or [""])[0]
            return self.ignored(f"it cannot be read: {type(exc).__name__}: {first_line}")
        if not isinstance(payload, dict) or not isinstance(payload.get("identity"), dict) or "state" not in payload:
            return self.ignored("it is not a saved meta-training state")
        theirs = payload["identity"]
        for key, mine in self.identity.items():
            if theirs.get(key) != mine:
                return self.ignored(f"its {key.replace('_', ' ')} is {theirs.get(key)!r}, this run's is {mine!r}")
        return payload["state"]

    def remove(self) -> None:
        """Delete the state and any temporary file a killed save left next to it."""
        self.path.unlink(missing_ok=True)
        for leftover in self.path.parent.glob(f"{self.path.name}.*.tmp"):
            leftover.unlink(missing_ok=True)

    def ignored(self, why: str) -> None:
        """Say, in one line, that this saved state is not used, and why."""
        print(f"tgbench: note: {self.label}: ignoring the saved state {self.path} ({why}); starting from iteration 0",
              file=sys.stderr)
        return None


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # (not on every platform)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

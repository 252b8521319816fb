"""Writing a report's files so that a report that fails half-way leaves the previous one untouched.

Every report (few-step, NAS, tune, leaderboard) is written first into a fresh staging directory on the same file
system and only then moved into place file by file with ``os.replace``, in the order the report lists them (its
Markdown last, so a reader never sees a report.md whose CSVs or figures are still the old ones). A matplotlib
error, a full disk or a Ctrl-C while rendering leaves nothing half-written. Files in the report directory that
the report does not write (a run log, an older report's figures) are left alone.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def write_atomically(out_dir: Path, write: Callable[[Path], list[Path]], stage_inside: bool = False) -> list[Path]:
    """Call ``write(staging)`` — it writes every file of the report under ``staging`` and returns their paths,
    in the order they should appear — then move each to the same relative path under ``out_dir``.

    The staging directory is ``<out_dir>.tmp-XXXX`` next to ``out_dir`` (inside ``out_dir`` when its parent is
    not writable, or with ``stage_inside``: for a folder shared with other things, e.g. the leaderboard's
    ``results/``). Returns the paths written under ``out_dir``. A directory in the way of a report file is an
    error before anything is moved.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = _inside(out_dir) if stage_inside else staging_dir(out_dir)
    try:
        names = [Path(p).relative_to(staging) for p in write(staging)]
        targets = [out_dir / name for name in names]
        blocked = [t for t in targets if t.is_dir()]
        if blocked:
            raise IsADirectoryError(errno.EISDIR, "a directory is in the way of a report file", str(blocked[0]))
        for name, target in zip(names, targets):
            target.parent.mkdir(parents=True, exist_ok=True)
            move_into_place(staging / name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return targets


def staging_dir(out_dir: Path) -> Path:
    """A fresh temporary directory on the same file system as ``out_dir`` (so moving out of it is a rename)."""
    target = out_dir.resolve()
    try:
        return Path(tempfile.mkdtemp(prefix=f"{target.name[:100]}.tmp-", dir=target.parent))
    except OSError:  # the parent is not ours to write (e.g. --out /srv/reports): stage inside out_dir itself
        return _inside(target)


def _inside(out_dir: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix=".report.tmp-", dir=out_dir.resolve()))


def move_into_place(src: Path, dst: Path) -> None:
    try:
        os.replace(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:  # out_dir is a mount point: its sibling is on another file system
            raise
        shutil.copy2(src, dst)

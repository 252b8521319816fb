"""Output locations (report folder, SQLite store, teacher artifacts), checked before any work starts: a run that
trained for an hour must not then find it cannot write. Nothing is created by a check."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tgbench.config import Suite
from tgbench.errors import BadInput
from tgbench.store import artifacts_location, resolve_url, sqlite_path


def writable_out_dir(out: str | None, suite: Suite, profile: str) -> Path:
    """The report directory, created, after a write test (``BadInput`` naming ``--out`` if it fails)."""
    out_dir = out_location(out, suite, profile)
    check_writable_dir(out_dir, "--out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe_write(out_dir)
    except OSError as exc:
        raise BadInput(f"--out: cannot write to {out_dir}: {exc.strerror or exc}") from None
    return out_dir


def out_location(out: str | None, suite: Suite, profile: str) -> Path:
    return Path(out) if out else Path("results") / suite.name / profile


def probe_write(folder: Path) -> None:
    """Create and remove a uniquely named file in ``folder`` (workers sharing a folder never race on it)."""
    fd, probe = tempfile.mkstemp(prefix=".tgbench-write-test-", dir=folder)
    os.close(fd)
    os.unlink(probe)


def check_writable_dir(folder: Path, flag: str) -> None:
    """``BadInput`` naming ``flag`` unless ``folder`` is a directory this process can write, or could be
    created as one. Creates nothing that is not there: the first existing ancestor must be a writable
    directory; an existing ``folder`` gets a write test."""
    folder = Path(folder)
    existing = folder
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if existing == folder and folder.is_dir():
        try:
            probe_write(folder)
        except OSError as exc:
            raise BadInput(f"{flag}: cannot write to {folder}: {exc.strerror or exc}") from None
    elif existing == folder:
        raise BadInput(f"{flag}: cannot write to {folder}: it exists and is not a directory")
    elif not existing.is_dir():
        raise BadInput(f"{flag}: cannot write to {folder} (cannot create it: {existing} is not a directory)")
    elif not os.access(existing, os.W_OK | os.X_OK):
        raise BadInput(f"{flag}: cannot write to {folder} (cannot create it: {existing} is not writable)")


def check_output_locations(storage: str | None, artifacts_dir: str | None) -> None:
    """Before any work starts: the SQLite store's file and the teacher artifact directory must be writable or
    creatable (the report directory is checked by ``writable_out_dir``). A cell that trains and then cannot
    save its teacher would be lost, its claim left running. Nothing is created here."""
    db = sqlite_path(resolve_url(storage))
    if db is not None:
        if db.is_dir():
            raise BadInput(f"--storage: cannot use {db}: it is a directory, not an SQLite file")
        if db.exists() and not os.access(db, os.R_OK | os.W_OK):
            raise BadInput(f"--storage: cannot write to {db}: the file is read-only")
        check_writable_dir(db.parent, "--storage")
    artifacts, flag = artifacts_location(storage, artifacts_dir)
    check_writable_dir(artifacts, flag)

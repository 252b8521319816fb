"""Output locations: the one function that turns user text into a file name, and the checks of the report
folder before any work starts (a run that trained for an hour must not then find it cannot write).

Every path tgbench derives from user text (a source label, a suite name, a cell key: report folders, figure
files, tracker runs) goes through :func:`child_path`, which maps the text to a safe file name
(:func:`safe_name`) and checks that the result stays under its parent: a suite someone shares cannot make a run
write outside its output, artifact or log folder, whatever its labels say (``../../x``, ``/etc/x``). Labels
themselves are checked when a suite loads (:func:`label_problem`). Nothing is created by a check.

A low module: it imports nothing of tgbench but ``errors``, so the store, the configuration, the reports and
the trackers can all use it.
"""
from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
import unicodedata
from pathlib import Path
from typing import Any

from tgbench.errors import BadInput

NAME_LIMIT = 80          # characters of a safe name before it is cut and ends in a hash of the whole text
LABEL_LIMIT = 200        # characters of a source label (a suite name has the same limit)
# one `_` per character outside the set (not per run): the rule Store.saved_state_path always used, so a saved
# meta-training state keeps its file name (`backprop[steps=16]|seed=2` -> `backprop_steps_16__seed_2-<hash>.pt`)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def text_hash(text: Any) -> str:
    """10 hex digits of the SHA-256 of ``text``: what keeps two cut or rewritten names distinct."""
    return hashlib.sha256(str(text).encode("utf-8", "surrogatepass")).hexdigest()[:10]


def safe_name(text: Any) -> str:
    """A file-name-safe, bounded form of ``text``: each character other than an ASCII letter, a digit, ``.``,
    ``_`` or ``-`` becomes ``_``; a name that starts with a dot (``..``, a hidden file) gets a ``_`` in front;
    one longer than ``NAME_LIMIT`` is cut there and ends in ``-<hash of the full text>``. Never empty, never
    ``.`` or ``..``, never holding a path separator or a control character. Plain names (``mnist_fewstep``,
    ``gtn``) stay as they are."""
    name = _UNSAFE.sub("_", str(text)) or "_"
    if name.startswith("."):
        name = "_" + name
    if len(name) > NAME_LIMIT:
        name = f"{name[:NAME_LIMIT]}-{text_hash(text)}"
    return name


def child_path(parent: str | Path, *texts: Any) -> Path:
    """``parent / safe_name(t1) / safe_name(t2) ...``, checked to stay under ``parent`` once both are resolved
    (a symbolic link inside ``parent`` pointing elsewhere is refused too): ``BadInput`` otherwise."""
    parent = Path(parent)
    path = parent.joinpath(*(safe_name(t) for t in texts))
    check_under(parent, path)
    return path


def check_under(parent: str | Path, path: str | Path) -> Path:
    """``path`` if it resolves to ``parent`` or below it, else ``BadInput`` naming both."""
    root = Path(os.path.abspath(parent)).resolve()
    target = Path(os.path.abspath(path)).resolve()
    if target != root and root not in target.parents:
        raise BadInput(f"{path}: a path built from user text leaves its folder {parent}; refusing to write there")
    return Path(path)


def label_problem(label: str) -> str | None:
    """What is wrong with a source label, or ``None``: a label names an arm in tables, the store's cell keys and
    (through :func:`safe_name`) files, so it is 1 to ``LABEL_LIMIT`` characters without control characters
    (newline, NUL, tab ...) or surrounding spaces."""
    if not label.strip():
        return "a label must not be empty"
    if len(label) > LABEL_LIMIT:
        return f"a label is at most {LABEL_LIMIT} characters (this one has {len(label)})"
    bad = next((c for c in label if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")), None)
    if bad is not None:
        return f"a label must not hold control characters (found {bad!r})"
    if label != label.strip():
        return "a label must not start or end with spaces"
    return None


def writable_out_dir(out: str | None, suite: Any, profile: str) -> Path:
    """The report directory, created, after a write test (``BadInput`` naming ``--out`` if it fails)."""
    out_dir = out_location(out, suite, profile)
    check_writable_dir(out_dir, "--out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe_write(out_dir)
    except OSError as exc:
        raise BadInput(f"--out: cannot write to {out_dir}: {exc.strerror or exc}") from None
    return out_dir


def out_location(out: str | None, suite: Any, profile: str) -> Path:
    """``--out``, else ``results/<suite name>/<profile>`` (through :func:`child_path`)."""
    return Path(out) if out else child_path("results", suite.name, profile)


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


# ------------------------------------------------------------------------------------------ reading inputs
MAX_TEXT_BYTES = 4 * 1024 * 1024     # a suite, an included file, a lesson file: real ones are a few KB


def check_regular_file(path: str | Path, what: str = "file") -> Path:
    """``path`` if it is a regular file (following links); a FIFO, a device, a socket or a directory is
    ``BadInput`` at once: reading one would block forever (a FIFO nobody writes) or never end (``/dev/zero``).
    A missing file raises ``FileNotFoundError`` for the caller to word."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        raise BadInput(f"{path}: cannot read the {what}: it is {kind}, not a regular file")
    return Path(path)


def read_text_capped(path: str | Path, what: str = "file", limit: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes (``BadInput`` naming the file otherwise).
    Opened without blocking, so a FIFO swapped in after the check is refused rather than waited on; read in one
    bounded call, so a file that grows while being read cannot exhaust memory. ``FileNotFoundError``,
    ``UnicodeDecodeError`` and other ``OSError`` pass to the caller to word."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            check_regular_file(path, what)   # (words the refusal)
            raise BadInput(f"{path}: cannot read the {what}: not a regular file")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise BadInput(f"{path}: the {what} is larger than {limit // (1024 * 1024)} MB; refusing to read it")
    return data.decode("utf-8")

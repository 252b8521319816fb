"""Provenance: what every record, report and leaderboard says about how it was made (revision, machine, command
line), and the default profile of this machine.

:func:`report_provenance` is the one place a report's provenance is assembled — the few-step, NAS and tune
reports and the leaderboard all call it; ``tgbench.reporting`` renders what it returns.
"""
from __future__ import annotations

import datetime as dt
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch


def default_profile(device: torch.device) -> str:
    """The profile a run gets when none is named: ``paper`` on the GPU it will actually use, else ``cpu``."""
    return "paper" if device.type == "cuda" else "cpu"


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip()
        return (rev + ("-dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> str:
    """The machine a report is written on, spelt out: architecture, the CPU cores it has (and how many this
    process may use), and the torch threads this process runs with (a cell records its own: ``threads``)."""
    import os

    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    arch = f"{platform.machine()} {platform.processor() or ''}".strip()
    return (f"{arch}, {cores} CPU cores ({usable} usable here), torch threads {torch.get_num_threads()} in the "
            "process that wrote this")


def command_line() -> str:
    args = [Path(sys.argv[0]).name] + sys.argv[1:]
    return " ".join(args)


VERSIONED_PACKAGES = ("tgbench", "torch", "torchvision", "numpy", "scipy", "pandas", "optuna", "pydantic")
HIDE_HOSTNAME_VAR = "TGBENCH_HIDE_HOSTNAME"   # set to 1: records carry a hash of the host name, not the name


def versions() -> dict[str, str | None]:
    """Python and the installed versions of the packages a result depends on (read from the package metadata:
    nothing is imported, so this costs nothing on the smoke path)."""
    from importlib import metadata

    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    found["torch"] = torch.__version__  # (with its build tag, e.g. +cu130: which CUDA the wheel was built for)
    return found


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hostname() -> str:
    """The host name, or (``$TGBENCH_HIDE_HOSTNAME=1``) a short hash of it: still tells machines apart."""
    import hashlib
    import os

    name = platform.node()
    if os.environ.get(HIDE_HOSTNAME_VAR, "") not in ("", "0"):
        return "sha256:" + hashlib.sha256(name.encode()).hexdigest()[:12]
    return name


def reproducibility() -> dict:
    """What a reviewer needs to rerun a record: versions, CPU, host, threads and the exact command."""
    return {"versions": versions(), "cpu_model": cpu_model(), "hostname": hostname(),
            "threads": torch.get_num_threads(), "command": command_line()}


@dataclass(frozen=True)
class Provenance:
    """How a report was made. ``revision`` and ``device`` say where its *results* were computed (every revision
    and device label of its records, joined) when the report knows its records, else this checkout's revision
    and no device; ``machine``, ``versions`` and ``created`` are where and when the report itself was written."""

    suite: str | None
    profile: str | None
    revision: str
    command: str
    overrides: tuple[str, ...]
    machine: str
    versions: dict[str, str | None]
    created: str                       # ISO time, UTC, seconds
    device: str | None = None

    def as_meta(self) -> dict[str, Any]:
        """The mapping a report renders (``tgbench.reporting.markdown.header_lines`` and the tune and leaderboard
        headers): ``suite, profile, revision, command, overrides, machine, created, torch`` and ``device`` when
        known. A kind adds its own facts (dataset, store, protocol ...) to it."""
        meta = {"suite": self.suite, "profile": self.profile, "revision": self.revision, "command": self.command,
                "overrides": self.overrides, "machine": self.machine, "created": self.created,
                "torch": self.versions["torch"]}
        if self.device is not None:
            meta["device"] = self.device
        return meta


def report_provenance(*, suite: str | None = None, profile: str | None = None, command: str = "",
                      overrides: Iterable[str] = (), revisions: Iterable[str] | None = None,
                      devices: Iterable[str] | None = None) -> Provenance:
    """The provenance of a report written now, on this machine, by ``command``.

    ``suite``/``profile``: what the report is about (none for the leaderboard). ``command`` empty: the command
    that runs the suite (``tgbench run <suite> --profile <profile>``), or without a suite this process's command
    line. ``revisions``/``devices``: those of the records behind the report, each distinct one listed sorted
    (None: not known, so the revision is this checkout's and there is no device line).
    """
    if not command:
        command = f"tgbench run {suite} --profile {profile}" if suite is not None else command_line()
    revision = git_revision() if revisions is None else ", ".join(sorted(set(revisions)))
    device = None if devices is None else ", ".join(sorted(set(devices)))
    return Provenance(suite=suite, profile=profile, revision=revision, command=command, overrides=tuple(overrides),
                      machine=machine(), versions=versions(),
                      created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), device=device)

"""Provenance: what every record, report and leaderboard says about how it was made (revision, machine, command
line), and the default profile of this machine."""
from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

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
    return f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".replace("  ", " ")


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

"""Provenance: what every record, report and leaderboard says about how it was made (revision, machine, command
line), and the default profile of this machine."""
from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import torch


def default_profile() -> str:
    return "paper" if torch.cuda.is_available() else "cpu"


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

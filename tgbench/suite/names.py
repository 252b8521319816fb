"""Profiles and suite names: the shipped suites installed with the package, and what a command's suite argument
means."""
from __future__ import annotations

import difflib
from pathlib import Path

from tgbench.errors import ConfigError

PROFILES = ("smoke", "cpu", "paper")
# The shipped suites, installed with the package (pyproject.toml's package data), so a suite is also a name that
# works from any directory; the repository's suites/ is a link to this folder.
INSTALLED_SUITES = Path(__file__).resolve().parents[1] / "suites"


def installed_suites() -> dict[str, Path]:
    """Name (the file's stem) -> file of every suite installed with tgbench, sorted by name."""
    return {p.stem: p for p in sorted(INSTALLED_SUITES.glob("*.yaml"))}


def resolve_suite(ref: str | Path) -> Path:
    """The file a command's suite argument means: a path that exists always wins; else the name of an installed
    suite (``tgbench run mnist_fewstep`` from any directory); else, when it reads as a file name (a ``.yaml``
    suffix or a folder in it), that path, so that loading it says the file is missing. Anything else is an unknown
    name: one ``ConfigError`` line with the closest installed names."""
    path = Path(ref)
    if path.exists():
        return path
    installed = installed_suites()
    if str(ref) in installed:
        return installed[str(ref)]
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path
    close = difflib.get_close_matches(str(ref), list(installed), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ConfigError(f"{ref}: no such suite file and no installed suite of that name; {hint}installed: "
                      f"{', '.join(installed) or 'none'} (tgbench list suites)")

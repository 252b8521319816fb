"""Small helpers shared by several test modules (imported as ``from helpers import ...``)."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from tgbench.cli import main


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``main(argv)``; argparse usage errors exit via SystemExit."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def studies(db: Path) -> list[str]:
    """Names of the studies in a SQLite store ([] when the file or its tables do not exist)."""
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        try:
            return [r[0] for r in con.execute("select study_name from studies")]
        except sqlite3.OperationalError:  # no tables at all
            return []

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


def exported_teacher(folder: Path, suite: dict, source: str = "real") -> Path:
    """Run ``suite`` (a suite as a dict, profile ``smoke``) into a store in ``folder`` and export ``source``'s
    seed-0 teacher to ``folder/teacher.pt``; its path."""
    import yaml

    path, url = folder / f"{suite['name']}.yaml", f"sqlite:///{folder}/s.db"
    path.write_text(yaml.safe_dump(suite))
    for argv in (["run", str(path), "--profile", "smoke", "--no-progress", "--storage", url,
                  "--out", str(folder / "o")],
                 ["export", "--suite", str(path), "--profile", "smoke", "--source", source, "--storage", url,
                  "--out", str(folder / "teacher.pt")]):
        assert main(argv) == 0
    return folder / "teacher.pt"

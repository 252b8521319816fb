"""Bad input that reaches tgbench through plugins and teacher files: a ``--methods-dir`` plugin that raises on
import, and a corrupt teacher file given to ``tgbench teach``. Both features come from other branches; each
test skips until its feature is present, then holds it to the bad-input contract: exit 2, one stderr line
naming the file, no traceback, nothing written to the store.
"""
from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

import pytest

from tgbench.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "suites" / "mnist_fewstep.yaml"


def _subcommand(name: str) -> argparse.ArgumentParser | None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices.get(name)


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("tgbench: error: ")
    # the error is about the file, not about how the test called the command
    assert "unrecognized arguments" not in lines[0] and "required" not in lines[0], lines[0]
    return lines[0]


def _no_store(tmp: Path) -> None:
    for db in tmp.rglob("*.db"):
        with sqlite3.connect(db) as con:
            tables = [r[0] for r in con.execute("select name from sqlite_master where type = 'table'")]
            assert "studies" not in tables or not list(con.execute("select * from studies")), db


def test_plugin_that_raises_on_import_is_named_not_a_traceback(tmp_path, capsys, monkeypatch):
    run = _subcommand("run")
    if run is None or "--methods-dir" not in run._option_string_actions:
        pytest.skip("tgbench run --methods-dir is not merged yet")
    monkeypatch.delenv("TGBENCH_STORAGE", raising=False)
    monkeypatch.delenv("TGBENCH_DEBUG", raising=False)
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "exploding.py").write_text("raise RuntimeError('plugin exploded at import')\n")
    code, err = _cli(["run", str(SHIPPED), "--profile", "smoke", "--no-progress", "--methods-dir", str(plugins),
                      "--storage", f"sqlite:///{tmp_path}/t.db", "--out", str(tmp_path / "out")], capsys)
    assert code == 2, err
    line = _one_error_line(err)
    assert "exploding.py" in line and "plugin exploded at import" in line
    _no_store(tmp_path)


def test_corrupt_teacher_file_is_bad_input(tmp_path, capsys, monkeypatch):
    pytest.importorskip("tgbench.teach")
    if _subcommand("teach") is None:
        pytest.skip("tgbench teach is not merged yet")
    monkeypatch.delenv("TGBENCH_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    corrupt = tmp_path / "teacher.pt"
    corrupt.write_bytes(b"this is not a saved teacher\x00\xff" * 20)
    code, err = _cli(["teach", str(corrupt)], capsys)
    assert code == 2, err
    assert "teacher.pt" in _one_error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher.pt"]  # nothing written


FAILING_PLUGIN = """\
import sys
import torch
from tgbench.methods.real import RealData


class {cls}(RealData):
    description = "real data whose lessons fail (a test plug-in)"

    def forward(self, t, episode):
        {body}


METHODS = {{"{name}": {cls}}}
"""
FAILING_SUITE = """\
name: isolation
dataset: {{name: mnist-5k}}
learner: {{conv_channels: [[4]], fc_hidden: [[8]], batch_norm: false}}
inner: {{steps: 2, batch_size: 10}}
outer: {{iterations: 2, meta_batch_size: 16}}
evaluation: {{seeds: 1, eval_every: 1, eval_learners: 1, final_learners: 1, held_out: {{}}}}
sources:
  - method: {name}
  - method: real
profiles:
  smoke: {{}}
"""


@pytest.mark.parametrize("name, body", [("raises_in_forward", "raise RuntimeError('lesson exploded')"),
                                        ("exits_in_forward", "sys.exit(7)")])
def test_a_failing_plugin_fails_its_own_cells_and_the_suite_goes_on(name, body, tmp_path, capsys, monkeypatch):
    """A plug-in whose ``forward`` raises (or calls ``sys.exit(7)``) fails its own cell, named in the store and
    in one summary line; the other arm still runs and the report is written; the exit code is 1, never the
    plug-in's own."""
    monkeypatch.delenv("TGBENCH_STORAGE", raising=False)
    monkeypatch.delenv("TGBENCH_DEBUG", raising=False)
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / f"{name}.py").write_text(FAILING_PLUGIN.format(cls="Failing", name=name, body=body))
    suite = tmp_path / "isolation.yaml"
    suite.write_text(FAILING_SUITE.format(name=name))
    code, err = _cli(["run", str(suite), "--profile", "smoke", "--no-progress", "--methods-dir", str(plugins),
                      "--storage", f"sqlite:///{tmp_path}/t.db", "--out", str(tmp_path / "out")], capsys)
    assert code == 1, err
    [line] = err.strip().splitlines()
    why = "RuntimeError: lesson exploded" if name == "raises_in_forward" else "SystemExit: 7"
    assert line.startswith(f"tgbench: error: {why} in cell {name}|seed=0 (marked failed"), err
    from tgbench.store import Store

    records = {r.source: r for r in Store(f"sqlite:///{tmp_path}/t.db").records(
        Store(f"sqlite:///{tmp_path}/t.db").study("isolation@smoke", create=False))}
    assert records[name].status == "failed" and records["real"].status == "complete"
    assert (tmp_path / "out" / "report.md").is_file()

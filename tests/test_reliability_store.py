"""Another application's SQLite file is never modified (issue 27).

A database that merely had a table called ``studies`` (or ``trials``, ``version_info``, ``alembic_version``) passed
the old check, got Optuna's tables added beside its own, and the run then died with exit 1. A store is now
recognised by its full schema and version (``tgbench.store.store_problem``) before Optuna touches it; anything else
is exit 2, one line, and the file's bytes are unchanged.
"""
from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
import yaml

from tgbench.store import Store

from helpers import cli

TINY = {"kind": "fewstep", "dataset": {"name": "mnist-5k"}, "learner": {"conv_channels": [[2]], "fc_hidden": [[4]]},
        "inner": {"steps": 2, "batch_size": 8}, "outer": {"iterations": 1, "meta_batch_size": 8},
        "evaluation": {"seeds": 1, "eval_every": 1, "eval_learners": 1, "final_learners": 1},
        "profiles": {"smoke": {}}, "sources": [{"method": "real"}]}


def _suite(tmp_path: Path) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "st", **TINY}))
    return path


def _foreign(path: Path, table: str) -> bytes:
    with sqlite3.connect(path) as con:
        con.execute(f'create table "{table}" (id integer primary key, note text)')
        con.execute(f'insert into "{table}" (note) values (?)', ("someone else's data " * 20,))
    con.close()
    return path.read_bytes()


def _assert_refused_untouched(tmp_path, capsys, db: Path, before: bytes, argv: list[str]):
    code, _, err = cli(argv, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and str(db) in err and "not a tgbench store" in err
    assert db.read_bytes() == before
    assert sorted(p.name for p in db.parent.iterdir() if p.name.startswith(db.name)) == [db.name]  # no journal


@pytest.mark.parametrize("table", ["studies", "trials", "version_info", "alembic_version"])
def test_a_database_with_one_optuna_table_name_is_refused_and_left_byte_for_byte(tmp_path, capsys, table):
    db = tmp_path / "theirs.db"
    before = _foreign(db, table)
    _assert_refused_untouched(tmp_path, capsys, db, before,
                              ["run", str(_suite(tmp_path)), "--profile", "smoke", "--no-progress",
                               "--storage", f"sqlite:///{db}", "--out", str(tmp_path / "out")])


def test_leaderboard_refuses_a_foreign_database_too(tmp_path, capsys):
    db = tmp_path / "theirs.db"
    before = _foreign(db, "studies")
    _assert_refused_untouched(tmp_path, capsys, db, before,
                              ["leaderboard", "--storage", f"sqlite:///{db}", "--out", str(tmp_path / "b.md")])


def _real_store(path: Path) -> None:
    store = Store(f"sqlite:///{path}")
    store.study("x@smoke")
    store.storage.engine.dispose()


def test_optunas_schema_with_one_more_table_or_a_changed_column_is_refused(tmp_path, capsys):
    extra = tmp_path / "extra.db"
    _real_store(extra)
    with sqlite3.connect(extra) as con:
        con.execute("create table invoices (id integer primary key)")
    con.close()
    before = extra.read_bytes()
    _assert_refused_untouched(tmp_path, capsys, extra, before,
                              ["leaderboard", "--storage", f"sqlite:///{extra}", "--out", str(tmp_path / "b.md")])
    changed = tmp_path / "changed.db"
    _real_store(changed)
    with sqlite3.connect(changed) as con:
        con.execute("alter table studies add column owner text")
    con.close()
    before = changed.read_bytes()
    _assert_refused_untouched(tmp_path, capsys, changed, before,
                              ["leaderboard", "--storage", f"sqlite:///{changed}", "--out", str(tmp_path / "b.md")])


def test_a_finished_command_leaves_the_whole_store_in_its_file(tmp_path, capsys):
    """The store runs in WAL mode (commits do not wait for fsync); when a command ends, its connections close
    and fold the log into the file, so the file alone — what a user copies — holds every record, even when the
    command ran inside a longer-lived process (a notebook, these tests)."""
    import shutil

    db = tmp_path / "s.db"
    code, _, err = cli(["run", str(_suite(tmp_path)), "--profile", "smoke", "--no-progress",
                        "--storage", f"sqlite:///{db}", "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("s.db")) == ["s.db"]   # no -wal, -shm
    shutil.copy(db, tmp_path / "copy.db")
    copy = Store(f"sqlite:///{tmp_path / 'copy.db'}")
    assert copy.done_cells(copy.study("st@smoke", create=False))   # the finished cell is in the copy


def test_a_real_store_and_an_empty_database_are_accepted(tmp_path):
    store = tmp_path / "ours.db"
    _real_store(store)
    Store(f"sqlite:///{store}").storage.engine.dispose()   # reopened without complaint
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    Store(f"sqlite:///{empty}").storage.engine.dispose()
    from tgbench.store import optuna_schema

    tables, revisions = optuna_schema()
    assert {"studies", "trials", "version_info", "alembic_version"} <= set(tables) and revisions


def test_a_store_being_created_is_waited_for_then_refused_if_it_stays_incomplete(tmp_path, monkeypatch):
    """Two workers started together on a new file: one finds the tables the other is creating. Only Optuna's
    tables with Optuna's columns, some missing: tgbench waits (``CREATION_WAIT_SECONDS``) instead of refusing at
    once, and refuses a file that stays so."""
    import sqlite3
    import time

    from tgbench import store as store_module
    from tgbench.errors import BadInput

    path = tmp_path / "partial.db"
    con = sqlite3.connect(path)
    con.execute("create table alembic_version (version_num varchar(32) not null primary key)")
    con.commit()
    con.close()
    before = path.read_bytes()
    monkeypatch.setattr(store_module, "CREATION_WAIT_SECONDS", 1.0)
    start = time.monotonic()
    with pytest.raises(BadInput, match="incomplete store"):
        store_module.refuse_foreign_sqlite(f"sqlite:///{path}")
    assert time.monotonic() - start >= 1.0 and path.read_bytes() == before


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_a_store_whose_writer_was_killed_mid_transaction_opens(tmp_path, journal):
    """kill -9 during a write leaves a hot journal; a read-only look at the schema cannot roll it back ("attempt
    to write a readonly database"), and the rerun of a killed run was refused as "not an SQLite database tgbench
    can use" (seen in .ci/run's kill -9 test). The journal is rolled back, as any SQLite client does. tgbench's
    stores are in WAL mode (``store.commit_without_fsync``), where the kill leaves a write-ahead log instead; one
    an older tgbench wrote is in rollback mode ("delete")."""
    import subprocess
    import sys

    from tgbench.store import Store

    db = tmp_path / "s.db"
    store = Store(f"sqlite:///{db}")
    store.study("s@smoke")
    store.storage.engine.dispose()
    with contextlib.closing(sqlite3.connect(db)) as con:
        assert con.execute("pragma journal_mode").fetchone() == ("wal",)
        if journal == "delete":
            assert con.execute("pragma journal_mode=delete").fetchone() == ("delete",)
    writer = ("import sqlite3, time\ncon = sqlite3.connect(%r, isolation_level=None)\n"
              "con.execute('pragma cache_size=1')\ncon.execute('begin immediate')\n"
              "con.execute('create table filler(x)')\n"
              "con.executemany('insert into filler values (?)', [('x' * 500,)] * 2000)\n"
              "print('ready', flush=True)\ntime.sleep(60)\n") % str(db)
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    proc.kill()
    proc.wait()
    assert (tmp_path / ("s.db-journal" if journal == "delete" else "s.db-wal")).exists()
    reopened = Store(f"sqlite:///{db}")
    assert reopened.study("s@smoke", create=False) is not None
    with reopened.storage.engine.connect() as con:   # an existing store keeps its mode (an older tgbench's run
        assert con.exec_driver_sql("pragma journal_mode").scalar() == journal   # may still be writing it)

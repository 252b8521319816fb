"""Two stores that hold records of the same arm (study, source, config hash) (issue 27): a copied store's identical
records used to rank twice, and conflicting records both ranked with nothing to tell them apart. Now identical
records rank once, and conflicting ones are refused (exit 2) naming both stores: a leaderboard row is one
measurement of one configuration, so the user names the store to trust, or merges them."""
from __future__ import annotations

import shutil
import sqlite3

import pandas as pd
import pytest
import yaml

from helpers import cli

TINY = {"kind": "fewstep", "dataset": {"name": "mnist-5k"}, "learner": {"conv_channels": [[2]], "fc_hidden": [[4]]},
        "inner": {"steps": 2, "batch_size": 8}, "outer": {"iterations": 1, "meta_batch_size": 8},
        "evaluation": {"seeds": 1, "eval_every": 1, "eval_learners": 1, "final_learners": 1, "held_out": {}},
        "profiles": {"smoke": {}}, "sources": [{"method": "real"}]}


@pytest.fixture(scope="module")
def store_a(tmp_path_factory):
    folder = tmp_path_factory.mktemp("board")
    suite = folder / "board.yaml"
    suite.write_text(yaml.safe_dump({"name": "board", **TINY}))
    db = folder / "a.db"
    from tgbench.cli import main

    assert main(["run", str(suite), "--profile", "smoke", "--no-progress", "--storage", f"sqlite:///{db}",
                 "--out", str(folder / "out")]) == 0
    return db


def _board(tmp_path, capsys, *dbs):
    argv = ["leaderboard", "--out", str(tmp_path / "LEADERBOARD.md")]
    for db in dbs:
        argv += ["--storage", f"sqlite:///{db}"]
    return cli(argv, capsys)


def test_a_copied_store_ranks_its_records_once(store_a, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    copy = tmp_path / "copy.db"
    shutil.copy(store_a, copy)
    code, _, err = _board(tmp_path, capsys, store_a, copy)
    assert code == 0, err
    assert len(pd.read_csv(tmp_path / "LEADERBOARD.csv")) == 1


def test_conflicting_records_are_refused_naming_both_stores(store_a, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "other.db"
    shutil.copy(store_a, other)
    with sqlite3.connect(other) as con:   # the same cell, another result (as another machine may have measured)
        changed = con.execute("update trial_user_attributes set value_json = '0.123' "
                              "where key = 'test_acc_final'").rowcount
    assert changed >= 1   # (the data ceiling records one too)
    code, _, err = _board(tmp_path, capsys, store_a, other)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert str(store_a) in lines[0] and str(other) in lines[0] and "'real'" in lines[0] and "seed(s) 0" in lines[0]
    assert not (tmp_path / "LEADERBOARD.md").exists()

"""``tgbench leaderboard --storage A --storage A`` ranks each record once (issue 27): the same store named twice
(under the same path or another path to the same SQLite file) doubled every row."""
from __future__ import annotations

import pandas as pd
import yaml

from tgbench.cli import distinct_stores

from helpers import cli

TINY = {"kind": "fewstep", "dataset": {"name": "mnist-5k"}, "learner": {"conv_channels": [[2]], "fc_hidden": [[4]]},
        "inner": {"steps": 2, "batch_size": 8}, "outer": {"iterations": 1, "meta_batch_size": 8},
        "evaluation": {"seeds": 1, "eval_every": 1, "eval_learners": 1, "final_learners": 1},
        "profiles": {"smoke": {}}, "sources": [{"method": "real"}]}


def test_one_store_named_twice_is_read_once(tmp_path, capsys, monkeypatch):
    suite = tmp_path / "board.yaml"
    suite.write_text(yaml.safe_dump({"name": "board", **TINY}))
    db = tmp_path / "s.db"
    code, _, err = cli(["run", str(suite), "--profile", "smoke", "--no-progress", "--storage", f"sqlite:///{db}",
                        "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    monkeypatch.chdir(tmp_path)
    rows = {}
    for name, storages in {"once": [f"sqlite:///{db}"],
                           "twice": [f"sqlite:///{db}", f"sqlite:///{db}", "sqlite:///s.db"]}.items():
        argv = ["leaderboard", "--out", str(tmp_path / name / "LEADERBOARD.md")]
        for url in storages:
            argv += ["--storage", url]
        code, _, err = cli(argv, capsys)
        assert code == 0, err
        rows[name] = pd.read_csv(tmp_path / name / "LEADERBOARD.csv")
    assert len(rows["once"]) == 1 and len(rows["twice"]) == len(rows["once"])


def test_distinct_stores_keeps_the_first_name_of_each_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = f"sqlite:///{tmp_path}/a.db"
    assert distinct_stores([a, "sqlite:///a.db", "sqlite:///b.db", a]) == [a, "sqlite:///b.db"]
    assert distinct_stores(None) is None

"""No writes outside the output folders, whatever a suite's text says (issue 27).

Every path tgbench derives from user text (a source label, a suite name, a cell key) goes through
``tgbench.locations.child_path``: a label ``../../../../escaped_tb`` or an absolute path used to make
``--log tensorboard`` create directories and event files outside ``--out``. The end-to-end test runs tgbench in a
subprocess with its working directory and HOME inside a temporary tree and then walks the whole tree; the property
test draws labels and suite names from arbitrary text. Labels are checked when a suite loads (length, control
characters) and Markdown table cells escape their text.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tgbench.errors import BadInput
from tgbench.locations import LABEL_LIMIT, check_under, child_path, label_problem, out_location, safe_name
from tgbench.reporting.markdown import escape_cell, md_table
from tgbench.trackers import open_trackers

from helpers import cli

TINY = {"kind": "fewstep", "dataset": {"name": "mnist-5k"}, "learner": {"conv_channels": [[2]], "fc_hidden": [[4]]},
        "inner": {"steps": 2, "batch_size": 8}, "outer": {"iterations": 1, "meta_batch_size": 8},
        "evaluation": {"seeds": 1, "eval_every": 1, "eval_learners": 1, "final_learners": 1},
        "profiles": {"smoke": {}}}
GTN = {"method": "gtn", "params": {"curriculum": "full", "noise_dim": 4, "fc_hidden": 8, "channels": [4, 2]}}


def _files_under(root: Path) -> list[Path]:
    return [Path(folder) / name for folder, dirs, files in os.walk(root) for name in files + dirs]


def test_a_label_that_climbs_or_is_absolute_writes_nothing_outside_out(tmp_path):
    """The issue's reproduction: with ``--log tensorboard`` both labels made event files outside ``--out``."""
    root = tmp_path / "root"
    home, work = root / "home", root / "a" / "b" / "work"
    home.mkdir(parents=True)
    work.mkdir(parents=True)
    out, db, artifacts = work / "out", work / "s.db", work / "artifacts"
    suite = work / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "trav", **TINY, "sources": [
        {**GTN, "label": "../../../../escaped_tb"}, {"method": "real", "label": str(root / "abs_escape")}]}))
    env = {**os.environ, "HOME": str(home), "MPLCONFIGDIR": str(home / ".mpl"), "TGBENCH_STORAGE": "",
           "TGBENCH_ARTIFACTS": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "tgbench", "run", str(suite), "--profile", "smoke", "--no-progress",
                           "--log", "tensorboard", "--storage", f"sqlite:///{db}", "--out", str(out)],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    allowed = [out, artifacts, home / ".mpl", home / ".cache", home / ".config"]   # (library caches under HOME)
    outside = [p for p in _files_under(root)
               if p not in (suite, db) and not any(p == a or a in p.parents for a in allowed)
               and not any(p in a.parents for a in [*allowed, db])]   # (the folders that lead to them)
    assert outside == []
    event_dirs = list((out / "tensorboard" / "trav").iterdir())
    assert len(event_dirs) == 2 and all(any(d.iterdir()) for d in event_dirs)


# the rule, as a property: any text, used as a suite name and a label, stays under the log folder
TEXT = st.text(min_size=1, max_size=300)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(suite=TEXT, label=TEXT, seed=st.integers(0, 1000))
def test_any_text_as_names_gives_a_path_under_its_parent(tmp_path, suite, label, seed):
    parent = tmp_path / "log"
    path = child_path(parent, "tensorboard", suite, f"{label}|seed={seed}")
    resolved, root = path.resolve(), parent.resolve()
    assert root in resolved.parents
    assert len(path.relative_to(parent).parts) == 3   # one component per text: no separator survives
    name = safe_name(label)
    assert name not in ("", ".", "..") and "/" not in name and "\0" not in name and len(name) <= 91
    report_dir = out_location(None, SimpleNamespace(name=suite), "smoke")   # the default report folder
    assert Path("results").resolve() in report_dir.resolve().parents


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(suite=TEXT, label=TEXT)
def test_any_text_makes_the_tensorboard_tracker_write_under_its_log_folder(tmp_path, suite, label):
    pytest.importorskip("tensorboard")
    base = tmp_path / f"case{abs(hash((suite, label)))}"
    log = base / "log"
    log.mkdir(parents=True)
    trackers = open_trackers(("tensorboard",), str(log), suite, f"{label}|seed=0", {})
    trackers.scalar("meta_loss", 1.0, 1)
    trackers.close()
    written = _files_under(base)
    assert written and all(p == log or log in p.parents for p in written)


def test_the_path_check_refuses_what_leaves_its_parent(tmp_path):
    with pytest.raises(BadInput, match="leaves its folder"):
        check_under(tmp_path / "a", tmp_path / "a" / ".." / "b")
    assert safe_name("..") == "_.." and safe_name("/etc/passwd") == "_etc_passwd" and safe_name("gtn") == "gtn"


def test_child_path_resolves_a_link_below_its_parent(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "trav").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BadInput):
        child_path(tmp_path / "out", "trav", "x")


@pytest.mark.parametrize("label, problem", [
    ("x" * (LABEL_LIMIT + 1), "at most"), ("a\0b", "control"), ("a\nb | c", "control"), ("   ", "empty"),
    (" a", "spaces"), ("a\u202eb", "control"),
])
def test_bad_labels_are_refused_at_load_with_exit_2_naming_file_and_key(tmp_path, capsys, label, problem):
    assert problem in label_problem(label)
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({"name": "lab", **TINY, "sources": [{"method": "real", "label": label}]}))
    code, _, err = cli(["validate", str(suite)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(suite) in err and "sources[0].label" in err and problem in err


def test_a_sweep_label_is_checked_too(tmp_path, capsys):
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({"name": "sw", **TINY, "sources": [{"method": "real"}],
                                     "sweep": {"key": "inner.lr", "values": ["x" * 300]}}))
    code, _, err = cli(["validate", str(suite)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(suite) in err


def test_plain_labels_and_names_keep_their_names():
    for text in ("gtn", "real", "mnist_fewstep", "dd-1.5", "gtn_seed0"):
        assert safe_name(text) == text and label_problem(text) is None


def test_markdown_cells_escape_pipes_newlines_and_markup():
    cell = escape_cell("a | b\nc\r\nd\\")
    assert "\n" not in cell and "\r" not in cell and cell == "a \\| b c  d\\\\"
    for text in ("x\n| y | z |", "a\\|b", "end\\"):
        [_, _, row] = md_table(["source"], [[text]])
        unescaped = row.replace("\\\\", "").replace("\\|", "")   # what is left of the row's own pipes
        assert unescaped.count("|") == 2, row


def test_a_suite_name_with_a_control_character_is_refused(tmp_path, capsys):
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({"name": "a\nb", **TINY, "sources": [{"method": "real"}]}))
    code, _, err = cli(["validate", str(suite)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "name" in err and "control" in err

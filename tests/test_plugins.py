"""Method plugins: the worked example of docs/adding_a_method.md, installed as a throwaway package (entry point)
or passed as a loose file (``--methods-dir``), runs a smoke suite and lands on the leaderboard; broken plugins are
one error line naming the file; ``--methods-dir`` reaches fresh worker processes.

The plugin code and the suite are extracted from the doc itself, so the walkthrough cannot drift from what runs.
Subprocesses inherit this interpreter's environment (plus the plugin folder on PYTHONPATH): nothing is
installed into the environment running the tests.
"""
from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from tgbench.cli import main
from tgbench.registry import load_plugin_dir, methods
from tgbench.cells import cell_task, run_cell
from tgbench.suite.loading import load_suite
from tgbench.store import Store
from tgbench.worker import WorkerEnv

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "adding_a_method.md"


def doc_block(lang: str, contains: str) -> str:
    """The first ```lang block of the walkthrough that contains ``contains``."""
    blocks = re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)
    return next(b for b in blocks if contains in b)


HERDING = doc_block("python", "class Herding(Source)")
SUITE = doc_block("yaml", "name: herding_vs_real")


@pytest.fixture
def clean_registry():
    """Plugins registered in-process must not leak into other tests (``tgbench list methods`` expects 3)."""
    targets, loaded = dict(methods._targets), dict(methods._loaded)
    yield
    methods._targets.clear(), methods._targets.update(targets)
    methods._loaded.clear(), methods._loaded.update(loaded)


def tgbench(commands: list[list[str]], tmp_path: Path, extra_path: Path) -> subprocess.CompletedProcess:
    """Run ``tgbench`` commands one after another in ONE fresh interpreter (one torch import, not three) with
    ``extra_path`` on PYTHONPATH; stops at the first non-zero exit code and exits with it."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for var in ("TGBENCH_STORAGE", "TGBENCH_ARTIFACTS", "TGBENCH_DEBUG"):
        env.pop(var, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(extra_path)) if p)
    script = ("import sys\nfrom tgbench.cli import main\n"
              f"for argv in {commands!r}:\n    code = main(argv)\n    if code:\n        sys.exit(code)\n")
    return subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)


def write_package(site: Path) -> None:
    """A throwaway installed distribution: the plugin module plus a hand-written ``*.dist-info`` declaring the
    ``tgbench.methods`` entry point (what ``pip install`` of a package with that pyproject entry would write)."""
    (site / "herding_plugin").mkdir(parents=True)
    (site / "herding_plugin" / "__init__.py").write_text("")
    (site / "herding_plugin" / "herding.py").write_text(HERDING)
    info = site / "herding_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: herding-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[tgbench.methods]\nherding = herding_plugin.herding:Herding\n")


@pytest.mark.slow
def test_installed_plugin_runs_and_lands_on_the_leaderboard(tmp_path):
    site = tmp_path / "site"
    write_package(site)
    (tmp_path / "herding_vs_real.yaml").write_text(SUITE)
    db = f"sqlite:///{tmp_path}/store.db"

    done = tgbench([["list", "methods"],
                    ["run", "herding_vs_real.yaml", "--profile", "smoke", "--storage", db, "--out", "report",
                     "--no-progress"],
                    ["leaderboard", "--storage", db, "--out", "lb/LEADERBOARD.md"]], tmp_path, site)
    assert done.returncode == 0, done.stderr
    assert "herding" in done.stdout.split() and "iterations = 10" in done.stdout  # listed with its options

    rows = pd.read_csv(tmp_path / "lb" / "LEADERBOARD.csv")
    assert set(rows["source"]) == {"real", "herding"}
    assert rows["table"].nunique() == 1                     # one protocol: one table
    herding = rows[rows["source"] == "herding"].iloc[0]
    assert herding["method"] == "herding" and herding["suite"] == "herding_vs_real"
    # the leaderboard's number is the store's record, not something recomputed
    store = Store(db)
    records = store.records(store.study("herding_vs_real@smoke", create=False))
    recorded = [r.test_acc_final for r in records if r.source == "herding"]
    assert herding["test_acc_mean"] == pytest.approx(sum(recorded) / len(recorded), abs=1e-12)
    assert herding["meta_train_flops"] > 0
    md = (tmp_path / "lb" / "LEADERBOARD.md").read_text()
    assert "| herding | herding_vs_real |" in md


@pytest.mark.slow
def test_methods_dir_reaches_a_fresh_worker_process(tmp_path, clean_registry):
    """A spawned worker starts with an empty plugin registry: the cell's WorkerEnv must carry --methods-dir."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "herding.py").write_text(HERDING)
    suite = tmp_path / "herding_vs_real.yaml"
    suite.write_text(SUITE)
    db = f"sqlite:///{tmp_path}/store.db"
    load_plugin_dir(plugins)  # the parent process has it (as after `tgbench run --methods-dir`) ...
    task = cell_task(load_suite(suite, "smoke"), "smoke", "herding", 0,
                     WorkerEnv(storage=db, progress=False, threads=1, methods_dirs=(str(plugins),)))
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:  # ... a fresh one not
        record = pool.submit(run_cell, task).result()
    assert record.status == "complete" and record.method == "herding"


def _plugin_dir(tmp_path: Path, name: str, text: str) -> Path:
    folder = tmp_path / "plugins"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text)
    return folder


@pytest.mark.parametrize("name, text, expected", [
    ("broken.py", "raise RuntimeError('boom at import')\n", "RuntimeError: boom at import"),
    ("nothing.py", "X = 1\n", "METHODS"),
    ("notasource.py", "class Thing:\n    pass\nMETHODS = {'thing': Thing}\n", "not a subclass of Source"),
    ("taken.py", "from tgbench.methods.real import RealData\nclass R(RealData):\n    pass\nMETHODS = {'real': R}\n",
     "already registered"),
])
def test_bad_plugin_file_is_one_line_naming_it(tmp_path, capsys, clean_registry, name, text, expected):
    folder = _plugin_dir(tmp_path, name, text)
    code = main(["list", "methods", "--methods-dir", str(folder)])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert name in lines[0] and expected in lines[0], lines[0]


def test_methods_dir_registers_every_file_once(tmp_path, capsys, clean_registry):
    folder = _plugin_dir(tmp_path, "herding.py", HERDING)
    (folder / "_helper.py").write_text("raise RuntimeError('private modules are not plugins')\n")
    assert main(["list", "methods", "--methods-dir", str(folder), "--methods-dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert [w for w in out.split() if w == "herding"] == ["herding"]
    assert main(["list", "methods", "--methods-dir", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err

"""A ``--jobs`` worker that dies hard leaves nothing RUNNING and stops no other cell (issue 27).

A plug-in calling ``os._exit`` in a ``--jobs 2`` worker broke the process pool: its cell stayed RUNNING while the
summary said the failed cells were "marked failed in the store", and the cells queued behind it (its next seed)
never ran. Now the parent runs the cells a broken pool lost once more, one at a time, marks the claim of the one
whose worker dies again failed, and the others complete.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from tgbench.records import Status
from tgbench.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.system]   # (~80 s: six worker processes on a 2-core machine)

DIER = '''
import os
from tgbench.methods.real import RealData


class Dier(RealData):
    """Real data, except that its worker process dies without a word at the first lesson."""

    def forward(self, t, episode):
        os._exit(3)


METHODS = {"dier": Dier}
'''
TINY = {"kind": "fewstep", "dataset": {"name": "mnist-5k"}, "learner": {"conv_channels": [[2]], "fc_hidden": [[4]]},
        "inner": {"steps": 2, "batch_size": 8}, "outer": {"iterations": 1, "meta_batch_size": 8},
        "evaluation": {"seeds": 2, "eval_every": 1, "eval_learners": 1, "final_learners": 1},
        "profiles": {"smoke": {}}, "sources": [{"method": "dier"}, {"method": "real"}]}


def test_a_worker_that_dies_hard_is_marked_failed_and_the_other_cells_run(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "dier.py").write_text(DIER)
    suite = tmp_path / "dying.yaml"
    suite.write_text(yaml.safe_dump({"name": "dying", **TINY}))
    url = f"sqlite:///{tmp_path}/s.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in ("TGBENCH_STORAGE", "TGBENCH_ARTIFACTS", "TGBENCH_DEBUG"):
        env.pop(var, None)
    done = subprocess.run([sys.executable, "-m", "tgbench", "run", str(suite), "--profile", "smoke", "--no-progress",
                           "--jobs", "2", "--methods-dir", str(plugins), "--storage", url, "--out",
                           str(tmp_path / "out")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr
    store = Store(url)
    records = store.cell_records(store.study("dying@smoke", create=False))
    newest = {}
    for record in records:   # (each cell's newest word)
        if record.cell not in newest or record.done >= newest[record.cell].done:
            newest[record.cell] = record
    assert {c: r.status for c, r in newest.items() if c.startswith("real")} == {
        "real|seed=0": Status.COMPLETE, "real|seed=1": Status.COMPLETE}
    assert not [r for r in records if r.status == Status.RUNNING]
    assert {r.cell for r in records if r.cell.startswith("dier")} == {"dier|seed=0", "dier|seed=1"}
    assert "dier|seed=" in done.stderr and len(done.stderr.strip().splitlines()) == 1

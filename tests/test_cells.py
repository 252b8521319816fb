"""The cells layer (issue 16): a run executes the suite it resolved, whatever happens to the YAML meanwhile."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tgbench import identity, runner
from tgbench.kinds.fewstep import run as fewstep
from tgbench.suite.loading import load_suite
from tgbench.suite.schema import Suite
from tgbench.kinds import RunOptions

pytestmark = pytest.mark.usefixtures("single_thread")

SUITE = {"name": "edited", "kind": "fewstep", "dataset": {"name": "mnist-5k"},
         "learner": {"conv_channels": [[2]], "fc_hidden": [[4]]}, "inner": {"steps": 2, "batch_size": 8},
         "outer": {"iterations": 1, "meta_batch_size": 8},
         "evaluation": {"seeds": 3, "eval_every": 1, "eval_learners": 1, "final_learners": 1, "held_out": {},
                        "count_flops": False},
         "sources": [{"method": "real"}], "profiles": {"smoke": {}}}


def test_a_suite_edited_during_a_run_does_not_change_the_cells_it_planned(tmp_path, monkeypatch):
    """The defect: each cell re-read the YAML, so an edit that changed a cell's hash made it claim and record
    under the new hash while the run waited for the old one — forever, adding a trial per pass. Here the file is
    edited while the first cell runs; the run must finish its 3 planned cells, all under the planned config."""
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(SUITE))
    calls = []
    real_run_cell = fewstep.run_cell

    def run_cell_then_edit(task):
        calls.append(task.spec.seed)
        if len(calls) > 6:  # (the defect loops for ever: stop it here, as a failure)
            raise AssertionError("the run keeps re-running cells: it waits for hashes no cell records")
        if len(calls) == 1:  # someone edits the suite while the run is going
            path.write_text(yaml.safe_dump({**SUITE, "inner": {"steps": 3, "batch_size": 8}}))
        return real_run_cell(task)

    monkeypatch.setattr(fewstep, "run_cell", run_cell_then_edit)
    opts = RunOptions(profile="smoke", storage=f"sqlite:///{tmp_path}/s.db", out=str(tmp_path / "out"),
                      progress=False)
    runner.run_suite(str(path), opts, log=lambda *a, **k: None)
    assert sorted(calls) == [0, 1, 2]
    from tgbench.store import Store

    store = Store(opts.storage)
    records = store.records(store.study("edited@smoke", create=False))
    assert len(records) == 3 and {r.inner_steps for r in records} == {2}  # the suite as it was when planned


def test_a_resolved_suite_round_trips_to_the_same_cell_hashes():
    """What a worker rebuilds from ``CellSpec.resolved_suite`` hashes exactly as the planning process did."""
    suite = load_suite(Path(__file__).parents[1] / "suites" / "mnist_fewstep.yaml", "cpu")
    again = Suite.model_validate(suite.model_dump(mode="json"))
    for entry, copy in zip(suite.sources, again.sources):
        assert identity.cell_hash(suite, entry, "mnist-5k") == identity.cell_hash(again, copy, "mnist-5k")


def test_cell_and_worker_tasks_are_built_by_keyword_and_cell_tasks_in_one_place():
    """Issue 25: run options were copied field by field, positionally, into a 19-field CellTask built one way in
    the fewstep kind and another in the NAS one. Every task object is now built by keyword, and a cell's task
    only by ``cells.cell_task`` (which both kinds call)."""
    task_types = {"CellTask", "CellSpec", "WorkerEnv", "ArmTask", "Worker"}
    positional, cell_task_builders = [], set()
    for path in sorted((Path(__file__).parents[1] / "tgbench").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            for call in [n for n in ast.walk(function) if isinstance(n, ast.Call)]:
                name = getattr(call.func, "id", None) or getattr(call.func, "attr", None)
                if name in task_types and call.args:
                    positional.append(f"{path.name}:{call.lineno} {name}(...)")
                if name == "CellTask":
                    cell_task_builders.add(f"{path.name}:{function.name}")
    assert positional == []
    assert cell_task_builders == {"cells.py:cell_task"}

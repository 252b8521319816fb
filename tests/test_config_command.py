"""Config conveniences and results history (issue 26): ``tgbench config`` prints the resolved suite as YAML with
each arm's hash; ``include:`` takes an installed suite's name; ``report`` / ``export`` that find no cell of the
given ``--set`` list the ``--set`` lists the store holds (and ``export`` never takes another configuration's
cell); ``teach --model path/to/file.py:Class`` and ``module:Class`` from the working directory; every report
keeps a timestamped ``results_<time>.json`` beside ``results.json``, all mode 0644."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from tgbench.suite.by_kind import suite_from_dict
from tgbench.suite.loading import load_suite
from tgbench.suite.names import installed_suites
from tgbench.identity import cell_hash
from tgbench.provenance import machine

from helpers import cli

pytestmark = pytest.mark.usefixtures("single_thread")

GOLDEN = Path(__file__).parent / "data" / "golden_hashes.json"
TINY = {"name": "conv", "kind": "fewstep", "dataset": {"name": "mnist-5k"},
        "learner": {"conv_channels": [[2]], "fc_hidden": [[4]]},
        "inner": {"steps": 2, "batch_size": 8}, "outer": {"iterations": 1, "meta_batch_size": 8},
        "evaluation": {"seeds": 1, "eval_every": 1, "eval_learners": 1, "final_learners": 1},
        "profiles": {"smoke": {}}, "sources": [{"method": "real"}]}
TINY_MLP = '''
import torch
from torch import nn

class TinyMLP(nn.Module):
    def __init__(self, image_shape, num_classes):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(image_shape).prod()), num_classes))

    def forward(self, x):
        return self.net(x)
'''


def test_config_prints_the_resolved_suite_and_the_golden_cell_hashes(capsys):
    code, out, err = cli(["config", "metagrad_stability"], capsys)   # (a mnist-5k suite: the golden dataset)
    assert code == 0, err
    dumped = yaml.safe_load(out)          # the hashes are comments: the output is the suite, as YAML
    assert suite_from_dict(dumped).name == "metagrad_stability"
    golden = json.loads(GOLDEN.read_text())["metagrad_stability.yaml"][""][""]["cells"]
    printed = dict(line.split()[1:3] for line in out.splitlines() if line.startswith("#   "))
    assert printed == golden


def test_config_applies_profile_and_set(tmp_path, capsys):
    suite = tmp_path / "conv.yaml"
    suite.write_text(yaml.safe_dump(TINY))
    code, out, err = cli(["config", str(suite), "--profile", "smoke", "--set", "outer.iterations=5"], capsys)
    assert code == 0, err
    assert yaml.safe_load(out)["outer"]["iterations"] == 5
    resolved = load_suite(suite, "smoke", ["outer.iterations=5"])
    assert f"real  {cell_hash(resolved, resolved.sources[0], 'mnist-5k')}" in out


def test_include_takes_an_installed_suites_name(tmp_path):
    (tmp_path / "mine.yaml").write_text("include: mnist_fewstep\nname: mine\n")
    suite = load_suite(tmp_path / "mine.yaml", "smoke")
    theirs = load_suite(installed_suites()["mnist_fewstep"], "smoke")
    assert suite.name == "mine" and [e.name for e in suite.sources] == [e.name for e in theirs.sources]


def test_include_of_an_unknown_name_is_one_line(tmp_path, capsys):
    (tmp_path / "mine.yaml").write_text("include: no_such_suite\nname: mine\n")
    code, _, err = cli(["validate", str(tmp_path / "mine.yaml")], capsys)
    assert code == 2 and "include" in err and "no_such_suite" in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def ran_with_set(tmp_path_factory):
    """A tiny suite run only with --set outer.iterations=2, then reported twice: (tmp, suite, url, out)."""
    from tgbench.cli import main

    tmp = tmp_path_factory.mktemp("withset")
    suite = tmp / "conv.yaml"
    suite.write_text(yaml.safe_dump(TINY))
    url, out = f"sqlite:///{tmp}/s.db", tmp / "out"
    old = os.umask(0o022)
    try:
        argv = ["--profile", "smoke", "--storage", url, "--out", str(out), "--set", "outer.iterations=2"]
        assert main(["run", str(suite), "--no-progress", *argv]) == 0
        assert main(["report", str(suite), *argv]) == 0
    finally:
        os.umask(old)
    return tmp, suite, url, out


def test_report_without_the_runs_set_lists_the_sets_the_store_holds(ran_with_set, capsys):
    tmp, suite, url, _ = ran_with_set
    code, _, err = cli(["report", str(suite), "--profile", "smoke", "--storage", url, "--out", str(tmp / "r")],
                       capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no --set" in err and "--set outer.iterations=2" in err


def test_export_without_the_runs_set_refuses_and_with_it_exports(ran_with_set, capsys):
    tmp, suite, url, _ = ran_with_set
    base = ["export", "--suite", str(suite), "--profile", "smoke", "--source", "real", "--storage", url]
    code, _, err = cli([*base, "--out", str(tmp / "t.pt")], capsys)
    assert code == 2 and "--set outer.iterations=2" in err and not (tmp / "t.pt").exists()
    code, _, err = cli([*base, "--out", str(tmp / "t.pt"), "--set", "outer.iterations=2"], capsys)
    assert code == 0, err
    assert stat.S_IMODE((tmp / "t.pt").stat().st_mode) == 0o644


def test_teach_model_from_a_file_path_and_from_the_working_directory(ran_with_set, capsys, monkeypatch):
    tmp, suite, url, _ = ran_with_set
    teacher = tmp / "teach.pt"
    code, _, err = cli(["export", "--suite", str(suite), "--profile", "smoke", "--source", "real", "--storage", url,
                        "--out", str(teacher), "--set", "outer.iterations=2"], capsys)
    assert code == 0, err
    models = tmp / "models"
    models.mkdir()
    (models / "mymodel.py").write_text(TINY_MLP)
    monkeypatch.chdir(models)
    outputs = []
    for target in ("./mymodel.py:TinyMLP", f"{models / 'mymodel.py'}:TinyMLP", "mymodel:TinyMLP"):
        code, out, err = cli(["teach", str(teacher), "--model", target, "--steps", "2"], capsys)
        assert code == 0, (target, err)
        outputs.append([line for line in out.splitlines() if line.startswith("test accuracy")])
    assert outputs[0] == outputs[1] == outputs[2] != [[]]


def test_each_report_keeps_a_timestamped_results_json(ran_with_set):
    _, _, _, out = ran_with_set
    history = sorted(out.glob("results_*.json"))
    assert len(history) == 2                                    # the run's report and the report's
    assert (out / "results.json").read_text() == history[-1].read_text()
    assert {stat.S_IMODE(p.stat().st_mode) for p in [*history, out / "results.json"]} == {0o644}


def test_the_machine_line_says_cores_and_threads():
    line = machine()
    assert "CPU cores" in line and "torch threads" in line and str(os.cpu_count()) in line


def test_the_report_header_names_the_threads_the_cells_ran_with(ran_with_set):
    from tgbench.store import Store

    _, _, url, out = ran_with_set
    store = Store(url)
    [record] = store.records(store.study("conv@smoke", create=False))
    header = (out / "report.md").read_text()
    assert f"- **threads per cell**: {record.threads}\n" in header
    assert "CPU cores" in header and "torch threads" in header

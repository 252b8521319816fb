"""Plug-in datasets, proxies and suite kinds are contained like plug-in methods (issue 27).

A plug-in dataset that called ``sys.exit(7)`` ended tgbench with exit 7 and nothing on stderr. Now a ``sys.exit``
in a plug-in's dataset loader, proxy or suite kind is one line naming the plug-in and its file, exit 1 (README:
"a plug-in calling sys.exit" is exit 1); built-ins are used as they are.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from tgbench.proxies import Proxy
from tgbench.registry import PLUGIN_DECLARATIONS, PluginExited, load_plugin_dir, proxies

from helpers import cli

TINY = {"kind": "fewstep", "learner": {"conv_channels": [[2]], "fc_hidden": [[4]]},
        "inner": {"steps": 2, "batch_size": 8}, "outer": {"iterations": 1, "meta_batch_size": 8},
        "evaluation": {"seeds": 1, "eval_every": 1, "eval_learners": 1, "final_learners": 1},
        "profiles": {"smoke": {}}, "sources": [{"method": "real"}]}

PLUGIN = '''
import sys
from tgbench.kinds import SuiteKind
from tgbench.proxies import Proxy


def quitting_loader(data_root=None, download=False, seed=0):
    sys.exit(7)


class QuittingProxy(Proxy):
    def score(self, spec, seed):
        sys.exit(3)


def quit_run(ctx):
    sys.exit(5)


DATASETS = {"quitting": quitting_loader}
PROXIES = {"quitter": QuittingProxy}
SUITE_KINDS = {"quitkind": SuiteKind(run=quit_run, report=quit_run)}
'''


@pytest.fixture
def plugins(tmp_path):
    before = {registry: set(registry.names()) for registry in PLUGIN_DECLARATIONS.values()}
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "quitters.py").write_text(PLUGIN)
    yield folder
    for registry, names in before.items():
        for name in set(registry.names()) - names:
            registry.unregister(name)
    sys.modules.pop(next((m for m in sys.modules if m.endswith("_quitters")), ""), None)


def _one_line_naming_the_plugin(err: str, kind: str, name: str, plugin_file: Path):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"{kind} {name!r}" in lines[0] and str(plugin_file) in lines[0] and "sys.exit" in lines[0], lines[0]


def test_a_plugin_dataset_calling_sys_exit_is_exit_1_naming_it(tmp_path, capsys, plugins):
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({"name": "quitdata", "dataset": {"name": "quitting"}, **TINY}))
    code, _, err = cli(["run", str(suite), "--profile", "smoke", "--no-progress", "--methods-dir", str(plugins),
                        "--storage", f"sqlite:///{tmp_path}/s.db", "--out", str(tmp_path / "out")], capsys)
    assert code == 1, err
    _one_line_naming_the_plugin(err, "dataset", "quitting", plugins / "quitters.py")


def test_a_plugin_suite_kind_calling_sys_exit_is_exit_1_naming_it(tmp_path, capsys, plugins):
    suite = tmp_path / "k.yaml"
    suite.write_text(yaml.safe_dump({"name": "quitkind", "kind": "quitkind", "dataset": {"name": "mnist-5k"},
                                     "sources": [{"method": "real"}]}))
    code, _, err = cli(["run", str(suite), "--methods-dir", str(plugins), "--storage", f"sqlite:///{tmp_path}/s.db",
                        "--out", str(tmp_path / "out")], capsys)
    assert code == 1, err
    _one_line_naming_the_plugin(err, "suite kind", "quitkind", plugins / "quitters.py")


def test_a_plugin_proxy_calling_sys_exit_raises_one_named_error(plugins):
    load_plugin_dir(plugins)
    cls = proxies.get("quitter")
    assert issubclass(cls, Proxy) and cls.__name__ == "QuittingProxy"
    with pytest.raises(PluginExited, match=r"proxy 'quitter' \(plugin file .*quitters.py\) called sys.exit\(3\)"):
        cls.score(object.__new__(cls), None, 0)


def test_built_ins_are_used_as_they_are():
    from tgbench.proxies import SynFlow

    assert proxies.get("synflow") is SynFlow

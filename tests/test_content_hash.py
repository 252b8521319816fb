"""Inputs addressed by content (issue 26): a file a suite reads as data (the ``external`` source's lessons, a
``--methods-dir`` plug-in) is part of its cells' hashes by the digest of its bytes, and recorded with the cell;
relative data paths resolve against the suite file, like ``include:``; a bad one is one line naming the suite
file and the key."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import torch
import yaml

from tgbench.suite.loading import load_suite
from tgbench.identity import cell_hash, cell_inputs
from tgbench.records import cell_key
from tgbench.results import load_results
from tgbench.registry import PLUGIN_DECLARATIONS, load_plugin_dir
from tgbench.store import Store

from helpers import cli

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {"dataset": {"name": "mnist-5k"}, "learner": {"conv_channels": [[2]], "fc_hidden": [[4]]},
        "inner": {"steps": 2, "batch_size": 8}, "outer": {"iterations": 1, "meta_batch_size": 8},
        "evaluation": {"seeds": 1, "eval_every": 1, "eval_learners": 1, "final_learners": 1},
        "profiles": {"smoke": {}}}


def write_lessons(path: Path, seed: int) -> Path:
    generator = torch.Generator().manual_seed(seed)
    torch.save({"images": torch.randn(16, 1, 28, 28, generator=generator), "labels": torch.arange(16) % 10,
                "batch_size": 8}, path)
    return path


def write_suite(path: Path, sources: list[dict], name: str = "content") -> Path:
    path.write_text(yaml.safe_dump({"name": name, "kind": "fewstep", **TINY, "sources": sources}))
    return path


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_replacing_an_external_files_bytes_makes_its_cells_run_again(tmp_path, capsys, monkeypatch):
    suites = tmp_path / "suites"
    suites.mkdir()
    lessons = write_lessons(suites / "lessons.pt", seed=0)
    # relative to the suite file, not to the working directory (which is elsewhere)
    suite = write_suite(suites / "s.yaml", [{"method": "external", "label": "published",
                                             "params": {"path": "lessons.pt"}}])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    url = f"sqlite:///{tmp_path}/s.db"
    argv = ["run", str(suite), "--profile", "smoke", "--no-progress", "--storage", url, "--out", str(tmp_path / "o")]

    def run() -> str:
        code, out, err = cli(argv, capsys)
        assert code == 0, err
        return re.search(r"(\d+) already done", out + err).group(1)

    def record():
        store = Store(url)
        [found] = [r for r in store.records(store.study("content@smoke", create=False))
                   if r.cell == cell_key("published", 0) and r.config_hash == cell_hash(
                       load_suite(suite, "smoke"), load_suite(suite, "smoke").sources[0], "mnist-5k")]
        return found

    assert run() == "0"
    first = record()
    assert first.inputs == {"params.path": {"path": str(lessons.resolve()), "sha256": sha256(lessons)}}
    assert run() == "1"                      # same bytes: done
    write_lessons(lessons, seed=1)           # same name, other bytes
    assert run() == "0"                      # ... so the cell runs again
    second = record()
    assert second.inputs["params.path"]["sha256"] == sha256(lessons) != first.inputs["params.path"]["sha256"]
    assert second.config_hash != first.config_hash and second.test_acc_final is not None
    [cell] = load_results(tmp_path / "o" / "results.json").cells     # results.json says what the cell read
    assert cell.inputs == second.inputs


def test_the_hash_follows_the_bytes_not_the_path(tmp_path):
    """Moving a suite and its lesson file keeps the hash (content-addressed); the path is no part of it."""
    hashes = []
    for folder in ("a", "b/c"):
        (tmp_path / folder).mkdir(parents=True)
        write_lessons(tmp_path / folder / "lessons.pt", seed=0)
        suite = load_suite(write_suite(tmp_path / folder / "s.yaml", [
            {"method": "external", "params": {"path": "lessons.pt"}}]), "smoke")
        assert suite.sources[0].params["path"] == str((tmp_path / folder / "lessons.pt").resolve())
        hashes.append(cell_hash(suite, suite.sources[0], "mnist-5k"))
    assert hashes[0] == hashes[1]


def test_a_suite_without_data_files_has_no_inputs(tmp_path):
    """(Its hashes are tests/test_identity.py's golden ones: nothing is added for such an arm.)"""
    suite = load_suite(write_suite(tmp_path / "s.yaml", [{"method": "real"}, {"method": "gtn"}]), "smoke")
    assert [cell_inputs(e) for e in suite.sources] == [{}, {}]


def test_a_missing_relative_data_file_names_the_suite_file_and_key(tmp_path, capsys):
    suite = write_suite(tmp_path / "s.yaml", [{"method": "real"}, {"method": "external",
                                                                  "params": {"path": "gone.pt"}}])
    code, _, err = cli(["validate", str(suite)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(suite) in err and "sources[1].params" in err and str(tmp_path / "gone.pt") in err


def test_an_included_suites_data_path_resolves_against_the_file_that_wrote_it(tmp_path):
    (tmp_path / "base").mkdir()
    write_lessons(tmp_path / "base" / "lessons.pt", seed=0)
    write_suite(tmp_path / "base" / "base.yaml", [{"method": "external", "params": {"path": "lessons.pt"}}])
    (tmp_path / "top.yaml").write_text("include: base/base.yaml\nname: top\n")
    suite = load_suite(tmp_path / "top.yaml", "smoke")
    assert suite.sources[0].params["path"] == str((tmp_path / "base" / "lessons.pt").resolve())


PLUGIN = '''
from tgbench.methods.real import RealData

class ContentHashedReal(RealData):
    """real data, from a plug-in file"""

METHODS = {"content_hashed_real": ContentHashedReal}
'''


@pytest.fixture
def clean_registries():
    """Plugins registered in-process must not leak into other tests (``tgbench list`` counts names)."""
    before = {registry: set(registry.names()) for registry in PLUGIN_DECLARATIONS.values()}
    yield
    for registry, names in before.items():
        for name in set(registry.names()) - names:
            registry.unregister(name)


def test_a_plug_in_methods_file_is_part_of_its_cells_hash(tmp_path, clean_registries):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    plugin = plugins / "content_hashed.py"
    plugin.write_text(PLUGIN)
    load_plugin_dir(plugins)
    suite = load_suite(write_suite(tmp_path / "s.yaml", [{"method": "content_hashed_real"}]), "smoke")
    entry = suite.sources[0]
    before = cell_hash(suite, entry, "mnist-5k")
    assert cell_inputs(entry) == {"plugin": {"file": "content_hashed.py", "sha256": sha256(plugin)}}
    plugin.write_text(PLUGIN + "# edited\n")
    assert cell_hash(suite, entry, "mnist-5k") != before

"""Golden test of every identity hash: the keys of users' stores must not move when the code that computes them
does. ``tests/data/golden_hashes.json`` holds, for every shipped suite, profile and a few ``--set`` variants, the
cell, tuning-stage, tune, NAS ground-truth / architecture / proxy and leaderboard protocol hashes, as written at
revision 5e68193 by ``tests/data/make_golden_hashes.py``; this test recomputes them through the public functions."""
import copy
import importlib.util
import json
from pathlib import Path

import pytest
import yaml

DATA = Path(__file__).parent / "data"


def _generator():
    spec = importlib.util.spec_from_file_location("make_golden_hashes", DATA / "make_golden_hashes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _differences(expected, actual, where="") -> list[str]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = [f"{where}/{k}: missing" for k in expected.keys() - actual.keys()]
        out += [f"{where}/{k}: not in the golden file" for k in actual.keys() - expected.keys()]
        for k in expected.keys() & actual.keys():
            out += _differences(expected[k], actual[k], f"{where}/{k}")
        return out
    return [] if expected == actual else [f"{where}: {expected!r} -> {actual!r}"]


@pytest.fixture
def each_yaml_text_parsed_once(monkeypatch):
    """compute_all loads every suite about 50 times (each profile x variant, every profile validated each time):
    ~1,300 parses of the same ten files, half the test's time in PyYAML's pure-Python parser. A parse depends on
    the text and the loader alone: parse each (text, loader) once and hand out deep copies (the loader's caller
    pops ``include:`` and merges into what it gets). Everything after the parse runs each time, as before."""
    parse = yaml.load
    parsed: dict = {}

    def load_once(stream, Loader):  # noqa: N803 (yaml.load's own keyword)
        if not isinstance(stream, str):
            return parse(stream, Loader=Loader)
        if (stream, Loader) not in parsed:
            parsed[stream, Loader] = parse(stream, Loader=Loader)
        return copy.deepcopy(parsed[stream, Loader])

    monkeypatch.setattr(yaml, "load", load_once)
    yield parsed
    assert parsed, "compute_all no longer parses through yaml.load: this fixture saves nothing, remove it"


def test_every_shipped_suites_hashes_are_the_golden_ones(each_yaml_text_parsed_once):
    golden = json.loads((DATA / "golden_hashes.json").read_text())
    actual = json.loads(json.dumps(_generator().compute_all()))  # tuples -> lists, as in the file
    diffs = _differences(golden, actual)
    assert not diffs, f"{len(diffs)} identity hashes changed, e.g.:\n" + "\n".join(sorted(diffs)[:20])


def test_the_golden_file_covers_every_kind_of_hash():
    golden = json.loads((DATA / "golden_hashes.json").read_text())
    assert {p.name for p in _generator().SUITES} == set(golden)
    seen = {key for suite in golden.values() for profile in suite.values() for variant in profile.values()
            for key in variant}
    assert seen == {"cells", "cells_tuned", "tuning", "tune", "nas", "leaderboard"}


def test_identity_sits_below_what_it_identifies():
    """identity is imported by cells, tuning, the kinds and the leaderboard; it reads only the suite schema's models, the
    learner spec, the store's hash function and the content digests of an arm's inputs (``tgbench.inputs``; no
    kind registry: a kind's section comes from the suite's model)."""
    import ast
    from tgbench import identity
    tree = ast.parse(Path(identity.__file__).read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("tgbench")}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names
                 if a.name.startswith("tgbench")}
    assert imported == {"tgbench.suite.schema", "tgbench.inputs", "tgbench.nn", "tgbench.store"}


def test_a_suites_kind_sections_are_its_registered_kinds_section():
    """cell_hash leaves a kind's own section out; identity reads it from the suite's model, the registry names it."""
    from tgbench.suite.loading import load_suite
    from tgbench.identity import kind_sections
    from tgbench.registry import suite_kinds
    kinds = set()
    for path in _generator().SUITES:
        suite = load_suite(path)
        kinds.add(suite.kind)
        assert kind_sections(suite) == {suite_kinds.get(suite.kind).section} - {None}, path.name
    assert kinds == {"fewstep", "tune", "nas_proxy"}

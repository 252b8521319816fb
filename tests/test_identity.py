"""Golden test of every identity hash: the keys of users' stores must not move when the code that computes them
does. ``tests/data/golden_hashes.json`` holds, for every shipped suite, profile and a few ``--set`` variants, the
cell, tuning-stage, tune, NAS ground-truth / architecture / proxy and leaderboard protocol hashes, as written at
revision 5e68193 by ``tests/data/make_golden_hashes.py``; this test recomputes them through the public functions."""
import importlib.util
import json
from pathlib import Path

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


def test_every_shipped_suites_hashes_are_the_golden_ones():
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

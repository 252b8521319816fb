"""Suite validation (tgbench.config) through ``tgbench validate``: the shipped suites pass, and every kind of
bad suite is refused with exit 2 and ONE stderr line naming the file and the key path at fault.

Everything runs in-process (``tgbench.cli.main``); one test runs the installed console script to check the
real exit code and that no traceback leaks.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tgbench.suite.loading import load_suite
from tgbench.errors import BadInput, ConfigError
from helpers import cli as _cli

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "suites").glob("*.yaml"))
SCRIPT = Path(sys.executable).with_name("tgbench")


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got {len(lines)}:\n{err}"
    assert "Traceback" not in err
    assert lines[0].startswith("tgbench: error: ")
    return lines[0]


# ------------------------------------------------------------------------------------------ shipped suites
def test_there_are_shipped_suites():
    assert SHIPPED, "suites/*.yaml is empty"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_validate_accepts_shipped_suite(path, capsys):
    code, out, err = _cli(["validate", str(path)], capsys)
    assert code == 0, err
    assert err == ""
    assert out.strip().startswith(f"{path}: ok")
    # every profile it declares resolves too
    suite = load_suite(path)
    for name in suite.profiles:
        assert load_suite(path, name).name == suite.name


# ------------------------------------------------------------------------------------------ bad suites
GOOD_SOURCES = "sources:\n  - method: real\n  - method: gtn\n"

# id -> (yaml text, substrings the one error line must contain besides the file name)
BAD = {
    "malformed_yaml": ("name: t\nsources: [\n  - method: real\n", ["malformed YAML", "line 3"]),
    "top_level_list": ("- name: t\n", ["top level must be a mapping"]),
    "unknown_top_key": ("name: t\nnmae: x\n" + GOOD_SOURCES, ["nmae: unknown key", "'name'"]),
    "unknown_nested_key": ("name: t\nouter: {iteratons: 3}\n" + GOOD_SOURCES,
                           ["outer.iteratons: unknown key", "did you mean 'iterations'"]),
    "unknown_deep_key": ("name: t\ndataset: {nmae: mnist}\n" + GOOD_SOURCES,
                         ["dataset.nmae: unknown key", "did you mean 'name'"]),
    "wrong_type": ('name: t\ninner: {steps: "many"}\n' + GOOD_SOURCES, ["inner.steps:", "integer"]),
    "negative_steps": ("name: t\ninner: {steps: -3}\n" + GOOD_SOURCES, ["inner.steps:", "greater than 0"]),
    "zero_steps": ("name: t\ninner: {steps: 0}\n" + GOOD_SOURCES, ["inner.steps:", "greater than 0"]),
    "zero_outer_iterations": ("name: t\nouter: {iterations: 0}\n" + GOOD_SOURCES, ["outer.iterations:"]),
    "batch_size_zero": ("name: t\ninner: {batch_size: 0}\n" + GOOD_SOURCES, ["inner.batch_size:", "greater than or equal to 2"]),
    "inner_lr_zero": ("name: t\ninner: {lr: 0}\n" + GOOD_SOURCES, ["inner.lr:", "greater than 0"]),
    "outer_lr_negative": ("name: t\nouter: {lr: -0.5}\n" + GOOD_SOURCES, ["outer.lr:", "greater than 0"]),
    "seeds_zero": ("name: t\nevaluation: {seeds: 0}\n" + GOOD_SOURCES, ["evaluation.seeds:", "greater than 0"]),
    "no_sources": ("name: t\nsources: []\n", ["sources:"]),
    "missing_name": (GOOD_SOURCES, ["name:", "required"]),
    "unknown_method": ("name: t\nsources:\n  - method: real\n  - method: gtm\n",
                       ["sources[1].method:", "unknown method 'gtm'", "did you mean 'gtn'",
                        "choose from: dataset_distillation, external, gtn, real"]),
    "unknown_dataset": ("name: t\ndataset: {name: mnsit}\n" + GOOD_SOURCES,
                        ["dataset.name:", "unknown dataset 'mnsit'", "did you mean 'mnist'"]),
    "unknown_fallback": ("name: t\ndataset: {name: mnist, fallback: nope}\n" + GOOD_SOURCES,
                         ["dataset.fallback:", "unknown dataset 'nope'"]),
    "bad_source_param": ("name: t\nsources:\n  - method: real\n  - method: gtn\n    params: {curriculum: bogus}\n",
                         ["sources[1].params.curriculum:", "'full'"]),
    "unknown_source_param": ("name: t\nsources:\n  - method: real\n  - method: gtn\n    params: {curriculm: full}\n",
                             ["sources[1].params.curriculm: unknown key", "did you mean 'curriculum'"]),
    "bad_source_outer": ("name: t\nsources:\n  - method: real\n  - method: gtn\n    outer: {iteratons: 3}\n",
                         ["sources[1].outer.iteratons: unknown key", "did you mean 'iterations'"]),
    "bad_profile_value": ("name: t\n" + GOOD_SOURCES + "profiles:\n  smoke:\n    inner: {steps: 0}\n",
                          ["profiles.smoke.inner.steps:", "greater than 0"]),
    "unknown_key_in_profile": ("name: t\n" + GOOD_SOURCES + "profiles:\n  cpu:\n    outer: {iteratons: 3}\n",
                               ["profiles.cpu.outer.iteratons: unknown key", "did you mean 'iterations'"]),
    "bad_method_in_profile": ("name: t\n" + GOOD_SOURCES + "profiles:\n  smoke:\n    sources: [{method: gtm}]\n",
                              ["profiles.smoke.sources[0].method:", "did you mean 'gtn'"]),
    "unknown_profile_name": ("name: t\n" + GOOD_SOURCES + "profiles:\n  smokey: {}\n",
                             ["profiles.smokey", "'smoke', 'cpu' or 'paper'"]),
    "duplicate_labels": ("name: t\nsources:\n  - method: gtn\n  - method: gtn\n",
                         ["sources:", "two sources are named 'gtn'", "label"]),
    "duplicate_explicit_labels": ("name: t\nsources:\n  - {method: gtn, label: a}\n  - {method: real, label: a}\n",
                                  ["sources:", "two sources are named 'a'"]),
    "missing_include": ("include: missing_base.yaml\nname: t\n", ["include:", "missing_base.yaml"]),
    "duplicate_key": ("name: t\ninner: {lr: 0.1}\n" + GOOD_SOURCES + "inner: {lr: 0.5}\n",
                      ["malformed YAML", "line 6", "duplicate key 'inner'"]),
    "duplicate_nested_key": ("name: t\ninner: {lr: 0.1, lr: 0.5}\n" + GOOD_SOURCES, ["duplicate key 'lr'"]),
    "boolean_for_an_integer": ("name: t\ninner: {steps: true}\n" + GOOD_SOURCES,
                               ["inner.steps:", "expected a number, got the boolean True"]),
    "boolean_for_a_float": ("name: t\nouter: {lr: yes}\n" + GOOD_SOURCES, ["outer.lr:", "boolean"]),
    "empty_suite_name": ("name: ''\n" + GOOD_SOURCES, ["name:", "non-empty name"]),
    "suite_name_with_a_slash": ("name: a/b\n" + GOOD_SOURCES, ["name:", "without '/'"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_validate_rejects_bad_suite_with_one_line(case, tmp_path, capsys):
    text, expected = BAD[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    code, out, err = _cli(["validate", str(path)], capsys)
    assert code == 2, (out, err)
    line = _one_error_line(err)
    assert str(path) in line, line          # the file at fault ...
    for fragment in expected:               # ... and the key (path) at fault
        assert fragment in line, f"{fragment!r} not in {line!r}"
    # the same problem raised through the library is a ConfigError/BadInput carrying the same text
    with pytest.raises(BadInput) as info:
        load_suite(path)
    assert f"tgbench: error: {info.value}" == line


def test_validate_missing_suite_file(tmp_path, capsys):
    path = tmp_path / "nope.yaml"
    code, _, err = _cli(["validate", str(path)], capsys)
    assert code == 2
    assert str(path) in _one_error_line(err)


def test_error_in_included_file_is_reported(tmp_path, capsys):
    (tmp_path / "base.yaml").write_text("name: b\n" + GOOD_SOURCES + "inner: {steps: -1}\n")
    (tmp_path / "variant.yaml").write_text("include: base.yaml\nname: v\n")
    code, _, err = _cli(["validate", str(tmp_path / "variant.yaml")], capsys)
    assert code == 2
    assert "inner.steps" in _one_error_line(err)


def test_circular_include_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("include: b.yaml\nname: a\n" + GOOD_SOURCES)
    (tmp_path / "b.yaml").write_text("include: a.yaml\n")
    with pytest.raises(ConfigError, match="circular include"):
        load_suite(tmp_path / "a.yaml")


def test_unknown_profile_argument():
    path = REPO / "suites" / "mnist_fewstep.yaml"
    with pytest.raises(BadInput, match="--profile"):
        load_suite(path, "nope")


def test_profile_the_suite_does_not_define(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: t\n" + GOOD_SOURCES + "profiles:\n  smoke: {}\n")
    with pytest.raises(BadInput, match="no profile 'paper'; it has: smoke"):
        load_suite(path, "paper")


def test_installed_script_exit_codes(tmp_path):
    """The console script itself: 0 on the shipped suite, 2 and one clean line on a bad one."""
    env = {**os.environ, "TGBENCH_DEBUG": ""}
    ok = subprocess.run([str(SCRIPT), "validate", str(SHIPPED[0])], capture_output=True, text=True, env=env,
                        cwd=tmp_path, timeout=120)
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\nouter: {iteratons: 3}\n" + GOOD_SOURCES)
    res = subprocess.run([str(SCRIPT), "validate", str(bad)], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert res.returncode == 2
    line = _one_error_line(res.stderr)
    assert str(bad) in line and "outer.iteratons" in line and "'iterations'" in line


# ------------------------------------------------------------------------------------------ include
def test_include_variant_on_shipped_suite(tmp_path, capsys):
    """A 3-line variant (relative include) validates and its overrides win; everything else is inherited."""
    base_path = REPO / "suites" / "mnist_fewstep.yaml"
    variant_dir = tmp_path / "variants"
    variant_dir.mkdir()
    rel = os.path.relpath(base_path, variant_dir)
    variant = variant_dir / "variant.yaml"
    variant.write_text(f"include: {rel}\nname: fewstep_variant\nouter: {{iterations: 7}}\n")

    code, out, err = _cli(["validate", str(variant)], capsys)
    assert code == 0, err
    base, suite = load_suite(base_path), load_suite(variant)
    assert suite.name == "fewstep_variant"
    assert suite.outer.iterations == 7
    assert base.outer.iterations != 7
    # inherited, including sibling keys of the overridden mapping and the profiles
    assert suite.outer.lr == base.outer.lr
    assert suite.inner == base.inner
    assert [s.name for s in suite.sources] == [s.name for s in base.sources]
    assert set(suite.profiles) == set(base.profiles)
    assert load_suite(variant, "smoke").outer.iterations == load_suite(base_path, "smoke").outer.iterations


def test_include_deep_merges_profile_overrides(tmp_path):
    base = tmp_path / "base" / "base.yaml"
    base.parent.mkdir()
    base.write_text("name: b\n" + GOOD_SOURCES + "inner: {steps: 8, batch_size: 16}\n"
                    "profiles:\n  smoke:\n    inner: {batch_size: 4}\n    outer: {iterations: 2}\n")
    variant = tmp_path / "v.yaml"
    variant.write_text("include: base/base.yaml\nprofiles:\n  smoke:\n    inner: {steps: 3}\n")
    smoke = load_suite(variant, "smoke")
    assert (smoke.inner.steps, smoke.inner.batch_size, smoke.outer.iterations) == (3, 4, 2)
    assert load_suite(variant).inner.steps == 8


def test_profile_overrides_apply_and_base_is_untouched():
    path = REPO / "suites" / "mnist_fewstep.yaml"
    base, smoke = load_suite(path), load_suite(path, "smoke")
    assert smoke.inner.steps < base.inner.steps
    assert smoke.dataset.name == "mnist-5k"
    assert base.dataset.name == "mnist"

"""Capabilities a source declares on its class are enforced where a suite relies on them: a suite that asks for
an ES or hybrid meta-gradient on a source that declares ``supports_es = False`` is refused when it is loaded
(exit 2, one line naming the key), not half-way through a run."""
from __future__ import annotations

import pytest

from helpers import cli
from tgbench.registry import methods
from tgbench.methods.gtn import GTN

SUITE = """name: es_suite
dataset: {{name: mnist-5k}}
outer: {{meta_gradient: {suite_estimator}}}
sources:
  - method: no_es_gtn
    params: {{noise_dim: 4, fc_hidden: 8, channels: [4, 2]}}
{arm_outer}"""


class NoEsGTN(GTN):
    """GTN that declares it cannot be perturbed by ES (e.g. a source whose parameters are not plain tensors)."""

    supports_es = False


@pytest.fixture
def no_es_method():
    methods.register("no_es_gtn", NoEsGTN)
    yield
    methods.unregister("no_es_gtn")


@pytest.mark.parametrize("suite_estimator, arm_outer, key", [
    ("es", "", "outer.meta_gradient"),
    ("hybrid", "", "outer.meta_gradient"),
    ("backprop", "    outer: {meta_gradient: es}\n", "sources[0].outer.meta_gradient"),
])
def test_es_on_a_source_without_supports_es_is_refused(tmp_path, capsys, no_es_method, suite_estimator,
                                                        arm_outer, key):
    path = tmp_path / "s.yaml"
    path.write_text(SUITE.format(suite_estimator=suite_estimator, arm_outer=arm_outer))
    code, out, err = cli(["validate", str(path)], capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"tgbench: error: {path}: {key}: {('es' if arm_outer else suite_estimator)!r} perturbs the source's "
        "parameters, and method 'no_es_gtn' declares supports_es = False; use backprop"]


def test_backprop_on_a_source_without_supports_es_is_fine(tmp_path, capsys, no_es_method):
    path = tmp_path / "s.yaml"
    path.write_text(SUITE.format(suite_estimator="backprop", arm_outer=""))
    code, out, err = cli(["validate", str(path)], capsys)
    assert code == 0, err


def test_every_builtin_that_declares_es_passes_validation_with_es(tmp_path, capsys):
    for name in methods.names():
        if methods.get(name).supports_es and name != "external":   # (external needs a data file)
            path = tmp_path / f"{name}.yaml"
            path.write_text(f"name: s\nouter: {{meta_gradient: es}}\nsources: [{{method: {name}}}]\n")
            code, out, err = cli(["validate", str(path)], capsys)
            assert code == 0, (name, err)

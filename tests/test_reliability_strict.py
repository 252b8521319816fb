"""One strict base for every settings model (issue 27): booleans are not numbers, floats are finite.

``--set outer.grad_clip=true`` and ``--set sources.gtn.params.noise_dim=true`` used to validate (the old check
knew plain ``int``/``float`` only, not ``PositiveInt`` or ``Optional[...]``, and methods' and proxies' ``Params``
had copies of the base without it): one run finished with a 1-dimensional noise input and recorded
``noise_dim: True``. The walk below covers every model the registry lists (each method's and proxy's ``Params``)
and every section of a suite.
"""
from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

import tgbench.suite.schema  # noqa: F401 (defines the suite's sections, subclasses of the base)
from tgbench.registry import methods, proxies
from tgbench.strict import Strict, bool_where_number

from helpers import cli


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _models() -> dict[str, type]:
    found = {f"method {n}": methods.get(n).Params for n in methods.names()}
    found |= {f"proxy {n}": proxies.get(n).Params for n in proxies.names()}
    found |= {f"{m.__module__}.{m.__qualname__}": m for m in _subclasses(Strict) if m.__module__.startswith("tgbench")}
    return found


MODELS = _models()


def _number_fields(model) -> list[tuple[str, str]]:
    """(field, "scalar" | "list") for every field that takes a number or a list of numbers, not a boolean."""
    out = []
    for name, info in model.model_fields.items():
        if bool_where_number(True, info.annotation):
            out.append((name, "scalar"))
        elif bool_where_number([True], info.annotation):
            out.append((name, "list"))
    return out


def _refused(model, field: str, value) -> bool:
    try:
        model.model_validate({field: value})
    except ValidationError as exc:
        return any(err["loc"][:1] == (field,) for err in exc.errors())
    return False


def test_every_registered_params_model_builds_on_the_one_strict_base():
    assert len(MODELS) >= 30
    for name, model in MODELS.items():
        assert issubclass(model, Strict), name
    assert any(_number_fields(m) for n, m in MODELS.items() if n.startswith("method "))
    assert any(_number_fields(m) for n, m in MODELS.items() if n.startswith("proxy "))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_no_model_takes_a_boolean_nan_or_infinity_for_a_number(name):
    model = MODELS[name]
    for field, shape in _number_fields(model):
        for bad in (True, False, math.nan, math.inf, -math.inf):
            value = bad if shape == "scalar" else [bad]
            assert _refused(model, field, value), f"{name}.{field} took {value!r}"
        # the other edge values: refused or kept as a plain finite number of the field's type, never a crash
        for edge in (0, -1, -0.5, 1e12):
            value = edge if shape == "scalar" else [edge]
            try:
                made = model.model_validate({field: value})
            except ValidationError:
                continue
            got = getattr(made, field)
            for item in got if shape == "list" else [got]:
                assert not isinstance(item, bool) and math.isfinite(item), f"{name}.{field}: {item!r}"


@pytest.mark.parametrize("setting", ["outer.grad_clip=true", "sources.gtn.params.noise_dim=true",
                                     "sources.gtn.params.fc_hidden=true", "sources.gtn.params.code_scale=true",
                                     "sources.gtn.params.channels=[true, 4]", "outer.lr=.nan",
                                     "sources.gtn.params.code_scale=.inf", "inner.lr=-.inf"])
def test_a_boolean_or_non_finite_set_is_exit_2_naming_the_key(capsys, setting):
    code, _, err = cli(["validate", "mnist_fewstep", "--set", setting], capsys)
    key = setting.split("=")[0]
    assert code == 2 and len(err.strip().splitlines()) == 1 and f"--set {key}" in err, err


def test_the_checker_knows_its_annotations():
    from typing import Annotated, Any, Optional

    from pydantic import Field

    assert bool_where_number(True, Optional[Annotated[float, Field(gt=0)]])
    assert bool_where_number([1, True], list[int]) and bool_where_number({"a": True}, dict[str, float])
    assert not bool_where_number(True, bool | int) and not bool_where_number(True, Any)
    assert not bool_where_number(1, int) and not bool_where_number([1.0], list[float])

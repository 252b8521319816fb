"""The one strict base of every settings model: the suite's sections (``tgbench.suite.schema``), every method's
``Params`` (``tgbench.source.SourceParams``) and every proxy's (``tgbench.proxies.ProxyParams``).

Strict means: an unknown key is an error; a boolean is never taken for a number (YAML's ``true`` would otherwise
be 1 to an int or float setting: ``noise_dim: true`` ran with a 1-dimensional noise input), at the top of a
field or inside its lists and mappings; a float is finite (NaN and +-inf are refused). A low module: pydantic
only, so every layer can build on it.
"""
from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

_NUMBERS = (int, float)


def _leaf_types(annotation: Any) -> set:
    """The plain types a (possibly Annotated / Optional / Union / Literal) annotation accepts at its top."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _leaf_types(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_leaf_types(a) for a in typing.get_args(annotation)))
    if origin is Literal:
        return {type(v) for v in typing.get_args(annotation)}
    return {origin or annotation}


def _element_annotations(annotation: Any, container: type) -> list:
    """The item annotations of the list/tuple/set (``container`` list) or the value annotations of the dict
    (``container`` dict) branches of ``annotation``."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _element_annotations(typing.get_args(annotation)[0], container)
    if origin in (typing.Union, types.UnionType):
        return [e for a in typing.get_args(annotation) for e in _element_annotations(a, container)]
    args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
    if container is dict and origin is dict and len(args) == 2:
        return [args[1]]
    if container is list and origin in (list, tuple, set, frozenset):
        return args
    return []


def bool_where_number(value: Any, annotation: Any) -> bool:
    """Whether ``value`` holds a boolean at a place ``annotation`` means a number (and not a boolean)."""
    if isinstance(value, bool):
        leaves = _leaf_types(annotation)
        return bool(leaves & set(_NUMBERS)) and bool not in leaves and Any not in leaves
    if isinstance(value, (list, tuple)):
        inner = _element_annotations(annotation, list)
        return any(bool_where_number(v, a) for v in value for a in inner)
    if isinstance(value, dict):
        inner = _element_annotations(annotation, dict)
        return any(bool_where_number(v, a) for v in value.values() for a in inner)
    return False


class Strict(BaseModel):
    """Unknown keys are errors, booleans are not numbers, floats are finite (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        # YAML's `yes`/`true` would otherwise be taken as 1 by an int or float setting (steps: true -> 1 step)
        if bool_where_number(value, cls.model_fields[info.field_name].annotation):
            raise ValueError(f"expected a number, got the boolean {value}" if isinstance(value, bool)
                             else "expected numbers, got a boolean among them")
        return value

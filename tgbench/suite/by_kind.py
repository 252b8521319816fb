"""A suite's model by its kind: :class:`Suite` (the schema's ``Suite`` whose ``kind`` must be a registered suite
kind, and whose sections belong to their kinds) plus the kind's own section as a typed field. This is where the
suite reaches the suite-kind registry; the schema below it does not.
"""
from __future__ import annotations

import functools
import typing
from typing import Any

from pydantic import create_model, field_validator, model_validator

from tgbench.registry import suite_kinds
from tgbench.suite import schema


class Suite(schema.Suite):
    """A suite of a registered kind, the base of every kind's model (``suite_model``): the schema's ``Suite`` plus
    the checks that need the suite-kind registry. Named ``Suite`` too because pydantic's messages name the model
    (``1 validation error for Suite``, which e.g. the leaderboard prints), and they read as before the split."""

    @field_validator("kind")
    @classmethod
    def _registered_kind(cls, kind: str) -> str:
        if kind not in suite_kinds:
            raise ValueError(str(suite_kinds.unknown(kind)))
        return kind

    @model_validator(mode="before")
    @classmethod
    def _kind_sections(cls, raw: Any) -> Any:
        """A kind's section belongs to its suites alone, and a kind that requires its section gets it."""
        kind_name = raw.get("kind", "fewstep") if isinstance(raw, dict) else None
        if not isinstance(kind_name, str) or kind_name not in suite_kinds:
            return raw  # (pydantic reports what is wrong with the input itself)
        for other_name in suite_kinds.names():
            other = suite_kinds.get(other_name)
            if other.section is None:
                continue
            if other_name == kind_name and other.section_required and raw.get(other.section) is None:
                raise ValueError(f"a {kind_name} suite needs a `{other.section}:` section")
            if other_name != kind_name and other.section in raw:
                raise ValueError(f"`{other.section}:` is the section of {other_name} suites, and only "
                                 f"{other_name} suites may have one")
        return raw


@functools.cache
def _kind_model(kind) -> type[Suite]:
    if kind.section is None:
        return Suite
    field = (kind.section_model, ...) if kind.section_required else (typing.Optional[kind.section_model], None)
    return create_model(f"{kind.section.capitalize()}Suite", __base__=Suite, __module__=__name__,
                        **{kind.section: field})


def suite_model(kind_name: str) -> type[Suite]:
    """The model of a suite of this kind: :class:`Suite` plus the kind's own section (``SuiteKind.section``)
    as a typed field. An unregistered name gets :class:`Suite`, whose ``kind`` field then says what is
    wrong."""
    if not isinstance(kind_name, str) or kind_name not in suite_kinds:
        return Suite
    return _kind_model(suite_kinds.get(kind_name))


def suite_from_dict(raw: Any) -> Suite:
    """Validate a suite's data (a YAML document, a stored ``model_dump``) with the model of its kind; raises
    pydantic's ``ValidationError`` (``load_suite`` turns it into one ``ConfigError`` line)."""
    return model_of(raw).model_validate(raw)


def model_of(raw: Any) -> type[Suite]:
    return suite_model(raw.get("kind", "fewstep") if isinstance(raw, dict) else None)

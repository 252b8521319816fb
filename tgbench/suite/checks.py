"""Checks of a validated suite against the registries: its dataset and method names, each method's ``params``,
per-arm overrides, capabilities, tuning spaces, a kind's own section, and (once the data is loaded) batch sizes.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tgbench.errors import ConfigError
from tgbench.registry import datasets, methods, suite_kinds
from tgbench.suite.messages import format_error
from tgbench.suite.schema import (InnerLoop, LearnerSpace, OuterLoop, SearchDimension, SourceEntry, Suite,
                                  check_setting_key)


def plugin_params(registry, name: str, params: dict, path: Path, key: str, name_field: str):
    """The plug-in ``registry`` holds as ``name`` and its ``Params`` validated from ``params``: ``(class,
    params)``. An unknown name is a ConfigError naming ``path: key.name_field``, a bad value one naming
    ``key.params`` and the field."""
    if name not in registry:
        raise registry.unknown(name, f"{path}: {key}.{name_field}")
    cls = registry.get(name, f"{path}: {key}.{name_field}")
    try:
        return cls, cls.Params.model_validate(params)
    except ValidationError as exc:
        raise ConfigError(format_error(path, exc, prefix=f"{key}.params", root=cls.Params)) from None


def check_sources(path: Path, suite: Suite, where: str) -> None:
    if suite.dataset.name not in datasets:
        raise datasets.unknown(suite.dataset.name, f"{path}: {where}dataset.name")
    if suite.dataset.fallback is not None and suite.dataset.fallback not in datasets:
        raise datasets.unknown(suite.dataset.fallback, f"{path}: {where}dataset.fallback")
    for i, entry in enumerate(suite.sources):
        key = f"{where}sources[{i}]"
        cls, _ = plugin_params(methods, entry.method, entry.params, path, key, "method")
        try:
            outer = suite.outer_for(entry)
        except ValidationError as exc:
            raise ConfigError(format_error(path, exc, prefix=f"{key}.outer", root=OuterLoop)) from None
        if outer.meta_gradient != "backprop" and not cls.supports_es:  # a declared capability, enforced here
            at = f"{key}.outer" if "meta_gradient" in entry.outer else f"{where}outer"
            raise ConfigError(f"{path}: {at}.meta_gradient: {outer.meta_gradient!r} perturbs the source's "
                              f"parameters, and method {entry.method!r} declares supports_es = False; use backprop")
        try:
            suite.inner_for(entry)
        except ValidationError as exc:
            raise ConfigError(format_error(path, exc, prefix=f"{key}.inner", root=InnerLoop)) from None
        try:
            suite.learner_for(entry)
        except ValidationError as exc:
            raise ConfigError(format_error(path, exc, prefix=f"{key}.learner", root=LearnerSpace)) from None
        if entry.tune_space is not None:
            if suite.tuning is None:
                raise ConfigError(f"{path}: {key}.tune_space: only a suite with a `tuning:` stage tunes its arms")
            for name in entry.tune_space:
                try:
                    check_setting_key(name)
                except ValueError as exc:
                    raise ConfigError(f"{path}: {key}.tune_space.{name}: {exc}") from None
    for i, entry in enumerate(suite.sources):
        if suite.tuning:
            own = entry.tune_space is not None
            check_space(path, suite, i, suite.tuning.space_for(entry),
                         f"{where}sources[{i}].tune_space" if own else f"{where}tuning.space")
    validate = suite_kinds.get(suite.kind).validate  # a kind's own section (e.g. nas_proxy's `nas:`)
    if validate is not None:
        validate(path, suite, where)


def arm_with(suite: Suite, entry: SourceEntry, values: dict[str, Any]) -> SourceEntry:
    """The arm with sampled ``values`` applied as per-arm overrides, validated like any arm (``load_suite`` checks
    both ends of every range this way, so a study cannot fail half-way on an illegal value)."""
    fields = entry.model_dump()
    for key, value in values.items():
        section, _, leaf = key.partition(".")
        fields[section] = {**fields[section], leaf: value}
    arm = SourceEntry.model_validate(fields)
    suite.outer_for(arm), suite.inner_for(arm)
    methods.get(arm.method).Params.model_validate(arm.params)
    return arm


def check_space(path: Path, suite: Suite, i: int, space: dict[str, SearchDimension], key: str) -> None:
    """Every dimension of ``space`` names a setting of ``sources[i]``, and both ends of its range are legal
    values for it (so a study can never fail half-way on an illegal value)."""
    entry = suite.sources[i]
    for name, dim in space.items():
        section, _, leaf = name.partition(".")
        params = methods.get(entry.method).Params.model_fields
        if section == "params" and leaf not in params:
            close = difflib.get_close_matches(leaf, list(params), n=1)
            hint = f" (did you mean 'params.{close[0]}'?)" if close else ""
            raise ConfigError(f"{path}: {key}.{name}: method {entry.method!r} of sources[{i}] "
                              f"has no parameter {leaf!r}{hint}")
        for value in dim.choices if dim.choices is not None else (dim.low, dim.high):
            value = int(value) if dim.integer else value
            try:
                arm_with(suite, entry, {name: value})
            except ValidationError as exc:
                reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
                raise ConfigError(f"{path}: {key}.{name}: {value!r} is not a legal value for "
                                  f"sources[{i}]: {reason}") from None


def check_data_sizes(path: str | Path, suite: Suite, train_size: int, dataset: str,
                     profile: str | None = None) -> None:
    """Refuse (``ConfigError``) batch sizes larger than the training split every batch is drawn from: each
    source's ``inner.batch_size`` (B examples per inner step) and ``outer.meta_batch_size`` (the meta-loss's
    real examples). Only known once the dataset is loaded, so ``run_suite`` calls this right after loading it,
    before any cell starts. The key is the per-arm override when the arm sets one, else the suite's."""
    at = f" (profile {profile!r})" if profile else ""
    for i, entry in enumerate(suite.sources):
        sizes = (("inner", "batch_size", suite.inner_for(entry).batch_size, entry.inner),
                 ("outer", "meta_batch_size", suite.outer_for(entry).meta_batch_size, entry.outer))
        for section, key, value, own in sizes:
            if value > train_size:
                where = f"sources[{i}].{section}.{key}" if key in own else f"{section}.{key}"
                raise ConfigError(f"{path}: {where}: {value} is larger than the training split it is drawn from "
                                  f"({train_size} examples of {dataset!r}) for source {entry.name!r}{at}")

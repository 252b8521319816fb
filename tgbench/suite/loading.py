"""Reading a suite: its YAML file with ``include:``, relative data paths, the chosen profile and ``--set``
overrides, validated as a whole (every profile too) before anything runs; any problem becomes one ``ConfigError``
line ``<file>: <key.path>: <what is wrong>``.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml
from pydantic import ValidationError

from tgbench.errors import BadInput, ConfigError
from tgbench.inputs import data_path_fields, resolve_against
from tgbench.locations import read_text_capped
from tgbench.registry import methods
from tgbench.suite.by_kind import model_of, suite_from_dict
from tgbench.suite.checks import check_sources
from tgbench.suite.messages import format_error
from tgbench.suite.names import PROFILES, installed_suites
from tgbench.suite.overrides import parse_setting, validated_with
from tgbench.suite.schema import Suite
from tgbench.suite.yaml_text import UniqueKeyLoader, check_expanded_size


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a suite file, resolving ``include: other.yaml`` (relative to the file) by deep merge."""
    if path in seen:
        raise ConfigError(f"{path}: include: circular include")
    try:
        # a regular file of at most a few MB (a FIFO or /dev/zero is refused at once, not read forever)
        raw = yaml.load(read_text_capped(path, "suite file"), Loader=UniqueKeyLoader)  # noqa: S506 (SafeLoader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such suite file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text (a suite is a YAML text file)") from None
    except OSError as exc:  # a directory, no permission, ...
        raise ConfigError(f"{path}: cannot read the suite file: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML: {where}{problem}") from None
    except (ValueError, TypeError, RecursionError) as exc:  # yaml's constructors, e.g. a date 2001-13-14
        raise ConfigError(f"{path}: malformed YAML: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(raw).__name__}")
    check_expanded_size(path, raw)
    _resolve_data_paths(path, raw)
    include = raw.pop("include", None)
    if include is not None:
        if not isinstance(include, str):
            raise ConfigError(f"{path}: include: must be a file name or an installed suite's name")
        target = (path.parent / include).resolve()
        if not target.is_file() and include in installed_suites():   # `include: mnist_fewstep` from anywhere
            target = installed_suites()[include]
        if not target.is_file():
            raise ConfigError(f"{path}: include: no such file {target} and no installed suite {include!r} "
                              "(tgbench list suites)")
        raw = deep_merge(_read_yaml(target, seen + (path,)), raw)
    return raw


def _resolve_data_paths(path: Path, raw: dict) -> None:
    """Make every relative data path (a method parameter declared ``tgbench.inputs.DataPath``, e.g. ``external``'s
    ``path``) of this file's sources, and of its profiles' sources, absolute against this file's folder, as
    ``include:`` is: a suite reads the same files from any working directory. In place; what does not look like
    a source list is left for validation to report."""
    lists = [raw.get("sources")]
    profiles = raw.get("profiles")
    if isinstance(profiles, dict):
        lists += [p.get("sources") for p in profiles.values() if isinstance(p, dict)]
    for sources in lists:
        for entry in sources if isinstance(sources, list) else ():
            params = entry.get("params") if isinstance(entry, dict) else None
            if not isinstance(params, dict) or not isinstance(entry.get("method"), str) \
                    or entry["method"] not in methods:
                continue
            try:
                model = methods.get(entry["method"]).Params
            except BadInput:  # a plug-in that fails to load: validation reports it with its key
                continue
            for name in data_path_fields(model):
                if name in params:
                    params[name] = resolve_against(params[name], path.parent)


def load_suite(path: str | Path, profile: str | None = None, overrides: tuple[str, ...] | list[str] = ()) -> Suite:
    """Read, merge the chosen profile's overrides, and validate a suite (every profile is validated too).

    Source names and their ``params`` are checked against the method registry, so a typo in a method name or
    a curriculum fails here, before any work starts. ``overrides`` (``--set KEY=VALUE``, see
    :func:`apply_overrides`) are applied after the profile — the chosen one, or without one (``tgbench validate``)
    the base suite and every profile alike — and validated the same way; the file itself is validated first, so
    an error names the ``--set`` key only when an override caused it.
    """
    path = Path(path)
    raw = _read_yaml(path)
    try:
        base = suite_from_dict(raw)
    except ValidationError as exc:
        raise ConfigError(format_error(path, exc, root=model_of(raw))) from None
    if profile is not None and profile not in PROFILES:
        raise BadInput(f"--profile: unknown profile {profile!r}; choose from: {', '.join(PROFILES)}")
    resolved, merged_raw = {}, {}
    for name, override in base.profiles.items():
        merged_raw[name] = deep_merge({k: v for k, v in raw.items() if k != "profiles"}, override)
        try:
            resolved[name] = suite_from_dict(merged_raw[name])
        except ValidationError as exc:
            raise ConfigError(format_error(path, exc, prefix=f"profiles.{name}", root=model_of(merged_raw[name]))) \
                from None
    for suite, where in [(base, "")] + [(s, f"profiles.{n}.") for n, s in resolved.items()]:
        check_sources(path, suite, where)
    if profile is not None and not base.profiles:  # a suite without profiles runs as written at any profile
        resolved[profile], merged_raw[profile] = base, {k: v for k, v in raw.items() if k != "profiles"}
    if overrides:  # over the chosen profile only (what runs); with none (validate), over the base and every one
        try:
            settings = [parse_setting(text) for text in overrides]
        except BadInput as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if profile is None:
            base = validated_with(path, raw, settings, "")
        resolved = {name: validated_with(path, merged_raw[name], settings, f" (profile {name!r})")
                    for name in resolved if profile in (None, name)}
    if profile is None:
        return base
    if profile not in resolved:
        raise BadInput(f"{path}: --profile: suite has no profile {profile!r}; it has: {', '.join(resolved) or 'none'}")
    return resolved[profile]

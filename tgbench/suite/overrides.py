"""``--set KEY=VALUE`` overrides: parsed as YAML, applied to a suite's mapping after its profile, and validated
as a file is, an error naming the key at fault."""
from __future__ import annotations

import copy
import difflib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tgbench.errors import BadInput, ConfigError
from tgbench.suite.by_kind import model_of, suite_from_dict
from tgbench.suite.checks import check_sources
from tgbench.suite.messages import format_error
from tgbench.suite.schema import Suite
from tgbench.suite.yaml_text import UniqueKeyLoader, check_expanded_size


@dataclass(frozen=True)
class Setting:
    text: str                 # KEY=VALUE as given
    key: str
    value: Any                # the YAML-typed value


def parse_setting(text: str) -> Setting:
    key, eq, value = text.partition("=")
    key = key.strip()
    if not eq or not key or any(not part for part in key.split(".")):
        raise BadInput(f"--set {text!r}: expected KEY=VALUE with a dotted KEY, e.g. --set outer.iterations=50")
    try:
        parsed = yaml.load(value, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except (yaml.YAMLError, ValueError, TypeError) as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BadInput(f"--set {key}: the value {value!r} is not valid YAML: {problem}") from None
    check_expanded_size(f"--set {key}", parsed)   # (an alias bomb fits in one argument too)
    return Setting(text, key, parsed)


def apply_overrides(raw: dict, settings: list[Setting]) -> list[tuple[Setting, str]]:
    """Set each ``--set`` value in ``raw`` (a suite mapping with its profile already merged in), in order;
    returns each setting with the location it set, spelt as validation errors spell it (``sources[3].params.x``).

    A key is a dotted path into the suite as it reads after the profile is applied — ``outer.iterations``,
    ``evaluation.seeds``, ``sources.gtn.params.noise_dim`` — so under ``--profile smoke`` it overrides the smoke
    value, and the same key means the same setting in every profile. A list item is named by its ``label``
    (else its ``method`` / ``proxy``) or by its index (``sources.0``); a mapping key that itself contains dots
    (``tuning.space.inner.lr.high``) is matched whole. ``profiles`` and ``include`` cannot be set (profiles are
    already applied). A key the suite's models do not have is refused here, with a "did you mean"; inside free
    mappings (a method's ``params``, an arm's ``outer``/``inner``/``learner``) the validation that follows refuses
    it. A section the suite leaves unset that is off by default (``tuning``, ``sweep``, ``evaluation.architectures``
    ...) is not created from one key: write it in the YAML.
    """
    located = []
    for setting in settings:
        parts = setting.key.split(".")
        if parts[0] in ("profiles", "include"):
            raise BadInput(f"--set {setting.key}: {parts[0]!r} cannot be set; name the setting as it reads after "
                           "the profile is applied (e.g. outer.iterations), the override then wins over the profile")
        node, loc, i, shape = raw, [], 0, model_of(raw)
        while True:
            segment, i = _next_segment(node, parts, i)
            last = i == len(parts)
            if isinstance(node, list):
                index = _list_index(node, segment, setting.key, _loc_text(loc))
                loc.append(index)
                shape = _item_shape(shape, list)
                if last:
                    node[index] = copy.deepcopy(setting.value)
                    break
                node = node[index]
            elif isinstance(node, dict):
                model = shape if isinstance(shape, type) and issubclass(shape, BaseModel) else None
                if model is not None and segment not in model.model_fields:
                    close = difflib.get_close_matches(segment, list(model.model_fields), n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise BadInput(f"--set {setting.key}: unknown key {segment!r} in "
                                   f"{_loc_text(loc) or 'the suite'}{hint}")
                loc.append(segment)
                field = model.model_fields[segment] if model is not None else None
                shape = field.annotation if field is not None else _item_shape(shape, dict)
                if last:
                    node[segment] = copy.deepcopy(setting.value)
                    break
                if segment not in node or node[segment] is None:
                    if field is not None and not field.is_required() and field.default is None:
                        raise BadInput(f"--set {setting.key}: the suite has no {_loc_text(loc)!r} section (it is "
                                       "off by default); write it in the YAML to set a value in it")
                    if _item_shape(shape, list) is not None or typing.get_origin(shape) is tuple:
                        raise BadInput(f"--set {setting.key}: the suite does not write {_loc_text(loc)!r}; set it "
                                       f"whole, e.g. --set {_loc_text(loc)}=[...]")
                    node[segment] = {}
                node = node[segment]
            else:
                raise BadInput(f"--set {setting.key}: {_loc_text(loc)} is a value ({node!r}), not a section")
        located.append((setting, _loc_text(loc)))
    return located


def _item_shape(shape: Any, container: type) -> Any:
    """The type of the items of a ``list[X]`` (``container=list``) or the values of a ``dict[str, X]`` annotation
    (``X | None`` unwrapped), or None when the annotation says nothing (free mappings such as ``params``)."""
    for option in (typing.get_args(shape) if typing.get_origin(shape) in (typing.Union, types.UnionType)
                   else (shape,)):
        if typing.get_origin(option) is container:
            return typing.get_args(option)[-1]
    return None


def _next_segment(node: Any, parts: list[str], i: int) -> tuple[str, int]:
    """The key at ``parts[i:]``: the longest run of parts that is a key of ``node`` (keys like ``inner.lr``),
    else one part."""
    if isinstance(node, dict):
        for j in range(len(parts), i + 1, -1):
            if ".".join(parts[i:j]) in node:
                return ".".join(parts[i:j]), j
    return parts[i], i + 1


def _list_index(items: list, segment: str, key: str, where: str) -> int:
    names = [item.get("label") or item.get("method") or item.get("proxy") if isinstance(item, dict) else None
             for item in items]
    if segment in names:
        if names.count(segment) > 1:
            raise BadInput(f"--set {key}: {where} has {names.count(segment)} entries named {segment!r}; "
                           "use its index instead")
        return names.index(segment)
    if segment.isdigit() and int(segment) < len(items):
        return int(segment)
    known = [str(n) for n in names if n is not None]
    close = difflib.get_close_matches(segment, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise BadInput(f"--set {key}: {where} has no entry {segment!r}{hint}; it has: "
                   f"{', '.join(known) or 'none'} (or an index 0-{len(items) - 1})")


def _loc_text(loc: list) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")


def validated_with(path: Path, raw: dict, settings: list[Setting], where: str) -> Suite:
    """``raw`` with ``settings`` applied, validated exactly as a file is; an error names the ``--set`` key at
    fault (the one whose location the error is at or under, else every key given)."""
    raw = _unaliased(raw)
    try:
        located = apply_overrides(raw, settings)
    except BadInput as exc:
        raise ConfigError(f"{path}: {exc}{where}") from None
    try:
        try:
            suite = suite_from_dict(raw)
        except ValidationError as exc:
            raise ConfigError(format_error(path, exc, root=model_of(raw))) from None
        check_sources(path, suite, "")
    except BadInput as exc:  # (a ConfigError, or an unknown method/dataset name)
        message = str(exc).removeprefix(f"{path}: ")
        at = message.split(": ", 1)[0]
        blamed = [(s, loc) for s, loc in located if _within(at, loc) or _within(loc, at)]
        keys = max(blamed, key=lambda b: len(b[1]))[0].key if blamed else ", ".join(s.key for s, _ in located)
        raise ConfigError(f"{path}: --set {keys}: {message}{where}") from None
    suite._overrides = tuple(s.text for s in settings)
    return suite


def _unaliased(node: Any) -> Any:
    """A copy in which no mapping or list appears twice: YAML anchors (``*meta_space``) share one object between
    every place they are used, so setting a value in one place would set it in all (``copy.deepcopy`` keeps such
    sharing)."""
    if isinstance(node, dict):
        return {k: _unaliased(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_unaliased(v) for v in node]
    return copy.deepcopy(node)


def _within(inner: str, outer: str) -> bool:
    """Location ``inner`` is ``outer`` or lies under it (``a.b[2].c`` under ``a.b``)."""
    return inner == outer or inner.startswith((outer + ".", outer + "["))

"""The YAML reading rules shared by suite files and ``--set`` values: no key twice in one mapping, and a size cap
that refuses alias bombs before anything walks them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tgbench.errors import ConfigError


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps the last one
    silently, so `lr: 0.1` ... `lr: 0.5` would run with 0.5 whatever the author meant)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden by explicit keys
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


# Values a suite's YAML may expand to, counting every alias as the copy it stands for: a real suite has a few
# hundred; an alias bomb (`a1: [*a0, *a0, ...]`, nine levels: 9**9 items) is refused before anything walks it.
MAX_YAML_VALUES = 100_000


def check_expanded_size(path: Path | str, raw: Any) -> None:
    """``ConfigError`` if ``raw`` expands to more than ``MAX_YAML_VALUES`` values (shared alias targets counted
    once per use): walked with a budget, so the check itself stays cheap on a bomb."""
    budget = MAX_YAML_VALUES
    stack = [raw]
    while stack:
        value = stack.pop()
        budget -= 1
        if budget < 0:
            raise ConfigError(f"{path}: the YAML expands to more than {MAX_YAML_VALUES} values (an alias bomb?); "
                              "refusing it")
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, (list, tuple, set)):
            stack.extend(value)

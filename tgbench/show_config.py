"""``tgbench config SUITE [--profile P] [--set ...]``: the suite as it will run — profile, ``--set`` overrides,
``include:`` and relative data paths resolved — as YAML (what lm-eval's ``--show_config`` and Hydra's ``--cfg job``
print), followed by the hash of each arm: the key its cells have in the store, so a user can tell whether a run
would reuse stored cells before starting it.

What a hash is depends on the suite's kind: a fewstep arm's cell hash (the same at every seed); with a
``tuning:`` stage, the stage's study hash (the final cells' hashes depend on the values the stage picks); a
``kind: tune`` arm's study hash. A hash depends on the dataset a suite resolves to, which is only known when the
data is loaded: the hashes are printed for ``dataset.name``, and for ``dataset.fallback`` too when the suite has one.
Nothing is read from or written to a store.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from tgbench.suite.loading import load_suite
from tgbench.suite.schema import Suite
from tgbench.identity import cell_hash, stage_hash, tune_hash


def arm_hashes(suite: Suite, dataset_resolved: str) -> tuple[str, dict[str, str]]:
    """(what the hashes are, {arm: hash}) of ``suite`` on ``dataset_resolved``."""
    if getattr(suite, "tune", None) is not None:
        return "tune study hash", {e.name: tune_hash(suite, e, dataset_resolved) for e in suite.sources}
    if suite.tuning is not None:
        return ("tuning-stage study hash (the final cells' hashes follow from the values it picks)",
                {e.name: stage_hash(suite, e, dataset_resolved) for e in suite.sources})
    return "cell hash (every seed)", {e.name: cell_hash(suite, e, dataset_resolved) for e in suite.sources}


def show_config(path: str | Path, profile: str | None, overrides: tuple[str, ...] = ()) -> str:
    """The text ``tgbench config`` prints (see the module docstring)."""
    suite = load_suite(path, profile, overrides)
    dumped = suite.model_dump(mode="json", exclude={"profiles"})
    lines = [f"# {path}" + (f" --profile {profile}" if profile else " (no profile)")
             + "".join(f" --set {o}" for o in overrides),
             yaml.safe_dump(dumped, sort_keys=False, default_flow_style=None).rstrip()]
    datasets = [suite.dataset.name] + ([suite.dataset.fallback] if suite.dataset.fallback else [])
    for dataset in datasets:
        what, hashes = arm_hashes(suite, dataset)
        lines.append(f"# {what} on {dataset}:")
        width = max(map(len, hashes), default=0)
        lines += [f"#   {name:{width}s}  {value}" for name, value in hashes.items()]
    return "\n".join(lines)

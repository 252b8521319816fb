"""Every identity hash tgbench computes for the shipped suites, recorded so that a refactor cannot change one.

``golden_hashes.json`` beside this file was written by running, at revision 5e68193 (main, before
``tgbench/identity.py`` gathered the hash functions in one module)::

    .venv/bin/python tests/data/make_golden_hashes.py > tests/data/golden_hashes.json

(the ``paper`` profiles re-generated at the merge of issue 24's official configuration, which changed what
those profiles run — 1,052 entries, all under ``paper``, none elsewhere; nothing was ever stored under them),
and ``tests/test_identity.py`` recomputes :func:`compute_all` and compares it with the file. The hashes are the
keys of users' stores: regenerate the file only for a change that is meant to re-key them, and say so.

What is recorded, for every suite in ``tgbench/suites/`` at the top level and at each of its profiles, and for a
few ``--set`` variants of each (:data:`OVERRIDES`; a variant the suite refuses is left out):

* ``cells``: each arm's cell hash on :data:`DATASET` (as written, and with a made-up set of tuning-stage choices
  when the suite has a ``tuning:`` stage);
* ``tuning``: each arm's tuning-stage hash (suites with a stage);
* ``tune``: each arm's tune-study hash (``kind: tune``);
* ``nas``: the ground-truth protocol hash, the scored architectures' ids (their count and a digest) and each
  proxy's hash (without and with a teacher record);
* ``leaderboard``: the hash of each arm's leaderboard protocol, the suite-level one, and the protocols the
  leaderboard rebuilds for a record without one (from a saved suite, and the partial one with no artifact).
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
SUITES = sorted((ROOT / "tgbench" / "suites").glob("*.yaml"))
DATASET = "mnist-5k"                  # a fixed resolved-dataset string: hashes depend on it, not on any data
TEACHER_HASH = "0123456789abcdef"     # a made-up teacher record's config hash (proxy hashes include it)

# --set variants: an outer-loop, an inner-loop and a learner setting, the legacy BN protocol (omitted from hashes),
# two settings no hash may include (count_flops, save_every), per-arm overrides and the samplers' settings
OVERRIDES: dict[str, tuple[str, ...]] = {
    "outer.iterations": ("outer.iterations=7",),
    "inner.lr": ("inner.lr=0.0123",),
    "learner.weight_norm": ("learner.weight_norm=true",),
    "bn_scored_batch": ("learner.bn_statistics=scored_batch",),
    "count_flops": ("evaluation.count_flops=false",),
    "save_every": ("outer.save_every=13",),
    "arm0.inner.lr": ("sources.0.inner.lr=0.0321",),
    "arm_gtn.params.noise_dim": ("sources.gtn.params.noise_dim=64",),
    "tuning.sampler": ("tuning.sampler.multivariate=false",),
    "tune.sampler": ("tune.sampler.n_ei_candidates=12",),
    "evaluation.seeds": ("evaluation.seeds=2",),
}


def _chosen_values(space: dict) -> dict:
    """Made-up tuning choices: each dimension's first choice, else its low end."""
    return {k: d.choices[0] if d.choices is not None else (int(d.low) if d.integer else float(d.low))
            for k, d in space.items()}


def _load_api():
    """The public hash / protocol functions, wherever the code keeps them."""
    try:
        from tgbench import identity
    except ImportError:  # before identity.py existed (the revision the JSON was written at)
        identity = None
    if identity is not None:
        return SimpleNamespace(
            cell_hash=identity.cell_hash, stage_hash=identity.stage_hash, tune_hash=identity.tune_hash,
            ground_truth_protocol=identity.ground_truth_protocol, arch_id=identity.arch_id,
            proxy_hash=lambda suite, entry, ids, teacher_hash: identity.proxy_hash(suite, entry, ids, DATASET,
                                                                                   teacher_hash),
            protocol_of=identity.protocol_of, config_hash=identity.protocol_hash,
            # the leaderboard has a record's saved suite when it has a teacher artifact
            saved_protocol=lambda record, saved_suite: identity.recorded_protocol(
                record, saved_suite if record.teacher_artifact else None))
    from tgbench import compute, leaderboard, tuning
    from tgbench.cells import cell_hash
    from tgbench.kinds import nas_proxy, tune
    from tgbench.store import config_hash

    class _OneSuiteStore:  # the leaderboard resolver reads a record's suite from its teacher artifact
        def __init__(self, saved_suite):
            self.saved = saved_suite

        def load_teacher(self, artifact):
            return {"suite": self.saved, "image_shape": [1, 28, 28], "num_classes": 10}

    def saved_protocol(record, saved_suite):
        resolver = getattr(leaderboard, "_ProtocolResolver")(_OneSuiteStore(saved_suite), print)
        return resolver.protocol(record, [])

    return SimpleNamespace(
        cell_hash=cell_hash, stage_hash=tuning.stage_hash, tune_hash=tune.tune_hash,
        ground_truth_protocol=nas_proxy.ground_truth_protocol, arch_id=nas_proxy.arch_id,
        proxy_hash=lambda suite, entry, ids, teacher_hash: getattr(nas_proxy, "_proxy_hash")(
            suite, entry, ids, SimpleNamespace(resolved=DATASET),
            SimpleNamespace(config_hash=teacher_hash) if teacher_hash else None),
        protocol_of=compute.protocol_of, config_hash=config_hash, saved_protocol=saved_protocol)


def suite_hashes(api, suite) -> dict:
    """Every hash of one loaded suite (at one profile, with one set of overrides)."""
    from tgbench.cells import tuned_arm
    out: dict = {"cells": {e.name: api.cell_hash(suite, e, DATASET) for e in suite.sources}}
    if suite.tuning is not None:
        out["cells_tuned"] = {}
        out["tuning"] = {}
        for e in suite.sources:
            space = suite.tuning.space_for(e)
            out["tuning"][e.name] = api.stage_hash(suite, e, DATASET)
            if space:
                out["cells_tuned"][e.name] = api.cell_hash(suite, tuned_arm(suite, e, _chosen_values(space)), DATASET)
    if getattr(suite, "tune", None) is not None:
        out["tune"] = {e.name: api.tune_hash(suite, e, DATASET) for e in suite.sources}
    if getattr(suite, "nas", None) is not None:
        from tgbench.kinds.nas_proxy import scored_architectures
        ids = [api.arch_id(s) for s in scored_architectures(suite)]
        out["nas"] = {"ground_truth": api.ground_truth_protocol(suite, DATASET),
                      # the ids, digested (a hundred ids per variant would make the file ten times larger)
                      "architectures": [len(ids), hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]],
                      "proxies": {p.name: api.proxy_hash(suite, p, ids, None) for p in suite.nas.proxies},
                      "proxies_with_teacher": {p.name: api.proxy_hash(suite, p, ids, TEACHER_HASH)
                                               for p in suite.nas.proxies}}
    dumped = suite.model_dump(mode="json")
    board = {"suite": api.config_hash(api.protocol_of(dumped, DATASET))}
    for e, entry_dump in zip(suite.sources, dumped["sources"]):
        board[e.name] = api.config_hash(api.protocol_of(dumped, DATASET, entry_dump))
        record = SimpleNamespace(protocol=None, teacher_artifact="teacher.pt", source=e.name, suite=suite.name,
                                 cell=f"{e.name}|seed=0", dataset_resolved=DATASET, inner_steps=suite.inner.steps,
                                 batch_size=suite.inner.batch_size)
        board[f"{e.name} (from saved suite)"] = api.config_hash(api.saved_protocol(record, dumped))
    partial = SimpleNamespace(protocol=None, teacher_artifact=None, source="x", suite=suite.name, cell="x|seed=0",
                              dataset_resolved=DATASET, inner_steps=suite.inner.steps,
                              batch_size=suite.inner.batch_size)
    board["partial"] = api.config_hash(api.saved_protocol(partial, dumped))
    out["leaderboard"] = board
    return out


def compute_all() -> dict:
    """suite file name -> profile ('' = the top level) -> variant ('' = as written) -> hashes."""
    from tgbench.suite.loading import load_suite
    from tgbench.errors import BadInput, ConfigError
    api = _load_api()
    result: dict = {}
    for path in SUITES:
        profiles = [None, *load_suite(path).profiles]
        per_suite = result.setdefault(path.name, {})
        for profile in profiles:
            per_profile = per_suite.setdefault(profile or "", {})
            for variant, settings in {"": (), **OVERRIDES}.items():
                try:
                    suite = load_suite(path, profile, settings)
                except (BadInput, ConfigError):  # a variant this suite has no such setting for
                    continue
                per_profile[variant] = suite_hashes(api, suite)
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    json.dump(compute_all(), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")

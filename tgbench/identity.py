"""What makes two runs the same experiment: every hash that keys the store, every protocol that groups results,
and every seed stream, in one place.

The hashes are the keys of users' stores: a finished cell, tuning study, tune study, ground-truth training or
proxy score is reused exactly when its hash is the same, and a leaderboard table holds the cells whose protocol
hashes alike. So a hash covers what changes a result and nothing else, and a setting added later is left out of
every hash while it has the value that reproduces the code before it (:data:`SUITE_OMISSIONS`), so old stores
still match. ``tests/test_identity.py`` pins every hash of every shipped suite, profile and a few ``--set``
variants against ``tests/data/golden_hashes.json``.

* :func:`cell_hash` — one arm of a fewstep-style suite at any seed (the suites' cells, nas_proxy teachers);
* :func:`stage_hash` — one arm's study of a fewstep suite's ``tuning:`` stage;
* :func:`tune_hash` — one arm's study of a ``kind: tune`` suite;
* :func:`arch_id`, :func:`ground_truth_protocol`, :func:`proxy_hash` — a NAS architecture, what its ground-truth
  accuracy depends on, and what a proxy's scores depend on;
* :func:`protocol_of` / :func:`recorded_protocol` / :func:`protocol_hash` — the leaderboard's comparability
  protocol (recorded with every cell) and the table it puts a cell in;
* the seed streams (:data:`TEACHER_SEED`, :data:`TUNING_SEED_OFFSET`, :data:`EVAL_SEED_OFFSET`,
  :data:`PROXY_SEED_OFFSET`, :func:`arch_seed`).

Layering: below ``cells``, ``tuning``, the suite kinds and the leaderboard; it reads the config models and the
store's ``config_hash`` only. A suite's kind section (``tune:``, ``nas:``) is found from the suite's own model
(:func:`kind_sections`), not from the kind registry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tgbench.suite.schema import PrunerSettings, SamplerSettings, SourceEntry, Suite, TuningStage
from tgbench.inputs import arm_inputs, proxy_plugin_input
from tgbench.nn import LearnerSpec
from tgbench.store import config_hash

# ---------------------------------------------------------------------------------------------- seed streams
# Every random stream of a run starts at its own offset, so that no two streams share a seed: shared noise would
# couple what is meant to be independent (an evaluation learner replaying its teacher's init, a proxy that is the
# first epoch of a ground-truth run).
TEACHER_SEED = 0              # nas_proxy: one teacher per teaching source, the seed-0 cell of its fewstep cells
TUNING_SEED_OFFSET = 1000     # fewstep tuning stage: trial k meta-trains with seed 1000 + k, never a final seed
EVAL_SEED_OFFSET = 10_000     # cell / trial with seed s: its evaluation learners use 10_000 + s, never the
                              # meta-training stream (also tgbench.teach's replay of a stored cell)
PROXY_SEED_OFFSET = 1_000_000  # nas_proxy: proxies score with arch_seed(id, 1_000_000 + nas.scoring_seed)
# (a ``kind: tune`` trial k meta-trains with seed k, no offset: ``tgbench.kinds.tune``)


def arch_seed(aid: str, offset: int = 0) -> int:
    """Per-architecture seed: the same architecture gets the same init wherever it is scored. Ground-truth seed s
    uses offset s; proxies use ``PROXY_SEED_OFFSET + scoring_seed``, so that e.g. a 1-epoch proxy is not the
    first epoch of a ground-truth run (shared noise would inflate its correlation)."""
    return int(aid[:8], 16) + offset


# ---------------------------------------------------------------------------------------------- omissions
class _Always:
    def __repr__(self) -> str:
        return "ALWAYS"


ALWAYS = _Always()   # an Omission's ``when``: the setting is never part of the hash


@dataclass(frozen=True)
class Omission:
    """A setting left out of a hash: whatever its value (``when=ALWAYS``: it changes what is measured or saved,
    not what is computed), or while it equals ``when``, the value that reproduces the code before the setting
    existed (so the stores written then still match). ``path`` is a key path in the model's JSON dump; ``"*"``
    stands for every key at that level."""

    path: tuple[str, ...]
    when: Any
    why: str


# the tuning stage's full-horizon settings (config.FULL_HORIZON_SETTINGS), at the values of the short-horizon
# stage every study was run with before they existed
FULL_HORIZON_OMISSIONS: tuple[Omission, ...] = (
    Omission(("horizon",), "short", "the short-horizon stage, before full-horizon tuning"),
    Omission(("budget_runs",), TuningStage.model_fields["budget_runs"].default, "its default"),
    Omission(("eval_every",), None, "a full-horizon setting, unset"),
    Omission(("pruner",), PrunerSettings().model_dump(mode="json"), "a full-horizon setting at its default"),
)

# the options of the official GTN configuration (issue 24), at the values of tgbench's code before them
OFFICIAL_CONFIGURATION_OMISSIONS: tuple[Omission, ...] = (
    Omission(("learner", "bn_shift"), False, "the mean-only BN without a learnable shift, before the option"),
    Omission(("inner", "momentum_form"), "logit", "the bounded momentum, before the official exp form"),
    Omission(("outer", "intermediate_batches"), "shared", "one meta-batch for every intermediate loss"),
    Omission(("outer", "intermediate_reduction"), "mean", "intermediate losses averaged, before the official sum"),
)

# The whole list, in one table: a new setting that must not re-key old stores gets one line here.
SUITE_OMISSIONS: tuple[Omission, ...] = (
    Omission(("evaluation", "seeds"), ALWAYS, "how many seeds run, not what one seed computes"),
    Omission(("evaluation", "count_flops"), ALWAYS, "what the cell measures, not what it computes"),
    Omission(("outer", "save_every"), ALWAYS, "how often the run is saved, not what it computes"),
    Omission(("tuning", "sampler"), SamplerSettings().model_dump(mode="json"),
             "the TPE settings every study ran with before they were explicit"),
    Omission(("*",), None, "top-level sections added after results were stored (tuning, sweep ...), left unset"),
    Omission(("learner", "bn_statistics"), "scored_batch", "the protocol before the option existed"),
    Omission(("evaluation", "held_out"), None, "the default held-out set, versioned with the code"),
    *(Omission(("tuning", *o.path), o.when, o.why) for o in FULL_HORIZON_OMISSIONS),
    *OFFICIAL_CONFIGURATION_OMISSIONS,
)
ARM_OMISSIONS: tuple[Omission, ...] = (   # an arm (a source entry) in a cell's hash
    Omission(("outer", "save_every"), ALWAYS, "how often the run is saved, not what it computes"),
    Omission(("inner",), {}, "per-arm inner overrides, before arms could have them"),
    Omission(("learner",), {}, "per-arm learner overrides, before arms could have them"),
    Omission(("tune_space",), None, "an arm's own tuning space, before arms could have one"),
    Omission(("arm",), None, "the arm a sweep expanded, before sweeps"),
    Omission(("sweep_value",), None, "the swept value, before sweeps"),
)
STUDY_OMISSIONS: tuple[Omission, ...] = (  # a tuning stage or a tune suite's section, in its study's hash
    Omission(("trials",), ALWAYS, "raising the budget adds trials to the same study"),
    Omission(("budget_runs",), ALWAYS, "like trials: raising the budget adds trials to the same study"),
    *(o for o in FULL_HORIZON_OMISSIONS if o.path != ("budget_runs",)),
    Omission(("sampler",), SamplerSettings().model_dump(mode="json"),
             "the TPE settings every study ran with before they were explicit"),
)
ARCHITECTURE_OMISSIONS: tuple[Omission, ...] = (  # a LearnerSpec in its architecture id
    Omission(("bn_statistics",), ALWAYS, "the scoring protocol keys the ground truth, it is not the network"),
    Omission(("residual",), False, "plain CNNs keep the ids they had before residual blocks"),
    Omission(("bn_shift",), False, "learners without a BN shift keep the ids they had before the option"),
)


# the inner loop's section on its own (a NAS proxy's hash): the new inner options at their old values
INNER_OMISSIONS: tuple[Omission, ...] = tuple(
    Omission(o.path[1:], o.when, o.why) for o in OFFICIAL_CONFIGURATION_OMISSIONS if o.path[0] == "inner")
# the learner section in a leaderboard protocol (``protocol_of``): the new learner options at their old values
LEARNER_PROTOCOL_OMISSIONS: tuple[Omission, ...] = tuple(
    Omission(o.path[1:], o.when, o.why) for o in OFFICIAL_CONFIGURATION_OMISSIONS if o.path[0] == "learner")


def omit(dumped: dict, omissions: tuple[Omission, ...]) -> dict:
    """``dumped`` (a model's JSON dump, changed in place and returned) without the settings ``omissions`` leave
    out; a path whose parent is missing or not a mapping (e.g. an unset section) is skipped."""
    for omission in omissions:
        *parents, leaf = omission.path
        node = dumped
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        for key in list(node) if leaf == "*" else [leaf]:
            if key in node and (omission.when is ALWAYS or node[key] == omission.when):
                node.pop(key)
    return dumped


def legacy_value(omissions: tuple[Omission, ...], path: tuple[str, ...]) -> Any:
    """The value at which ``path`` is left out of a hash (its omission's ``when``)."""
    return next(o.when for o in omissions if o.path == path)


# ---------------------------------------------------------------------------------------------- cells and studies
def kind_sections(suite: Suite) -> set[str]:
    """The sections a suite's kind adds to :class:`Suite` (``tune:``, ``nas:``; none for fewstep): the fields of
    the suite's model beyond Suite's own (``config.suite_model`` derives the model from the kind's section)."""
    return set(type(suite).model_fields) - set(Suite.model_fields)


def cell_inputs(entry: SourceEntry) -> dict[str, dict]:
    """The files an arm reads as data, by content (``tgbench.inputs``): ``{"params.<field>": {"path", "sha256"}}``
    for each ``DataPath`` parameter of its method (``external``'s lesson file), and ``{"plugin": {"file",
    "sha256"}}`` when the method comes from a ``--methods-dir`` plug-in file. Recorded with the cell; {} for an
    arm of built-in methods without data files (every shipped suite's)."""
    return arm_inputs(entry.method, entry.params, entry.name)


def cell_hash(suite: Suite, entry: SourceEntry, dataset_resolved: str) -> str:
    """What makes two runs of a cell the same experiment: everything but the seed count and the other arms.

    A data file's parameter is hashed as the digest of its bytes, not its path (:func:`cell_inputs`): replacing
    the file re-keys the cell, moving it does not; a plug-in method adds its file's digest (``plugin``). Neither
    exists for an arm without them, so every other hash is as it was."""
    # a kind's own section (tune:, nas:) is hashed by the kind with what it runs, not into every cell
    protocol = suite.model_dump(mode="json", exclude={"profiles", "sources", "description", *kind_sections(suite)})
    protocol = omit(protocol, SUITE_OMISSIONS)
    source = omit(entry.model_dump(mode="json"), ARM_OMISSIONS)
    identity = {"protocol": protocol, "source": source, "data": dataset_resolved}
    for key, found in cell_inputs(entry).items():
        if key == "plugin":
            identity["plugin"] = found["sha256"]
        else:  # params.<field>: the content stands for the path
            source["params"][key.removeprefix("params.")] = {"sha256": found["sha256"]}
    return config_hash(identity)


def stage_hash(suite: Suite, entry: SourceEntry, dataset_resolved: str) -> str:
    """What makes two tuning trials of an arm comparable: the arm and protocol as written (before tuning) and
    the stage's settings except the number of trials (raising it adds trials)."""
    # the stage's space is hashed as the arm's own (``space_for``: an arm's tune_space replaces it)
    stage = omit(suite.tuning.model_dump(mode="json", exclude={"space"}), STUDY_OMISSIONS)
    space = {k: v.model_dump(mode="json") for k, v in suite.tuning.space_for(entry).items()}
    return config_hash({"cell": cell_hash(suite.model_copy(update={"tuning": None}), entry, dataset_resolved),
                        "stage": stage, "space": space})


def tune_hash(suite: Suite, entry: SourceEntry, dataset_resolved: str) -> str:
    """What makes two trials of a ``kind: tune`` suite's arm comparable: everything but the number of trials
    (raising it adds trials)."""
    tune = omit(suite.tune.model_dump(mode="json"), STUDY_OMISSIONS)
    return config_hash({"cell": cell_hash(suite.model_copy(update={"tune": None}), entry, dataset_resolved),
                        "tune": tune})


# ---------------------------------------------------------------------------------------------- NAS
def arch_id(spec: LearnerSpec) -> str:
    """Stable 16-hex id of an architecture: a hash of its full spec (same spec, same id, on any machine)."""
    return config_hash(omit(spec.as_dict(), ARCHITECTURE_OMISSIONS))


def ground_truth_protocol(suite: Suite, dataset_resolved: str) -> str:
    """Hash of what a ground-truth accuracy depends on besides the architecture and seed."""
    schedule = suite.nas.ground_truth.model_dump(mode="json", exclude={"seeds"})
    protocol = {"schedule": schedule, "data": dataset_resolved, "trainer": "adam/train_real/v1"}
    bn_statistics = suite.learner.bn_statistics
    if bn_statistics != legacy_value(SUITE_OMISSIONS, ("learner", "bn_statistics")):
        protocol["bn_statistics"] = bn_statistics
    return config_hash(protocol)


def proxy_hash(suite: Suite, proxy_entry, ids: list[str], dataset_resolved: str, teacher_hash: str | None) -> str:
    """What one proxy's scores of a suite depend on: the proxy and its params, the architectures (``ids``), the
    data, the inner loop, the ground-truth schedule, and the config hash of the teacher it uses (None: none)."""
    identity = {"proxy": proxy_entry.model_dump(mode="json"), "architectures": ids, "data": dataset_resolved,
                "inner": omit(suite.inner.model_dump(mode="json"), INNER_OMISSIONS),
                "ground_truth": suite.nas.ground_truth.model_dump(mode="json"), "teacher": teacher_hash}
    # a plug-in proxy's code is an input like a plug-in method's (absent for built-in proxies: hashes unchanged);
    # the teacher is named by its cell hash, which holds its own data files' digests
    plugin = proxy_plugin_input(proxy_entry.proxy)
    if plugin:
        identity["plugin"] = plugin["sha256"]
    return config_hash(identity)


# ---------------------------------------------------------------------------------------------- leaderboard
def protocol_of(suite: dict, dataset_resolved: str, entry: dict | None = None) -> dict:
    """What must be equal for two runs to share a table, from a suite's JSON dump (``Suite.model_dump``) and the
    arm's (``SourceEntry.model_dump``): an arm's own ``inner`` overrides, where a suite has them, count."""
    inner = {**suite["inner"], **((entry or {}).get("inner") or {})}
    ev = suite["evaluation"]
    return {"dataset": dataset_resolved,
            "inner": {k: inner[k] for k in ("steps", "batch_size", "optimizer")},
            "learner": omit(dict(suite["learner"]), LEARNER_PROTOCOL_OMISSIONS),
            "evaluation": {"final_learners": ev["final_learners"], "architectures": ev.get("architectures")}}


def recorded_protocol(record, saved_suite: dict | None) -> dict:
    """The protocol of a fewstep cell's record: the one it carries; for a record older than that field, rebuilt
    from the suite saved with its teacher (``saved_suite``, a suite's JSON dump); without one, a partial protocol
    of the fields every record holds plus the suite name, so that it shares a table with its own suite only."""
    if record.protocol:
        return record.protocol
    if saved_suite is not None:
        entry = next((e for e in saved_suite["sources"] if (e.get("label") or e["method"]) == record.source), None)
        return protocol_of(saved_suite, record.dataset_resolved, entry)
    return {"partial": True, "suite": record.suite, "dataset": record.dataset_resolved,
            "inner_steps": record.inner_steps, "batch_size": record.batch_size}


def protocol_hash(protocol: dict) -> str:
    """The leaderboard table a protocol belongs to (with the profile)."""
    return config_hash(protocol)

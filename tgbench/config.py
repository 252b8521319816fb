"""Suite configuration: typed pydantic models mirrored by the suite YAML files, with profiles and ``include:``.

A suite file is validated as a whole (every profile too) before anything runs; any problem becomes one
``ConfigError`` line ``<file>: <key.path>: <what is wrong>``. Unknown keys are errors at every level.
"""
from __future__ import annotations

import copy
import difflib
import functools
import random
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, PrivateAttr,
                      ValidationError, create_model, field_validator, model_validator, with_config)
from typing_extensions import TypedDict  # (pydantic needs typing_extensions' TypedDict before Python 3.12)

from tgbench.errors import BadInput, ConfigError
from tgbench.locations import label_problem, read_text_capped
from tgbench.registry import datasets, methods, suite_kinds
from tgbench.inner import MOMENTUM_FORMS
from tgbench.inputs import data_path_fields, resolve_against
from tgbench.nn import ACTIVATIONS, BN_STATISTICS, LearnerSpec, held_out_variants
from tgbench.strict import Strict  # the one strict base of every settings model (also methods' and proxies' Params)

PROFILES = ("smoke", "cpu", "paper")
# The shipped suites, installed with the package (pyproject.toml's package data), so a suite is also a name that
# works from any directory; the repository's suites/ is a link to this folder.
INSTALLED_SUITES = Path(__file__).resolve().parent / "suites"

# Upper bounds of sizes that validate as integers but could never run (a 10**30-step unroll overflows torch's
# int64 sizes; a 10**6-wide layer cannot be allocated): generous next to the paper's settings (T = 128, 2000
# outer iterations, widths <= 256), so a typo is refused before any work starts instead of crashing a cell.
MAX_INNER_STEPS = 10_000
MAX_OUTER_ITERATIONS = 1_000_000
MAX_WIDTH = 8192              # conv channels / hidden units of a learner layer
MAX_BATCH = 1_000_000         # examples per inner step / meta-batch (run_suite also checks them against the data)
MAX_COUNT = 100_000           # population members, ES pairs, learners per evaluation
MAX_SEEDS = 1000              # as `--seeds` (tgbench.cli.MAX_SEEDS)
MAX_SWEEP_VALUES = 1000       # values of one `sweep:` (each is an arm of every source)

Width = Annotated[int, Field(gt=0, le=MAX_WIDTH)]
Count = Annotated[int, Field(gt=0, le=MAX_COUNT)]
Beta = Annotated[float, Field(ge=0.0, lt=1.0)]   # Adam's betas: torch refuses anything outside [0, 1)


class DatasetConfig(Strict):
    name: str = "mnist-5k"
    fallback: str | None = None      # used (loudly, and recorded) when `name` is not on disk and can't be fetched
    download: bool = False           # let torchvision download when the network works


class LearnerSpace(Strict):
    """Learner architectures meta-training samples from; each list holds the options of one dimension.

    A fresh architecture and a fresh init are drawn at every outer iteration, so taught data does not overfit
    one network. The first option of each list is the *reference* learner, used for evaluation unless
    ``evaluation.architectures`` names others.
    """

    conv_channels: list[list[Width]] = Field(default_factory=lambda: [[64, 128]])
    fc_hidden: list[list[Width]] = Field(default_factory=lambda: [[256]])
    kernel_size: list[Literal[1, 3, 5, 7]] = Field(default_factory=lambda: [3])
    activation: list[Literal[ACTIVATIONS]] = Field(default_factory=lambda: ["leaky_relu"])  # type: ignore[valid-type]
    batch_norm: bool = True
    weight_norm: bool = True
    # How a learner's BN is normalised when it is scored (meta-loss, validation, test): "lesson" = with the
    # statistics of the last lesson it trained on (the official GTN protocol, the default); "scored_batch" =
    # with each scored batch's own mean (transductive: a prediction depends on the other examples of its batch;
    # the protocol of tgbench <= 0.1, kept so old stores resume). Part of every cell's config hash.
    bn_statistics: Literal[BN_STATISTICS] = "lesson"  # type: ignore[valid-type]
    # a learnable per-channel/unit shift after every mean-only BN (the official learner's BatchNormMeanOnly.bias,
    # zero at init, trained by the inner loop); part of a cell's hash only when on
    bn_shift: bool = False

    @model_validator(mode="after")
    def _non_empty(self) -> "LearnerSpace":
        for field in ("conv_channels", "fc_hidden", "kernel_size", "activation"):
            if not getattr(self, field):
                raise ValueError(f"{field} needs at least one option")
        return self

    def reference(self, weight_norm: bool | None = None) -> LearnerSpec:
        return self._spec(self.conv_channels[0], self.fc_hidden[0], self.kernel_size[0], self.activation[0],
                          weight_norm)

    def sample(self, rng: random.Random, weight_norm: bool | None = None) -> LearnerSpec:
        return self._spec(rng.choice(self.conv_channels), rng.choice(self.fc_hidden), rng.choice(self.kernel_size),
                          rng.choice(self.activation), weight_norm)

    def _spec(self, conv, fc, kernel, activation, weight_norm) -> LearnerSpec:
        return LearnerSpec(tuple(conv), tuple(fc), kernel, activation, self.batch_norm,
                           self.weight_norm if weight_norm is None else weight_norm, self.bn_statistics,
                           bn_shift=self.bn_shift)


class InnerLoop(Strict):
    steps: int = Field(32, gt=0, le=MAX_INNER_STEPS)
    batch_size: int = Field(128, ge=2, le=MAX_BATCH)  # batch statistics (mean-only BN, generator BN) need B >= 2
    optimizer: Literal["sgd_momentum", "adam"] = "sgd_momentum"
    lr: PositiveFloat = 0.02                          # initial value of the learned per-step learning rate
    momentum: float = Field(0.5, gt=0.0, lt=1.0)      # initial value of the learned per-step momentum
    learn_lr: bool = True
    learn_momentum: bool = True
    # how the learned momentum is stored: "logit" (m = sigmoid, bounded in (0, 1): tgbench's default) or "exp"
    # (m = exp(log m), unbounded: the official GTN code); part of a cell's hash only when "exp"
    momentum_form: Literal[MOMENTUM_FORMS] = "logit"  # type: ignore[valid-type]


class OuterLoop(Strict):
    iterations: int = Field(100, gt=0, le=MAX_OUTER_ITERATIONS)
    lr: PositiveFloat = 0.02                          # Adam, as in the official code
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    schedule: Literal["cosine", "constant"] = "cosine"
    final_lr_fraction: float = Field(0.1, ge=0.0, le=1.0)   # cosine decays to this fraction of lr
    meta_batch_size: int = Field(128, gt=0, le=MAX_BATCH)   # real training examples in the meta-loss
    intermediate_losses: bool = False                 # a meta-loss after every inner step, not only the last
    # the real batches of those losses: "shared" = the one meta-batch for all T (tgbench <= 0.2), "fresh" = a
    # new meta_batch_size batch of real training data for each (the official code); and how the T losses make
    # the meta-loss: "mean" (tgbench <= 0.2) or "sum" (official). Both matter only with intermediate_losses and
    # are part of a cell's hash only when not at these defaults.
    intermediate_batches: Literal["shared", "fresh"] = "shared"
    intermediate_reduction: Literal["mean", "sum"] = "mean"
    checkpoint_every: int = Field(0, ge=0)            # k > 0: gradient checkpoint every k inner steps
    population: Count = 1                             # P learners of one sampled architecture, via vmap
    meta_gradient: Literal["backprop", "es", "hybrid"] = "backprop"
    es_pairs: Count = 4                               # antithetic pairs per ES / hybrid estimate
    es_sigma: PositiveFloat = 0.01
    grad_clip: PositiveFloat | None = None            # clip the meta-gradient's global norm
    # a cell saves its whole meta-training state every K outer iterations (0: never) and a rerun resumes from
    # the last one; how often a run is saved changes no number, so it is part of no hash
    save_every: int = Field(50, ge=0)

    @model_validator(mode="after")
    def _compatible(self) -> "OuterLoop":
        if self.population > 1 and (self.checkpoint_every or self.meta_gradient != "backprop"):
            raise ValueError("population > 1 works with meta_gradient=backprop and no checkpointing")
        if self.checkpoint_every and self.meta_gradient != "backprop":
            raise ValueError("checkpoint_every applies to meta_gradient=backprop only")
        if not self.intermediate_losses and (self.intermediate_batches, self.intermediate_reduction) != (
                "shared", "mean"):
            raise ValueError("intermediate_batches / intermediate_reduction apply with intermediate_losses: true only")
        return self


@with_config(ConfigDict(extra="allow"))  # unknown keys are refused by Evaluation._arch_keys, with the allowed ones
class Architecture(TypedDict, total=False):
    """LearnerSpec fields over the reference learner (``evaluation.architectures`` / ``held_out`` entries), typed
    like the learner space's options, so a value that could not build a learner fails validation. A TypedDict
    validates to a plain dict of the keys given, so stored configs (and their hashes) stay as they were."""

    conv_channels: list[Width]           # [] = no conv block (an MLP)
    fc_hidden: list[Width]
    kernel_size: Literal[1, 3, 5, 7]
    activation: Literal[ACTIVATIONS]  # type: ignore[valid-type]
    batch_norm: bool
    weight_norm: bool
    bn_statistics: Literal[BN_STATISTICS]  # type: ignore[valid-type]
    residual: bool
    bn_shift: bool


class Evaluation(Strict):
    seeds: int = Field(3, gt=0, le=MAX_SEEDS)
    eval_every: PositiveInt = 50                     # outer iterations between validation checks
    eval_learners: Count = 2                         # fresh learners per check during meta-training
    final_learners: Count = 4                        # fresh learners per architecture in the final evaluation
    architectures: list[Architecture] | None = None  # evaluation learners (LearnerSpec fields); default reference
    # Learners outside the meta-training space, scored once after the final step for the report's held-out
    # table: name -> LearnerSpec fields over the reference. None = the default set (nn.held_out_variants:
    # wider, deeper, another activation, an MLP, a residual CNN); {} = none.
    held_out: dict[str, Architecture] | None = None
    # Count each cell's meta-training FLOPs (the leaderboard's compute column; a few meta-steps under
    # FlopCounterMode, ~2-3 s in a smoke run). Off: the leaderboard counts them from the stored teacher when it is
    # built. Changes no score, so it is not part of a cell's hash.
    count_flops: bool = True

    def learner_specs(self, space: LearnerSpace, weight_norm: bool | None) -> list[LearnerSpec]:
        if not self.architectures:
            return [space.reference(weight_norm)]
        return [_spec_over(space.reference(weight_norm), arch) for arch in self.architectures]

    def held_out_specs(self, space: LearnerSpace, weight_norm: bool | None) -> dict[str, LearnerSpec]:
        reference = space.reference(weight_norm)
        if self.held_out is None:
            return held_out_variants(reference)
        return {name: _spec_over(reference, arch) for name, arch in self.held_out.items()}

    @model_validator(mode="after")
    def _arch_keys(self) -> "Evaluation":
        allowed = set(LearnerSpec.__dataclass_fields__)
        named = [(f"architectures[{i}]", a) for i, a in enumerate(self.architectures or [])]
        named += [(f"held_out.{n}", a) for n, a in (self.held_out or {}).items()]
        for where, arch in named:
            unknown = set(arch) - allowed
            if unknown:
                raise ValueError(f"{where} has unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        return self


def _spec_over(reference: LearnerSpec, arch: dict[str, Any]) -> LearnerSpec:
    """The reference learner with the fields of ``arch`` replaced."""
    fields = {**reference.as_dict(), **arch}
    fields["conv_channels"] = tuple(fields["conv_channels"])
    fields["fc_hidden"] = tuple(fields["fc_hidden"])
    return LearnerSpec(**fields)


class SearchDimension(Strict):
    """One hyperparameter of a tune suite's search space: a float/int range (``log`` for log-uniform) or
    ``choices``."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self) -> "SearchDimension":
        if self.choices is not None:
            if not self.choices or self.low is not None or self.high is not None:
                raise ValueError("give either non-empty `choices` or `low`/`high`, not both")
            return self
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError("needs low < high (or `choices`)")
        if self.log and self.low <= 0:
            raise ValueError("log scale needs low > 0")
        return self


class SourceEntry(Strict):
    method: str
    label: str | None = None                  # unique name of this arm in tables; default: the method name
    params: dict[str, Any] = Field(default_factory=dict)   # validated by the method's own Params model
    outer: dict[str, Any] = Field(default_factory=dict)    # per-arm overrides of the suite's outer loop
    inner: dict[str, Any] = Field(default_factory=dict)    # per-arm overrides of the suite's inner loop
    # per-arm overrides of the learner space meta-training samples from (e.g. more conv_channels options for an
    # architecture-sampling arm); evaluation always uses the suite's reference learner, the same for every arm
    learner: dict[str, Any] = Field(default_factory=dict)
    # this arm's search space in a suite's `tuning:` stage, replacing `tuning.space` (e.g. only inner.lr and
    # inner.momentum for an arm that meta-learns nothing); {} = nothing to tune (the arm still gets its trials'
    # budget counted as zero and runs with its settings as written)
    tune_space: dict[str, SearchDimension] | None = None
    # set by a suite's `sweep:` expansion (not usually written by hand): the arm this entry is a sweep point
    # of, and the swept value, so reports can group e.g. accuracy vs inner steps per arm
    arm: str | None = None
    sweep_value: Any = None

    @field_validator("label")
    @classmethod
    def _usable_label(cls, label: str | None) -> str | None:
        # a label names the arm in tables and the store, and (made safe by tgbench.locations) files
        problem = None if label is None else label_problem(label)
        if problem:
            raise ValueError(problem)
        return label

    @property
    def name(self) -> str:
        return self.label or self.method


SWEEPABLE = ("inner", "outer", "params")


def check_setting_key(key: str) -> str:
    """``inner.<x>`` / ``outer.<x>`` (checked against the loop models) or ``params.<x>`` (checked per method
    by ``load_suite``)."""
    section, _, leaf = key.partition(".")
    if section not in SWEEPABLE or not leaf:
        raise ValueError(f"{key!r} must be inner.<setting>, outer.<setting> or params.<setting>")
    model = {"inner": InnerLoop, "outer": OuterLoop}.get(section)
    if model is not None and leaf not in model.model_fields:
        close = difflib.get_close_matches(leaf, list(model.model_fields), n=1)
        raise ValueError(f"{section} has no setting {leaf!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return key


class Sweep(Strict):
    """Run every source once per value of one setting, e.g. ``{key: inner.steps, values: [8, 16, 32, 64]}``.

    Each source becomes one arm per value, labelled ``<source>[<setting>=<value>]``; the value is applied as a
    per-arm override (``inner:``/``outer:``/``params:``), so each sweep point is an ordinary cell with its own
    config hash.
    """

    key: str
    values: list[Any] = Field(min_length=1, max_length=MAX_SWEEP_VALUES)

    @field_validator("key")
    @classmethod
    def _known_key(cls, key: str) -> str:
        return check_setting_key(key)

    def expand(self, entry: SourceEntry) -> list[SourceEntry]:
        section, _, leaf = self.key.partition(".")
        arms = []
        for value in self.values:
            fields = entry.model_dump()
            fields[section] = {**fields[section], leaf: value}
            fields.update(label=f"{entry.name}[{leaf}={value}]", arm=entry.name, sweep_value=value)
            arms.append(SourceEntry.model_validate(fields))
        return arms


def _known_setting_keys(space: dict[str, SearchDimension]) -> dict[str, SearchDimension]:
    for key in space:
        check_setting_key(key)
    return space


# A search space: dotted keys inner.<x>, outer.<x> or params.<x> (checked per method by load_suite) -> dimension.
SearchSpace = Annotated[dict[str, SearchDimension], AfterValidator(_known_setting_keys)]


class SamplerSettings(Strict):
    """Optuna TPE settings, explicit so that an Optuna release that changes its defaults cannot change a study
    silently (Optuna 5 made TPE multivariate and its constant liar on by default). These values are Optuna 5.1's
    defaults, the settings every stored tgbench study so far ran with; each trial records them."""

    multivariate: bool = True       # model the dimensions jointly, not one by one
    constant_liar: bool = True      # running trials count as bad, so parallel workers spread out
    n_ei_candidates: PositiveInt = 24


def sampler_key(settings: "SamplerSettings") -> dict | None:
    """What a study's hash says about its sampler: nothing while it has the settings every earlier study ran
    with (so their hashes hold), the settings otherwise."""
    dumped = settings.model_dump(mode="json")
    return None if dumped == SamplerSettings().model_dump(mode="json") else dumped


class StudySettings(Strict):
    """What every Optuna study of tgbench is, the one model behind a fewstep suite's ``tuning:`` stage and a tune
    suite's ``tune:`` section (``tgbench.tuning.run_study`` runs both): TPE over ``space`` up to ``trials`` finished
    trials, the first ``startup_trials`` of them random, sampler seed ``seed``, with ``sampler``'s settings."""

    trials: PositiveInt
    seed: int = 0
    startup_trials: PositiveInt
    space: SearchSpace = Field(default_factory=dict)
    sampler: SamplerSettings = Field(default_factory=SamplerSettings)


class PrunerSettings(Strict):
    """Optuna's ``SuccessiveHalvingPruner`` (asynchronous successive halving) for a full-horizon tuning stage. A
    trial reports its validation error at every checkpoint; at rung r (``min_resource`` x ``reduction_factor`` **
    (``min_early_stopping_rate`` + r) outer iterations) it goes on only while it is in the best 1/``reduction_factor``
    of the trials that reached that rung. Chosen over ``HyperbandPruner`` because a stage runs few trials one after
    another (~5-10 per arm): Hyperband splits them into brackets of 1-3 trials each, and Optuna's TPE then models
    only the trials of a trial's own bracket, so neither the pruner nor the sampler would have enough to compare."""

    min_resource: PositiveInt | None = None   # outer iterations to the first rung (None: the first checkpoint)
    reduction_factor: int = Field(3, ge=2)
    min_early_stopping_rate: int = Field(0, ge=0)
    bootstrap_count: int = Field(0, ge=0)     # trials that must reach a rung before it prunes anyone


# settings added to `tuning:` after studies were stored, used only by `horizon: full` (left out of every hash at
# their defaults: tgbench.identity's omission tables)
FULL_HORIZON_SETTINGS = ("horizon", "budget_runs", "eval_every", "pruner")


class TuningStage(StudySettings):
    """``tuning:`` of a fewstep suite: every arm is tuned before it is compared (the fair protocol).

    Each arm gets its own Optuna TPE study with the same budget over ``space`` (or the arm's own ``tune_space``).
    A trial's objective is the **validation** error (1 - accuracy) of ``learners`` fresh reference learners after
    the last inner step; test is never looked at. The final cells then meta-train with each arm's best values at
    the full budget and are reported on test. Part of every cell's hash.

    ``horizon: short`` (the default): ``trials`` trials, each meta-training one teacher for ``outer_iterations``
    outer iterations (the arm's own count if smaller, e.g. 1 for an arm that meta-learns nothing; the cosine
    schedule then spans the trial).

    ``horizon: full``: every trial meta-trains at the arm's own ``outer.iterations`` (its cosine spans the final
    budget), reports its validation error every ``eval_every`` outer iterations (default
    ``evaluation.eval_every``) and is stopped early by ``pruner`` (None: never). The arm's settings as written are
    its first trial. Each arm may spend ``budget_runs`` x its own outer iterations, summed over its trials (a pruned
    or diverged trial counts what it ran), and launches at most ``trials`` trials; an arm with a single outer
    iteration (nothing meta-learned: it can never be pruned and a run costs one iteration) runs ``trials`` trials.
    """

    trials: PositiveInt = 8
    startup_trials: PositiveInt = 4     # random trials before TPE models the space
    seed: int = 0                       # TPE sampler seed; trial k meta-trains with seed 1000 + k
    outer_iterations: PositiveInt = Field(30, le=MAX_OUTER_ITERATIONS)
    learners: PositiveInt = Field(2, le=MAX_COUNT)
    horizon: Literal["short", "full"] = "short"
    # full horizon: tuning compute per arm, in runs of its horizon (>= 1: its settings as written always finish)
    budget_runs: float = Field(3.0, ge=1.0)
    eval_every: PositiveInt | None = None   # full horizon: outer iterations between checkpoints
    pruner: PrunerSettings | None = Field(default_factory=PrunerSettings)

    def space_for(self, entry: "SourceEntry") -> dict[str, SearchDimension]:
        return self.space if entry.tune_space is None else entry.tune_space

    @model_validator(mode="after")
    def _full_horizon_settings_need_full_horizon(self) -> "TuningStage":
        # (a value equal to its default is no stray setting: a resolved suite's dump holds every field)
        stray = sorted(key for key in set(FULL_HORIZON_SETTINGS[1:]) & self.model_fields_set
                       if getattr(self, key) != type(self).model_fields[key].get_default(call_default_factory=True))
        if self.horizon == "short" and stray:
            raise ValueError(f"{', '.join(stray)}: only used with `horizon: full`")
        return self



class GroundTruthSchedule(Strict):
    """How each scored architecture is trained on real data for its ground-truth accuracy (Adam, full epochs)."""

    epochs: PositiveInt = 10
    batch_size: int = Field(128, ge=2)
    lr: PositiveFloat = 1e-3
    patience: PositiveInt | None = None       # stop when val acc has not improved for this many epochs
    seeds: PositiveInt = 2                    # independent inits averaged per architecture


class Suite(Strict):
    name: str
    kind: str = "fewstep"                 # a registered suite kind (`tgbench list kinds`; tgbench.kinds)
    description: str = ""
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    learner: LearnerSpace = Field(default_factory=LearnerSpace)
    inner: InnerLoop = Field(default_factory=InnerLoop)
    outer: OuterLoop = Field(default_factory=OuterLoop)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    sources: list[SourceEntry] = Field(min_length=1)
    profiles: dict[Literal["smoke", "cpu", "paper"], dict[str, Any]] = Field(default_factory=dict)
    sweep: Sweep | None = None            # one arm per (source, value)
    tuning: TuningStage | None = None     # tune every arm on validation before the final seeds
    # A kind's own section (`tune:`, `nas:`) is a field of that kind's model, which ``suite_model`` derives from
    # this one: see ``suite_from_dict``.
    # the `--set KEY=VALUE` overrides load_suite applied: not a field, so a cell's hash covers the values they
    # set (like any value written in the file), not the way they were given
    _overrides: tuple[str, ...] = PrivateAttr(default=())

    @property
    def overrides(self) -> tuple[str, ...]:
        """The ``--set KEY=VALUE`` overrides applied over the file and its profile, in order (() when none)."""
        return self._overrides

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

    @field_validator("name")
    @classmethod
    def _usable_name(cls, name: str) -> str:
        # the name makes the store's study names (<suite>@<profile>/...) and the default report folder
        if not name.strip():
            raise ValueError("a suite needs a non-empty name")
        if len(name) > 200 or any(c in name for c in "/@|\0") or name != name.strip():
            raise ValueError("a suite name is at most 200 characters, without '/', '@', '|' or surrounding spaces")
        problem = label_problem(name)   # (the label rules: no control characters either)
        if problem:
            raise ValueError(problem.replace("a label", "a suite name"))
        return name

    @field_validator("sources")
    @classmethod
    def _unique_labels(cls, sources: list[SourceEntry]) -> list[SourceEntry]:
        seen = set()
        for entry in sources:
            if entry.name in seen:
                raise ValueError(f"two sources are named {entry.name!r}; give one a distinct `label`")
            seen.add(entry.name)
        return sources

    @model_validator(mode="after")
    def _expand_and_check(self) -> "Suite":
        if self.sweep is not None:  # entries made by an earlier expansion (a re-validated dump) stay as they are
            self.sources = [arm for e in self.sources
                            for arm in ([e] if e.arm is not None else self.sweep.expand(e))]
            self._unique_labels(self.sources)  # a sweep label can collide with a hand-written one
        return self

    def outer_for(self, entry: SourceEntry) -> OuterLoop:
        return OuterLoop.model_validate({**self.outer.model_dump(), **entry.outer})

    def inner_for(self, entry: SourceEntry) -> InnerLoop:
        return InnerLoop.model_validate({**self.inner.model_dump(), **entry.inner})

    def learner_for(self, entry: SourceEntry) -> LearnerSpace:
        """The space this arm's meta-training samples learners from (the suite's, with the arm's overrides)."""
        return LearnerSpace.model_validate({**self.learner.model_dump(), **entry.learner}) if entry.learner \
            else self.learner


@functools.cache
def _kind_model(kind) -> type[Suite]:
    if kind.section is None:
        return Suite
    field = (kind.section_model, ...) if kind.section_required else (typing.Optional[kind.section_model], None)
    return create_model(f"{kind.section.capitalize()}Suite", __base__=Suite, __module__=__name__,
                        **{kind.section: field})


def suite_model(kind_name: str) -> type[Suite]:
    """The model of a suite of this kind: :class:`Suite` plus the kind's own section (``SuiteKind.section``) as a
    typed field. An unregistered name gets :class:`Suite`, whose ``kind`` field then says what is wrong."""
    if not isinstance(kind_name, str) or kind_name not in suite_kinds:
        return Suite
    return _kind_model(suite_kinds.get(kind_name))


def suite_from_dict(raw: Any) -> Suite:
    """Validate a suite's data (a YAML document, a stored ``model_dump``) with the model of its kind; raises
    pydantic's ``ValidationError`` (``load_suite`` turns it into one ``ConfigError`` line)."""
    return _model_of(raw).model_validate(raw)


def _model_of(raw: Any) -> type[Suite]:
    return suite_model(raw.get("kind", "fewstep") if isinstance(raw, dict) else None)


def _deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
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


def _check_expanded_size(path: Path | str, raw: Any) -> None:
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


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a suite file, resolving ``include: other.yaml`` (relative to the file) by deep merge."""
    if path in seen:
        raise ConfigError(f"{path}: include: circular include")
    try:
        # a regular file of at most a few MB (a FIFO or /dev/zero is refused at once, not read forever)
        raw = yaml.load(read_text_capped(path, "suite file"), Loader=_UniqueKeyLoader)  # noqa: S506 (SafeLoader)
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
    _check_expanded_size(path, raw)
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
        raw = _deep_merge(_read_yaml(target, seen + (path,)), raw)
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


def format_error(path: Path, exc: ValidationError, prefix: str = "", root: type[BaseModel] | None = None) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in (prefix, *err["loc"]) if p != "")
    loc = loc.replace(".[", "[")
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        parent = _model_at(err["loc"][:-1], root or Suite)
        close = difflib.get_close_matches(key, list(parent.model_fields), n=1) if parent else []
        msg = f"unknown key{f' (did you mean {close[0]!r}?)' if close else ''}"
    extra = f" (and {len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
    return f"{path}: {loc or '<top>'}: {msg}{extra}"


def _model_at(loc: tuple, root: type[BaseModel]) -> type[BaseModel] | None:
    """The pydantic model class at a location path in ``root`` (for 'did you mean' on unknown keys)."""
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


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
        raise ConfigError(format_error(path, exc, root=_model_of(raw))) from None
    if profile is not None and profile not in PROFILES:
        raise BadInput(f"--profile: unknown profile {profile!r}; choose from: {', '.join(PROFILES)}")
    resolved, merged_raw = {}, {}
    for name, override in base.profiles.items():
        merged_raw[name] = _deep_merge({k: v for k, v in raw.items() if k != "profiles"}, override)
        try:
            resolved[name] = suite_from_dict(merged_raw[name])
        except ValidationError as exc:
            raise ConfigError(format_error(path, exc, prefix=f"profiles.{name}", root=_model_of(merged_raw[name]))) \
                from None
    for suite, where in [(base, "")] + [(s, f"profiles.{n}.") for n, s in resolved.items()]:
        _check_sources(path, suite, where)
    if profile is not None and not base.profiles:  # a suite without profiles runs as written at any profile
        resolved[profile], merged_raw[profile] = base, {k: v for k, v in raw.items() if k != "profiles"}
    if overrides:  # over the chosen profile only (what runs); with none (validate), over the base and every one
        try:
            settings = [_parse_setting(text) for text in overrides]
        except BadInput as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if profile is None:
            base = _validated_with(path, raw, settings, "")
        resolved = {name: _validated_with(path, merged_raw[name], settings, f" (profile {name!r})")
                    for name in resolved if profile in (None, name)}
    if profile is None:
        return base
    if profile not in resolved:
        raise BadInput(f"{path}: --profile: suite has no profile {profile!r}; it has: {', '.join(resolved) or 'none'}")
    return resolved[profile]


# ------------------------------------------------------------------------------------------ --set overrides
@dataclass(frozen=True)
class Setting:
    text: str                 # KEY=VALUE as given
    key: str
    value: Any                # the YAML-typed value


def _parse_setting(text: str) -> Setting:
    key, eq, value = text.partition("=")
    key = key.strip()
    if not eq or not key or any(not part for part in key.split(".")):
        raise BadInput(f"--set {text!r}: expected KEY=VALUE with a dotted KEY, e.g. --set outer.iterations=50")
    try:
        parsed = yaml.load(value, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except (yaml.YAMLError, ValueError, TypeError) as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BadInput(f"--set {key}: the value {value!r} is not valid YAML: {problem}") from None
    _check_expanded_size(f"--set {key}", parsed)   # (an alias bomb fits in one argument too)
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
        node, loc, i, shape = raw, [], 0, _model_of(raw)
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


def _validated_with(path: Path, raw: dict, settings: list[Setting], where: str) -> Suite:
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
            raise ConfigError(format_error(path, exc, root=_model_of(raw))) from None
        _check_sources(path, suite, "")
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


# ------------------------------------------------------------------------------------------ suite names
def installed_suites() -> dict[str, Path]:
    """Name (the file's stem) -> file of every suite installed with tgbench, sorted by name."""
    return {p.stem: p for p in sorted(INSTALLED_SUITES.glob("*.yaml"))}


def resolve_suite(ref: str | Path) -> Path:
    """The file a command's suite argument means: a path that exists always wins; else the name of an installed
    suite (``tgbench run mnist_fewstep`` from any directory); else, when it reads as a file name (a ``.yaml``
    suffix or a folder in it), that path, so that loading it says the file is missing. Anything else is an unknown
    name: one ``ConfigError`` line with the closest installed names."""
    path = Path(ref)
    if path.exists():
        return path
    installed = installed_suites()
    if str(ref) in installed:
        return installed[str(ref)]
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path
    close = difflib.get_close_matches(str(ref), list(installed), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ConfigError(f"{ref}: no such suite file and no installed suite of that name; {hint}installed: "
                      f"{', '.join(installed) or 'none'} (tgbench list suites)")


def _check_sources(path: Path, suite: Suite, where: str) -> None:
    if suite.dataset.name not in datasets:
        raise datasets.unknown(suite.dataset.name, f"{path}: {where}dataset.name")
    if suite.dataset.fallback is not None and suite.dataset.fallback not in datasets:
        raise datasets.unknown(suite.dataset.fallback, f"{path}: {where}dataset.fallback")
    for i, entry in enumerate(suite.sources):
        key = f"{where}sources[{i}]"
        if entry.method not in methods:
            raise methods.unknown(entry.method, f"{path}: {key}.method")
        cls = methods.get(entry.method, f"{path}: {key}.method")
        try:
            cls.Params.model_validate(entry.params)
        except ValidationError as exc:
            raise ConfigError(format_error(path, exc, prefix=f"{key}.params", root=cls.Params)) from None
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

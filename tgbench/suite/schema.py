"""The suite's schema: the typed pydantic models a suite YAML file is validated by, and the size bounds they
enforce. The lowest layer of ``tgbench.suite``: it imports no registry and nothing above it, so the engine and the
identity hashes can read the models without reaching methods, datasets or suite kinds. A kind's own section
(``tune:``, ``nas:``) and the check that ``kind`` is registered are added by :mod:`tgbench.suite.by_kind`.
"""
from __future__ import annotations

import difflib
import random
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, ConfigDict, Field, PositiveFloat, PositiveInt, PrivateAttr, field_validator,
                      model_validator, with_config)
from typing_extensions import TypedDict  # (pydantic needs typing_extensions' TypedDict before Python 3.12)

from tgbench.inner import MOMENTUM_FORMS
from tgbench.locations import label_problem
from tgbench.nn import ACTIVATIONS, BN_STATISTICS, LearnerSpec, held_out_variants
from tgbench.strict import Strict  # the one strict base of every settings model (also methods' and proxies' Params)

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

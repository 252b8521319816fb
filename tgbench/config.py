"""Suite configuration: typed pydantic models mirrored by the suite YAML files, with profiles and ``include:``.

A suite file is validated as a whole (every profile too) before anything runs; any problem becomes one
``ConfigError`` line ``<file>: <key.path>: <what is wrong>``. Unknown keys are errors at every level.
"""
from __future__ import annotations

import copy
import difflib
import random
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, field_validator,
                      model_validator)

from tgbench.errors import BadInput, ConfigError
from tgbench.nn import ACTIVATIONS, LearnerSpec

PROFILES = ("smoke", "cpu", "paper")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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

    conv_channels: list[list[PositiveInt]] = Field(default_factory=lambda: [[64, 128]])
    fc_hidden: list[list[PositiveInt]] = Field(default_factory=lambda: [[256]])
    kernel_size: list[Literal[1, 3, 5, 7]] = Field(default_factory=lambda: [3])
    activation: list[Literal[ACTIVATIONS]] = Field(default_factory=lambda: ["leaky_relu"])  # type: ignore[valid-type]
    batch_norm: bool = True
    weight_norm: bool = True

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
                           self.weight_norm if weight_norm is None else weight_norm)


class InnerLoop(Strict):
    steps: PositiveInt = 32
    batch_size: int = Field(128, ge=2)                # batch statistics (mean-only BN, generator BN) need B >= 2
    optimizer: Literal["sgd_momentum", "adam"] = "sgd_momentum"
    lr: PositiveFloat = 0.02                          # initial value of the learned per-step learning rate
    momentum: float = Field(0.5, gt=0.0, lt=1.0)      # initial value of the learned per-step momentum
    learn_lr: bool = True
    learn_momentum: bool = True


class OuterLoop(Strict):
    iterations: PositiveInt = 100
    lr: PositiveFloat = 0.02                          # Adam, as in the official code
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["cosine", "constant"] = "cosine"
    final_lr_fraction: float = Field(0.1, ge=0.0, le=1.0)   # cosine decays to this fraction of lr
    meta_batch_size: PositiveInt = 128                # real training examples in the meta-loss
    intermediate_losses: bool = False                 # average the meta-loss over every inner step
    checkpoint_every: int = Field(0, ge=0)            # k > 0: gradient checkpoint every k inner steps
    population: PositiveInt = 1                       # P learners of one sampled architecture, via vmap
    meta_gradient: Literal["backprop", "es", "hybrid"] = "backprop"
    es_pairs: PositiveInt = 4                         # antithetic pairs per ES / hybrid estimate
    es_sigma: PositiveFloat = 0.01
    grad_clip: PositiveFloat | None = None            # clip the meta-gradient's global norm

    @model_validator(mode="after")
    def _compatible(self) -> "OuterLoop":
        if self.population > 1 and (self.checkpoint_every or self.meta_gradient != "backprop"):
            raise ValueError("population > 1 works with meta_gradient=backprop and no checkpointing")
        if self.checkpoint_every and self.meta_gradient != "backprop":
            raise ValueError("checkpoint_every applies to meta_gradient=backprop only")
        return self


class Evaluation(Strict):
    seeds: PositiveInt = 3
    eval_every: PositiveInt = 50                     # outer iterations between validation checks
    eval_learners: PositiveInt = 2                   # fresh learners per check during meta-training
    final_learners: PositiveInt = 4                  # fresh learners per architecture in the final evaluation
    architectures: list[dict[str, Any]] | None = None   # held-out learners (LearnerSpec fields); default reference

    def learner_specs(self, space: LearnerSpace, weight_norm: bool | None) -> list[LearnerSpec]:
        if not self.architectures:
            return [space.reference(weight_norm)]
        base = space.reference(weight_norm).as_dict()
        specs = []
        for arch in self.architectures:
            fields = {**base, **arch}
            fields["conv_channels"] = tuple(fields["conv_channels"])
            fields["fc_hidden"] = tuple(fields["fc_hidden"])
            specs.append(LearnerSpec(**fields))
        return specs

    @model_validator(mode="after")
    def _arch_keys(self) -> "Evaluation":
        allowed = set(LearnerSpec.__dataclass_fields__)
        for i, arch in enumerate(self.architectures or []):
            unknown = set(arch) - allowed
            if unknown:
                raise ValueError(f"architectures[{i}] has unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        return self


class SourceEntry(Strict):
    method: str
    label: str | None = None                  # unique name of this arm in tables; default: the method name
    params: dict[str, Any] = Field(default_factory=dict)   # validated by the method's own Params model
    outer: dict[str, Any] = Field(default_factory=dict)    # per-arm overrides of the suite's outer loop

    @property
    def name(self) -> str:
        return self.label or self.method


class Suite(Strict):
    name: str
    kind: Literal["fewstep", "tune", "nas_proxy"] = "fewstep"
    description: str = ""
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    learner: LearnerSpace = Field(default_factory=LearnerSpace)
    inner: InnerLoop = Field(default_factory=InnerLoop)
    outer: OuterLoop = Field(default_factory=OuterLoop)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    sources: list[SourceEntry] = Field(min_length=1)
    profiles: dict[Literal["smoke", "cpu", "paper"], dict[str, Any]] = Field(default_factory=dict)

    @field_validator("sources")
    @classmethod
    def _unique_labels(cls, sources: list[SourceEntry]) -> list[SourceEntry]:
        seen = set()
        for entry in sources:
            if entry.name in seen:
                raise ValueError(f"two sources are named {entry.name!r}; give one a distinct `label`")
            seen.add(entry.name)
        return sources

    def outer_for(self, entry: SourceEntry) -> OuterLoop:
        return OuterLoop.model_validate({**self.outer.model_dump(), **entry.outer})


def _deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a suite file, resolving ``include: other.yaml`` (relative to the file) by deep merge."""
    if path in seen:
        raise ConfigError(f"{path}: include: circular include")
    try:
        raw = yaml.safe_load(path.read_text())
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
    include = raw.pop("include", None)
    if include is not None:
        if not isinstance(include, str):
            raise ConfigError(f"{path}: include: must be a file name")
        target = (path.parent / include).resolve()
        if not target.is_file():
            raise ConfigError(f"{path}: include: no such file {target}")
        raw = _deep_merge(_read_yaml(target, seen + (path,)), raw)
    return raw


def _format_error(path: Path, exc: ValidationError, prefix: str = "", root: type[BaseModel] | None = None) -> str:
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


def load_suite(path: str | Path, profile: str | None = None) -> Suite:
    """Read, merge the chosen profile's overrides, and validate a suite (every profile is validated too).

    Source names and their ``params`` are checked against the method registry, so a typo in a method name or
    a curriculum fails here, before any work starts.
    """
    path = Path(path)
    raw = _read_yaml(path)
    try:
        base = Suite.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(path, exc)) from None
    if profile is not None and profile not in PROFILES:
        raise BadInput(f"--profile: unknown profile {profile!r}; choose from: {', '.join(PROFILES)}")
    resolved = {}
    for name, override in base.profiles.items():
        merged = _deep_merge({k: v for k, v in raw.items() if k != "profiles"}, override)
        try:
            resolved[name] = Suite.model_validate(merged)
        except ValidationError as exc:
            raise ConfigError(_format_error(path, exc, prefix=f"profiles.{name}")) from None
    for suite, where in [(base, "")] + [(s, f"profiles.{n}.") for n, s in resolved.items()]:
        _check_sources(path, suite, where)
    if profile is None:
        return base
    if profile not in resolved:
        raise BadInput(f"{path}: --profile: suite has no profile {profile!r}; it has: {', '.join(resolved) or 'none'}")
    return resolved[profile]


def _check_sources(path: Path, suite: Suite, where: str) -> None:
    from tgbench.registry import datasets, methods

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
            raise ConfigError(_format_error(path, exc, prefix=f"{key}.params", root=cls.Params)) from None
        try:
            suite.outer_for(entry)
        except ValidationError as exc:
            raise ConfigError(_format_error(path, exc, prefix=f"{key}.outer", root=OuterLoop)) from None

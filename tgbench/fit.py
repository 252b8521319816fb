"""Will a suite's cells fit, and are its values ones a cell can run? Checked before any work (issue 27).

Values that validate can still be impossible to run: ``outer.lr: 1e300`` overflows float32 at the first meta-step,
``learner.conv_channels: [[8192, 8192, 8192]]`` (1.2 G weights a learner) cannot be unrolled in any memory this
machine has. Both used to fail inside the first cell (exit 1); :func:`check_fit` refuses them before the store is
touched (``ConfigError``, exit 2, one line naming the suite file and the key), and :func:`check_values` refuses
the learning rates at ``tgbench validate`` time too.

**The memory estimate** (:func:`arm_needs`) is a *lower bound* of what one cell of an arm holds at once, in the
default float dtype, so that a refusal is certain and a legitimate suite is never refused (a late failure is the
lesser evil):

* the meta-trained learner, for every architecture its space can sample: the unroll keeps ``kept`` inner steps
  for the backward pass (``T`` with plain backprop; ``ceil(T / k) + k`` with ``checkpoint_every: k``; one for ES
  and hybrid estimates, which are counted as if they backpropagated through nothing), each step's weights and
  momentum buffer (``2 x parameters``) and each step's conv / fc outputs for the ``B`` lesson examples, for
  ``population`` learners at once; plus one forward of the meta-batch;
* each evaluation and held-out learner: its weights, momentum buffer and one step's outputs;
* the teacher (the method's source built on torch's ``meta`` device, so nothing is allocated): its parameters
  with their gradient and Adam's two moments (``4 x``), plus the ``kept`` lessons of ``B`` images.

Everything else a cell holds (batch-norm and activation copies, the autograd graph's other buffers, the data set,
torch itself) is left out, so the true peak is several times the bound. The bound is compared with the memory
the run can get: on CUDA the device's free memory (``torch.cuda.mem_get_info``); on the CPU ``MemAvailable`` of
``/proc/meminfo`` (where there is one) and what ``RLIMIT_AS`` leaves this process. With no figure (another
system), nothing is refused.
"""
from __future__ import annotations

import functools
import itertools
import math
import resource
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from tgbench.suite.loading import load_suite
from tgbench.suite.schema import SourceEntry, Suite
from tgbench.data import Split
from tgbench.errors import ConfigError
from tgbench.nn import Learner, LearnerSpec, count_params
from tgbench.problem import Problem
from tgbench.registry import methods
from tgbench.source import SourceContext

# A learning rate (inner.lr, outer.lr, and the ends of a tuning range over them) above this is refused: a float32
# holds it (max 3.4e38; a lr of 1e300 overflowed at the first step, exit 1), and a cell run with it diverges and is
# recorded so (tests force divergence with 1e30); no useful value comes near it (the paper's are <= 0.1).
MAX_LR = 1e30
LR_KEYS = (("inner", "lr"), ("outer", "lr"))


@dataclass(frozen=True)
class Need:
    """A lower bound of the bytes one part of a cell holds at once, and the suite key that sizes it."""

    bytes: int
    key: str
    what: str


# ------------------------------------------------------------------------------------------ values
def check_learning_rates(path: str | Path, suite: Suite, profile: str | None = None) -> None:
    """``ConfigError`` for an inner or outer learning rate (suite-wide, per arm, or an end of a tuning range) above
    ``MAX_LR``; the key is the per-arm override when the arm sets one, else the suite's."""
    at = f" (profile {profile!r})" if profile else ""
    for i, entry in enumerate(suite.sources):
        values = {"inner": suite.inner_for(entry).lr, "outer": suite.outer_for(entry).lr}
        for section, leaf in LR_KEYS:
            own = getattr(entry, section)
            where = f"sources[{i}].{section}.{leaf}" if leaf in own else f"{section}.{leaf}"
            _refuse_lr(path, where, values[section], at)
        if suite.tuning is not None:
            space_key = f"sources[{i}].tune_space" if entry.tune_space is not None else "tuning.space"
            for name, dim in suite.tuning.space_for(entry).items():
                if tuple(name.split(".", 1)) in LR_KEYS:
                    ends = dim.choices if dim.choices is not None else (dim.low, dim.high)
                    for value in ends:
                        if isinstance(value, (int, float)) and not isinstance(value, bool):
                            _refuse_lr(path, f"{space_key}.{name}", value, at)


def _refuse_lr(path, where: str, value: float, at: str) -> None:
    if value > MAX_LR:
        raise ConfigError(f"{path}: {where}: {value:g} is above the largest learning rate a cell takes, "
                          f"{MAX_LR:g} (float32 holds at most 3.4e38){at}")


def check_values(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> None:
    """What ``tgbench validate`` adds to the models' validation: the learning rates of the suite and of each of
    its profiles (with the ``--set`` overrides), as :func:`check_fit` checks them before a run."""
    suite = load_suite(path, overrides=overrides)
    check_learning_rates(path, suite)
    for profile in suite.profiles:
        check_learning_rates(path, load_suite(path, profile, overrides=overrides), profile)


# ------------------------------------------------------------------------------------------ memory
def element_bytes() -> int:
    return torch.empty((), dtype=torch.get_default_dtype(), device="meta").element_size()


class _RandomInitSkipped(TorchFunctionMode):
    """Random draws give uninitialised tensors of their shape: on the meta device, where a module is built only to
    be counted, they would run through PyTorch's Python decompositions, whose first use imports ``torch._dynamo``
    (measured 1.4 s, most of the quick start's import time, for values a meta tensor does not hold anyway)."""

    FACTORIES = {torch.randn, torch.rand}
    FILLS = frozenset({"normal_", "uniform_", "exponential_", "log_normal_", "cauchy_", "geometric_", "random_",
                       "bernoulli_"})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.FACTORIES and kwargs.get("device") in (None, "meta", torch.device("meta")):
            size = kwargs["size"] if "size" in kwargs else args[0] if len(args) == 1 and not isinstance(args[0], int) \
                else args
            return torch.empty(size, dtype=kwargs.get("dtype"), device=kwargs.get("device"),
                               requires_grad=kwargs.get("requires_grad", False))
        if getattr(func, "__name__", None) in self.FILLS and args and isinstance(args[0], torch.Tensor) \
                and args[0].is_meta:
            return args[0]
        return func(*args, **kwargs)


@contextmanager
def sizes_only():
    """Build modules to count them: on the ``meta`` device (nothing allocated), random initialisation skipped."""
    with torch.device("meta"), _RandomInitSkipped():
        yield


@functools.lru_cache(maxsize=256)  # (a suite asks ~7 times per arm for the same few specs)
def learner_parameters(spec: LearnerSpec, problem: Problem) -> int:
    """The learner's parameter count, built for its sizes only (:func:`sizes_only`: nothing allocated)."""
    with sizes_only():
        return count_params(Learner(spec, problem))


def learner_outputs(spec: LearnerSpec, problem: Problem) -> int:
    """Values one example's forward pass certainly produces: each conv's output at its input resolution (two per
    residual block) and each hidden fc layer's output (a lower bound: pooling, BN and activations make more)."""
    _, h, w = problem.image_shape
    total = 0
    for width in spec.conv_channels:
        total += width * h * w * (2 if spec.residual else 1)
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    return total + sum(spec.fc_hidden)


def _widest_part(spec: LearnerSpec, problem: Problem) -> str:
    """``conv_channels`` or ``fc_hidden``: the learner key whose layers hold most of ``spec``'s weights."""
    conv_only = learner_parameters(replace(spec, fc_hidden=()), problem)
    return "conv_channels" if 2 * conv_only >= learner_parameters(spec, problem) else "fc_hidden"


def kept_steps(steps: int, checkpoint_every: int, meta_gradient: str) -> int:
    """Inner steps whose state an unroll keeps at once for its backward pass (module docstring)."""
    if meta_gradient != "backprop":
        return 1
    if checkpoint_every:
        return min(steps, math.ceil(steps / checkpoint_every) + checkpoint_every)
    return steps


def meta_specs(suite: Suite, entry: SourceEntry) -> list[LearnerSpec]:
    """Every architecture the arm's meta-training can sample (the largest kernel: it has the most weights)."""
    space = suite.learner_for(entry)
    kernel = max(space.kernel_size)
    return [LearnerSpec(tuple(conv), tuple(fc), kernel, space.activation[0], space.batch_norm, space.weight_norm,
                        space.bn_statistics, bn_shift=space.bn_shift)
            for conv, fc in itertools.product(space.conv_channels, space.fc_hidden)]


def teacher_parameters(suite: Suite, entry: SourceEntry, problem: Problem, train_size: int) -> int:
    """The arm's source's parameter count, built on the ``meta`` device; 0 when it cannot be built there (e.g. a
    source that reads real examples at init) or is a plug-in's (whose code runs only inside its cells, where a
    failure is contained): the estimate stays a lower bound."""
    try:  # (an unknown method, e.g. in an edited teacher file: whoever builds the source says so, with its key)
        cls = methods.get(entry.method)
        if not cls.learns_data:  # (real data, a lessons file: nothing meta-learned beyond the schedule)
            return 0
        if methods.origin(entry.method) != "built-in":  # a plug-in's code runs in its cells only (contained there)
            return 0
        inner = suite.inner_for(entry)
        params = cls.Params.model_validate(entry.params)
        with sizes_only():
            train = Split(torch.empty(train_size, *problem.image_shape), torch.empty(train_size, dtype=torch.long))
            source = cls(params, SourceContext(train, inner.steps, inner.batch_size, problem))
        return count_params(source)
    except Exception:  # noqa: BLE001 (any failure here is the cell's to report; the bound just counts nothing)
        return 0


def arm_needs(suite: Suite, i: int, problem: Problem, train_size: int) -> list[Need]:
    """Lower bounds of what one cell of ``sources[i]`` holds at once, part by part (module docstring)."""
    entry = suite.sources[i]
    inner, outer, size = suite.inner_for(entry), suite.outer_for(entry), element_bytes()
    kept = kept_steps(inner.steps, outer.checkpoint_every, outer.meta_gradient)
    learner_key = (f"sources[{i}].learner" if entry.learner else "learner")
    needs = []
    for spec in meta_specs(suite, entry):
        weights, outputs = learner_parameters(spec, problem), learner_outputs(spec, problem)
        values = outer.population * ((kept + 1) * 2 * weights + kept * inner.batch_size * outputs) \
            + outer.meta_batch_size * outputs
        needs.append(Need(values * size, f"{learner_key}.{_widest_part(spec, problem)}",
                          f"meta-training learner {spec.describe()} ({weights:,} weights, {kept} kept steps of "
                          f"batch {inner.batch_size})"))
    needs += evaluation_needs(suite, problem, inner.batch_size)
    teacher = teacher_parameters(suite, entry, problem, train_size)
    lessons = kept * inner.batch_size * math.prod(problem.image_shape)
    needs.append(Need((4 * teacher + lessons) * size, f"sources[{i}].params",
                      f"teacher of method {entry.method!r} ({teacher:,} meta-parameters)"))
    return needs


def evaluation_needs(suite: Suite, problem: Problem, batch: int) -> list[Need]:
    """Lower bounds of each evaluation and held-out learner: its weights, momentum buffer and one step's outputs."""
    ev, size = suite.evaluation, element_bytes()
    # (learners derived from the reference, the default evaluation and held-out sets, are sized by `learner:`)
    evaluated = [("evaluation.architectures" if ev.architectures else None, s)
                 for s in ev.learner_specs(suite.learner, None)]
    evaluated += [("evaluation.held_out" if ev.held_out is not None else None, s)
                  for s in ev.held_out_specs(suite.learner, None).values()]
    needs = []
    for key, spec in evaluated:
        weights = learner_parameters(spec, problem)
        needs.append(Need((2 * weights + batch * learner_outputs(spec, problem)) * size,
                          key or f"learner.{_widest_part(spec, problem)}",
                          f"evaluation learner {spec.describe()} ({weights:,} weights)"))
    return needs


# `tgbench teach` trains a teacher file's evaluation learners one after another: at most this many (the shipped
# suites score 1-4 per architecture), whatever its embedded suite says
MAX_TEACH_LEARNERS = 1000


def check_embedded_suite(path: str | Path, suite: Suite, entry: SourceEntry, problem: Problem, train_size: int,
                         device: torch.device | str = "cpu") -> None:
    """``BadInput`` naming the teacher file and the ``suite.`` key when the suite saved inside it (which anyone can
    edit) asks for learners or a teacher that clearly cannot fit in memory (the bounds :func:`check_fit` uses;
    ``teach`` bounds the number of learners, ``MAX_TEACH_LEARNERS``)."""
    inner = suite.inner_for(entry)
    needs = evaluation_needs(suite, problem, inner.batch_size)
    key = f"sources[{suite.sources.index(entry)}].params" if entry in suite.sources else "params"
    teacher = teacher_parameters(suite, entry, problem, train_size)
    needs.append(Need(2 * teacher * element_bytes(), key, f"teacher of method {entry.method!r} "
                                                         f"({teacher:,} parameters)"))
    budget = available_bytes(device)
    need = max(needs, key=lambda n: n.bytes)
    if budget is not None and need.bytes > budget:
        raise ConfigError(f"{path}: suite.{need.key}: the suite saved in this teacher asks for more memory than "
                          f"there is: its {need.what} alone needs at least {_gb(need.bytes)}, and "
                          f"{torch.device(device)} has {_gb(budget)} available")


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """What a cell on ``device`` can get: free CUDA memory, or on the CPU the smaller of ``MemAvailable`` and what
    ``RLIMIT_AS`` leaves this process; None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):  # no driver to ask (the run then fails where it says so itself)
            return None
    if device.type != "cpu":
        return None
    figures = []
    try:
        meminfo = Path("/proc/meminfo").read_text()
        figures += [int(line.split()[1]) * 1024 for line in meminfo.splitlines() if line.startswith("MemAvailable:")]
    except OSError:
        pass
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    if limit != resource.RLIM_INFINITY:
        figures.append(max(0, limit - _address_space_used()))
    return min(figures) if figures else None


def _address_space_used() -> int:
    try:
        status = Path("/proc/self/status").read_text()
        return next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmSize:"))
    except (OSError, StopIteration):
        return 0


def check_fit(path: str | Path, suite: Suite, problem: Problem, train_size: int, device: torch.device | str = "cpu",
              profile: str | None = None) -> None:
    """Refuse (``ConfigError``: the suite file, the key, the estimate and the memory there is) a suite whose
    learning rates cannot run or one of whose arms clearly cannot fit in memory, before any work."""
    check_learning_rates(path, suite, profile)
    budget = available_bytes(device)
    if budget is None:
        return
    at = f" (profile {profile!r})" if profile else ""
    for i in range(len(suite.sources)):
        need = max(arm_needs(suite, i, problem, train_size), key=lambda n: n.bytes)
        if need.bytes > budget:
            raise ConfigError(f"{path}: {need.key}: source {suite.sources[i].name!r} cannot fit in memory: its "
                              f"{need.what} alone needs at least {_gb(need.bytes)}, and {torch.device(device)} "
                              f"has {_gb(budget)} available{at}")


def _gb(n: int) -> str:
    return f"{n / 2 ** 30:.1f} GiB"

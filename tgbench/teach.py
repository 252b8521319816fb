"""Export a trained teacher from the store, and teach any model with it.

``tgbench export`` copies one complete cell's teacher artifact out of the store into a self-describing file:
the teacher's full state dict (a GTN's generator weights and learned curriculum codes, or DD's pixel tensors,
plus the learned per-step ``log_lr`` / ``logit_momentum``), the resolved suite it was trained under, and the
cell's recorded evaluation.

``tgbench teach`` rebuilds that teacher (loading the resolved dataset it was trained on: its test split is what
is reported, and sources such as ``real`` draw their lessons from its training split) and trains fresh models from
scratch on its lessons with its learned lr/momentum schedule, through the engine's own evaluation
(:func:`tgbench.engine.evaluate`, seeded exactly as the runner's final evaluation: ``EVAL_SEED_OFFSET + seed``).
Without ``--model`` it trains the suite's evaluation learners and reproduces the store's ``test_acc_final`` for
that seed exactly (same machine, same thread count). With ``--model package.module:ClassName`` it trains your
architecture instead:

* the class is an ``nn.Module`` constructed as ``ClassName(image_shape, num_classes)`` (``image_shape`` is
  ``(C, H, W)``) whose ``forward(x)`` maps ``(B, C, H, W)`` normalised images to ``(B, num_classes)`` logits;
* each of the ``--learners`` models is a fresh construction under a seed drawn from the evaluation generator
  (its own default initialisation), trained functionally (``torch.func.functional_call``, heavy-ball SGD or Adam
  as the suite's inner optimiser, with the teacher's per-step lr and momentum); it stays in training mode
  throughout, so batch-norm layers use batch statistics, as tgbench's learners do;
* a subclass of :class:`tgbench.nn.Learner` with that constructor is used as is (it already returns
  log-probabilities and draws its init from the generator), which is what makes the round trip exact; its
  constructor hands the two on as ``super().__init__(spec, Problem(image_shape, num_classes))``
  (:class:`tgbench.problem.Problem`).

A teacher file is read with ``torch.load(weights_only=True)`` (tensors, primitive values and plain containers:
a file holding any other pickled object is refused without being unpickled, so it cannot run code), then
checked field by field (:func:`load_exported`) and against the teacher its suite builds; a file that is not a
tgbench teacher is one ``BadInput`` line naming it (exit 2).
"""
from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tgbench import device as devices
from tgbench.builders import build_teacher
from tgbench.fit import MAX_TEACH_LEARNERS, check_embedded_suite
from tgbench.suite.by_kind import suite_from_dict
from tgbench.suite.loading import load_suite
from tgbench.suite.schema import MAX_INNER_STEPS, SourceEntry, Suite
from tgbench.data import load_dataset
from tgbench.engine import EvalPlan, evaluate
from tgbench.errors import BadInput
from tgbench.identity import EVAL_SEED_OFFSET
from tgbench.locations import check_regular_file
from tgbench.nn import Learner
from tgbench.problem import Problem
from tgbench.provenance import default_profile
from tgbench.records import FewstepCell, Status, cell_key
from tgbench.registry import datasets, suite_kinds
from tgbench.source import Lesson
from tgbench.store import Store, load_weights_only, require_existing, write_found_disk_full

FORMAT = "tgbench-teacher/1"
RECORD_KEYS = ("suite", "profile", "source", "method", "variant", "seed", "config_hash", "dataset_resolved",
               "test_acc_final", "val_acc_final", "eval_architectures", "outer_iterations", "meta_train_seconds",
               "revision", "finished", "torch", "threads")


# ------------------------------------------------------------------------------------------ export
def save_atomically(obj: dict, out: str | Path) -> Path:
    """``torch.save`` to a temporary file renamed into place: a failed export never leaves half a file."""
    path = Path(out)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        torch.save(obj, tmp)
        os.chmod(tmp, readable_file_mode())  # mkstemp's 0600 would make the export unreadable to others
        os.replace(tmp, path)
        tmp = None
    except (OSError, RuntimeError) as exc:  # (torch's zip writer words a short write as "[enforce fail at ...]")
        if write_found_disk_full(exc, path.parent):
            free_kb = shutil.disk_usage(path.parent).free // 1024
            why = f"no space left on the device holding {path.parent} ({free_kb} KB free)"
        else:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else _one_line(exc)
        raise BadInput(f"--out: cannot write {path}: {why}") from None
    finally:
        if tmp is not None:   # a failed export leaves no temporary file behind
            Path(tmp).unlink(missing_ok=True)
    return path


def readable_file_mode() -> int:
    """The mode ``open()`` gives a new file (0666 less the umask, 0644 usually): exported files are shared."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _suite_name(suite: str) -> str:
    """A suite argument is a YAML file (its ``name`` is used) or a bare suite name."""
    if suite.endswith((".yaml", ".yml")) or Path(suite).is_file():
        return load_suite(suite).name
    return suite


def export_teacher(suite: str | Suite, profile: str | None, source: str, seed: int, out: str,
                   storage: str | None = None, artifacts_dir: str | None = None, log=print) -> Path:
    """Write the teacher of cell (source, seed) of ``suite@profile`` from the store to ``out``.

    ``suite`` a loaded suite (a file or installed suite, at the profile, with its ``--set`` overrides): the cell
    of its current configuration is taken, and when the store holds the cell only under other configurations the
    error lists the ``--set`` lists they were run with. A bare study name (its file may be gone): the newest cell
    of that key, whatever its configuration (likewise for a suite whose kind says nothing of its current cells:
    ``SuiteKind.current_cells``)."""
    profile = profile or default_profile(devices.resolve())
    name = f"{_suite_name(suite) if isinstance(suite, str) else suite.name}@{profile}"
    store = Store(require_existing(storage), artifacts_dir)  # reading: never create an empty store
    study = store.study(name, create=False)
    records = {r.cell: r for r in store.records(study) if isinstance(r, FewstepCell)}
    record = records.get(cell_key(source, seed))
    if record is None:
        raise BadInput(f"--source/--seed: no cell {cell_key(source, seed)!r} in study {name!r}; it has: "
                       f"{', '.join(sorted(records)) or 'none'}")
    kind = None if isinstance(suite, str) else suite_kinds.get(suite.kind)
    if kind is not None and kind.current_cells is not None:
        accept = kind.current_cells(store, suite, profile, seed + 1)
        current = [r for r in store.records(study, accept) if isinstance(r, FewstepCell)]
        record = next((r for r in current if r.cell == record.cell), None)
        if record is None:
            raise BadInput(f"--source/--seed: cell {cell_key(source, seed)!r}: "
                           + kind.no_cells_hint(store, suite, profile))
    if record.status != Status.COMPLETE or not record.teacher_artifact:
        raise BadInput(f"--source/--seed: cell {record.cell!r} of {name!r} is {record.status}; only complete "
                       "cells have a saved teacher")
    payload = store.load_teacher(record.teacher_artifact)
    payload.update({"format": FORMAT, "study": name, "profile": profile, "source": source,
                    "schedule": record.schedule, "record": {k: getattr(record, k) for k in RECORD_KEYS}})
    path = save_atomically(payload, out)
    log(f"exported {name} {record.cell} (method {payload['method']}, {payload['dataset_resolved']}, recorded test "
        f"acc {record.test_acc_final:.4f}) -> {path}")
    return path


# the fields `teach` needs, with their types (`export_teacher` writes these and more)
REQUIRED_FIELDS = {"method": str, "params": dict, "state_dict": dict, "suite": dict, "dataset_resolved": str,
                   "seed": int}
OPTIONAL_FIELDS = {"source": str, "study": str, "profile": str, "record": dict}  # may also be None


def load_exported(path: str | Path) -> dict:
    """An exported teacher file's payload, read without unpickling anything but tensors and plain values
    (``weights_only=True``) and checked to have every field ``teach`` uses, of the right type; anything else
    is :class:`BadInput` naming the file."""
    try:
        check_regular_file(path, "teacher file")   # a FIFO would block torch.load forever, a device never end
        payload = load_weights_only(path)
    except BadInput:
        raise
    except FileNotFoundError:
        raise BadInput(f"{path}: no such teacher file") from None
    except Exception as exc:
        raise BadInput(f"{path}: not a readable teacher file ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise BadInput(f"{path}: format: not a tgbench teacher (expected {FORMAT!r}; write one with `tgbench export`)")
    for key, kind in {**REQUIRED_FIELDS, **OPTIONAL_FIELDS}.items():
        if key in OPTIONAL_FIELDS and payload.get(key) is None:  # (optional: absent or None)
            continue
        value = payload.get(key)
        if key not in payload or not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            got = "missing" if key not in payload else f"a {type(value).__name__}"
            raise BadInput(f"{path}: {key}: not a tgbench teacher file ({key!r} is {got}, expected "
                           f"{kind.__name__}; write one with `tgbench export`)")
    state = payload["state_dict"]
    bad = next((k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))), None)
    if not state or bad is not None:
        what = "empty" if not state else f"entry {bad!r} is not a tensor"
        raise BadInput(f"{path}: state_dict: not a tgbench teacher file (its state_dict is {what})")
    return payload


def _rebuild_teacher(path: str | Path, payload: dict, suite, entry, dataset):
    """The teacher of ``payload`` built under its suite, with the file's weights; :class:`BadInput` naming the
    file when they do not fit (missing/unexpected keys, wrong shapes)."""
    try:
        teacher = build_teacher(suite, entry, dataset, payload["seed"])
    except BadInput as exc:
        raise BadInput(f"{path}: {exc}") from None
    except Exception as exc:
        raise BadInput(f"{path}: cannot build its {payload['method']!r} teacher ({_one_line(exc)})") from None
    try:
        teacher.load_state_dict(payload["state_dict"])
    except Exception as exc:  # torch lists every missing / unexpected key and size mismatch over many lines
        raise BadInput(f"{path}: state_dict: does not fit the {payload['method']!r} teacher its suite builds "
                       f"({_one_line(exc)})") from None
    # load_state_dict casts what it copies: int64 weights or NaN/inf ones "taught" at chance level, exit 0
    expected = teacher.state_dict()
    for key, tensor in payload["state_dict"].items():
        if tensor.dtype != expected[key].dtype:
            raise BadInput(f"{path}: state_dict.{key}: {tensor.dtype}, but the teacher its suite builds holds "
                           f"{expected[key].dtype} there")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise BadInput(f"{path}: state_dict.{key}: holds NaN or infinite values; not a trained teacher")
    return teacher


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    text = text[:limit] + ("..." if len(text) > limit else "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ------------------------------------------------------------------------------------------ teach
# `teach --steps` beyond this is refused (as a suite's `inner.steps` is): a teacher teaches T lessons and repeats
# them beyond its horizon, so more steps only train longer on the same data.
MAX_TEACH_STEPS = MAX_INNER_STEPS


class RepeatsShared:
    """A teacher whose lessons beyond its horizon ``T`` share the image and label tensors of the lesson they
    repeat (step t's of step ``t % T``, when equal): the engine holds every lesson of an unroll at once, so
    ``teach --steps 8000`` on a T = 2 teacher grew ~55 KB per step (1.3 GB); now memory does not grow with
    the steps of a teacher that cycles its lessons (every built-in source does). The lessons are the teacher's
    own, bit for bit; only their storage is shared. ``problem``, ``optimizer`` and ``new_episode`` are the
    teacher's."""

    def __init__(self, teacher, horizon: int):
        self.teacher, self.horizon = teacher, horizon
        self.problem, self.optimizer = teacher.problem, teacher.optimizer
        self._first: dict[int, Lesson] = {}   # this episode's lessons 0..T-1

    def new_episode(self, generator: torch.Generator):
        self._first = {}
        return self.teacher.new_episode(generator)

    def __call__(self, t: int, episode) -> Lesson:
        lesson = self.teacher(t, episode)
        if t < self.horizon:
            self._first[t] = lesson
            return lesson
        seen = self._first.get(t % self.horizon)
        if seen is not None and torch.equal(seen.x, lesson.x) and torch.equal(seen.y, lesson.y):
            return lesson._replace(x=seen.x, y=seen.y)
        return lesson


def construct(cls: type[nn.Module], problem: Problem) -> nn.Module:
    """``cls(image_shape, num_classes)``: how a ``--model`` class is built (the one constructor ``teach``'s
    documentation asks of it, a subclass of ``tgbench.nn.Learner`` included)."""
    return cls(problem.image_shape, problem.num_classes)


class UserModel(nn.Module):
    """A user's logits model behind the learner interface the engine uses: log-probabilities out, and
    ``reset_parameters(generator)`` = a fresh construction under a seed drawn from ``generator``."""

    def __init__(self, cls: type[nn.Module], problem: Problem):
        super().__init__()
        self.cls, self.problem = cls, problem
        self.model = construct(cls, problem)

    def reset_parameters(self, generator: torch.Generator) -> None:
        seed = int(torch.randint(2 ** 62, (1,), generator=generator, device=generator.device))
        with torch.random.fork_rng(), devices.constructing_on(generator.device):
            torch.manual_seed(seed)
            fresh = construct(self.cls, self.problem)
        self.model.load_state_dict(fresh.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.model(x), dim=1)


def model_factory(target: str, problem: Problem):
    """``package.module:ClassName`` or ``path/to/file.py:ClassName`` -> a factory ``problem -> learner`` for the
    engine (``engine.evaluate``). A module name is imported as Python would, and else looked for as a file under
    the working directory (``mymodel:TinyMLP`` finds ``./mymodel.py`` without ``PYTHONPATH=.``)."""
    module_name, _, attr = target.rpartition(":")
    if not module_name or not attr:
        raise BadInput(f"--model: {target!r} is not of the form package.module:ClassName or file.py:ClassName")
    try:
        cls = getattr(_import_model_module(module_name), attr)
    except BadInput:
        raise
    except Exception as exc:
        raise BadInput(f"--model: cannot import {target!r}: {type(exc).__name__}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise BadInput(f"--model: {target!r} is not an nn.Module class")
    # a Learner subclass already returns log-probabilities and draws its init from the generator: used as is
    factory = functools.partial(construct if issubclass(cls, Learner) else UserModel, cls)
    image_shape, num_classes = problem.image_shape, problem.num_classes  # (the user's constructor, in messages)
    try:  # check the contract once, up front, so a wrong model is one line and not a shape error mid-training
        with torch.random.fork_rng(), devices.constructing_on(torch.device("cpu")):  # (a shape check: on the CPU)
            out = factory(problem)(torch.zeros(2, *image_shape, device="cpu"))
    except Exception as exc:
        raise BadInput(f"--model: {target}(image_shape={image_shape}, num_classes={num_classes}) on a batch "
                       f"of 2 failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if tuple(out.shape) != (2, num_classes):
        raise BadInput(f"--model: {target} returned shape {tuple(out.shape)} for a batch of 2; expected "
                       f"(2, {num_classes}) logits")
    return factory


def _import_model_module(module_name: str):
    """The module of ``--model``: a ``.py`` file (a path; relative to the working directory), or a dotted module
    name importable as is or found as ``a/b.py`` under the working directory."""
    import importlib.util
    import sys

    as_file = Path(module_name)
    if as_file.suffix != ".py":
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            candidate = Path(*module_name.split(".")).with_suffix(".py")
            if exc.name != module_name.split(".")[0] or not candidate.is_file():
                raise
            as_file = candidate
    if not as_file.is_file():
        raise BadInput(f"--model: no such file {as_file}")
    name = f"tgbench_model_{as_file.resolve().stem}"
    spec = importlib.util.spec_from_file_location(name, as_file.resolve())
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module   # (dataclasses and pickling look their module up by name)
    spec.loader.exec_module(module)
    return module


def _restore(path: str | Path, data_root: str | None, device: str | None):
    """(payload, suite, dataset, teacher) of an exported teacher file: its suite, the dataset it was trained on
    (seed 0: the runner's split) on ``device``, and the teacher rebuilt with the file's weights."""
    payload = load_exported(path)
    try:
        suite = suite_from_dict(payload["suite"])
        # the arm as it was configured (per-arm overrides included); files without a source name: method + params
        entry = next((e for e in suite.sources if e.name == payload.get("source")),
                     SourceEntry(method=payload["method"], params=payload["params"]))
    except BadInput as exc:
        raise BadInput(f"{path}: {exc}") from None
    except Exception as exc:  # pydantic's ValidationError spans lines
        raise BadInput(f"{path}: suite: not a valid tgbench suite ({_one_line(exc)})") from None
    if payload["dataset_resolved"] not in datasets:
        raise BadInput(f"{path}: dataset_resolved: unknown dataset {payload['dataset_resolved']!r}")
    dataset = load_dataset(payload["dataset_resolved"], data_root=data_root, download=suite.dataset.download,
                           fallback=None, seed=0)
    on = devices.resolve(device)
    # the suite inside the file is anyone's to edit: bound what it asks for before anything is built from it
    check_embedded_suite(path, suite, entry, dataset.problem, len(dataset.train), on)
    devices.prepare(on)
    dataset = devices.on_device(dataset, on)
    return payload, suite, dataset, _rebuild_teacher(path, payload, suite, entry, dataset)


def teach(path: str | Path, model: str | None = None, steps: int | None = None, learners: int | None = None,
          data_root: str | None = None, device: str | None = None, log=print):
    """Train fresh models on an exported teacher's lessons on ``device`` (``tgbench.device.resolve``); returns
    the engine's ``EvalResult`` (endpoints)."""
    payload, suite, dataset, teacher = _restore(path, data_root, device)
    on, seed = dataset.train.x.device, payload["seed"]
    if model is None:
        specs = suite.evaluation.learner_specs(suite.learner, teacher.source.learner_weight_norm)
        what = "the suite's evaluation learner(s) " + ", ".join(s.describe() for s in specs)
    else:
        specs = [model_factory(model, dataset.problem)]
        what = model
    trained_steps = teacher.hyper.log_lr.shape[0]  # T the teacher was meta-trained for (its schedule's length)
    steps = steps or trained_steps
    if steps > MAX_TEACH_STEPS:
        raise BadInput(f"--steps: at most {MAX_TEACH_STEPS} inner steps (got {steps}; this teacher was meta-trained "
                       f"for {trained_steps}, and repeats its lessons beyond that)")
    teacher = RepeatsShared(teacher, trained_steps)
    if learners is not None and learners > MAX_TEACH_LEARNERS:
        raise BadInput(f"--learners: at most {MAX_TEACH_LEARNERS} (got {learners})")
    if learners is None and suite.evaluation.final_learners > MAX_TEACH_LEARNERS:  # (an edited embedded suite)
        raise BadInput(f"{path}: suite.evaluation.final_learners: {suite.evaluation.final_learners} learners is "
                       f"more than teach trains (at most {MAX_TEACH_LEARNERS}); pass --learners to choose fewer")
    learners = learners or suite.evaluation.final_learners
    result = evaluate(teacher, specs, dataset.test, dataset.val,
                      EvalPlan(steps, learners, teacher.optimizer, per_step=False),
                      devices.generator(on, EVAL_SEED_OFFSET + seed))
    rec = payload.get("record", {})
    log(f"teacher: {payload.get('study')} {payload.get('source')} seed {seed} (method {payload['method']}, "
        f"{payload['dataset_resolved']}, meta-trained for {trained_steps} inner steps)")
    log(f"model: {what}; {learners} fresh model(s) per architecture, {steps} steps")
    log(f"test accuracy: {result.test_acc[-1]:.6f}  (val {result.val_acc[-1]:.6f})")
    if rec.get("test_acc_final") is not None:
        log(f"recorded in the store for this seed (evaluation learners, {trained_steps} steps, "
            f"{suite.evaluation.final_learners} learners): test accuracy {rec['test_acc_final']:.6f}")
    return result


# ------------------------------------------------------------------------------------------ plain tensors
LESSONS_FORMAT = "tgbench-lessons/1"
# what `export --format` writes besides a teacher: tgbench's own dict, DD-Ranking's folder, DC-BENCH's file/folder
LESSON_LAYOUTS = ("tensors", "dd-ranking", "dc-bench")


def export_lessons(teacher_file: str | Path, out: str | Path, data_root: str | None = None, log=print,
                   layout: str = "tensors") -> Path:
    """Write the data an exported teacher teaches, as plain tensors, in one of three layouts (the ``external``
    source reads each back):

    * ``tensors`` — tgbench's own dict in one file: ``images`` ``(T*B, C, H, W)`` float32 in the dataset's
      normalised space (``mean`` / ``std`` per channel undo it), ``labels`` ``(T*B,)`` int64 or ``(T*B, classes)``
      soft-label probabilities, ``lr`` and ``momentum`` ``(T,)`` (the learned per-step schedule), ``steps`` T
      and ``batch_size`` B: rows ``t*B:(t+1)*B`` are the lesson of inner step t;
    * ``dd-ranking`` — DD-Ranking's folder (``out`` is the folder): ``images.pt`` and ``labels.pt`` (the same two
      tensors) and ``lr.pt``, a 0-d tensor: DD-Ranking trains with one learning rate, so it holds the mean of the
      learned per-step schedule (the per-step values are in a ``tensors`` export);
    * ``dc-bench`` — DC-BENCH's: ``out`` ending in ``.pt`` is one file ``{'data': [(images, labels)]}``, any
      other ``out`` a folder of ``images_best.pt`` and ``labels_best.pt``.

    A teacher that draws randomness per unroll (real data, GTN without a curriculum) gives one episode, drawn
    from a CPU generator seeded ``EVAL_SEED_OFFSET + seed`` (reproducible; not one of the final evaluation's
    episodes, which are drawn after each learner's initialisation). Files are written whole or not at all, mode
    0644 (less the umask).
    """
    if layout not in LESSON_LAYOUTS:
        raise BadInput(f"--format: unknown layout {layout!r}; choose from: {', '.join(LESSON_LAYOUTS)}")
    payload, suite, dataset, teacher = _restore(teacher_file, data_root, "cpu")
    steps = teacher.hyper.log_lr.shape[0]
    with torch.no_grad():
        episode = teacher.new_episode(devices.generator(torch.device("cpu"), EVAL_SEED_OFFSET + payload["seed"]))
        lessons = [teacher(t, episode) for t in range(steps)]
    schedule = teacher.hyper.schedule()
    tensors = {
        "format": LESSONS_FORMAT, "images": torch.cat([l.x for l in lessons]).contiguous(),
        "labels": torch.cat([l.y for l in lessons]).contiguous(), "lr": torch.tensor(schedule["lr"]),
        "momentum": torch.tensor(schedule["momentum"]), "steps": steps, "batch_size": int(lessons[0].x.shape[0]),
        "mean": list(dataset.mean), "std": list(dataset.std), "dataset": payload["dataset_resolved"],
        "method": payload["method"], "source": payload.get("source"), "study": payload.get("study"),
        "seed": payload["seed"],
    }
    images, labels = tensors["images"], tensors["labels"]
    if layout == "tensors":
        path = save_atomically(tensors, out)
    elif layout == "dd-ranking":
        path = _save_folder(out, {"images.pt": images, "labels.pt": labels,
                                  "lr.pt": tensors["lr"].mean().reshape(())})
    elif str(out).endswith(".pt"):  # dc-bench, one file
        path = save_atomically({"data": [(images, labels)]}, out)
    else:  # dc-bench, a folder
        path = _save_folder(out, {"images_best.pt": images, "labels_best.pt": labels})
    log(f"wrote {len(images)} images ({steps} steps x {tensors['batch_size']}) of {payload.get('study')} "
        f"{payload.get('source')} seed {payload['seed']} in the {layout} layout -> {path}")
    return path


def _save_folder(out: str | Path, files: dict[str, torch.Tensor]) -> Path:
    """Each tensor to its own file in the folder ``out`` (created), each written atomically."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise BadInput(f"--out: {folder} is a file; this layout writes a folder of {', '.join(files)}")
    for name, tensor in files.items():
        save_atomically(tensor, folder / name)
    return folder

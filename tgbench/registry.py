"""The one registry: every pluggable thing (methods, datasets, NAS proxies, suite kinds) is registered here once,
by name.

Entries are lazy ``"package.module:Attribute"`` strings, imported on first use, so listing names never
imports torch-heavy modules and a broken plugin only fails when it is asked for (with its name in the
error). Third-party packages add methods, datasets, proxies and suite kinds through the ``tgbench.methods``,
``tgbench.datasets``, ``tgbench.proxies`` and ``tgbench.suite_kinds`` entry-point groups, and loose plugin files
through ``--methods-dir DIR`` (:func:`load_plugin_dir`; a file declares any of ``METHODS``, ``DATASETS``,
``PROXIES``, ``SUITE_KINDS``):
every path ends in the same ``register`` call.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import inspect
import importlib
import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

from tgbench.errors import BadInput, UnknownName


class PluginExited(RuntimeError):
    """A plug-in (dataset, proxy or suite kind) called ``sys.exit``: the CLI prints this one line, naming the
    plug-in and where it came from, and exits 1 (as for a plug-in method's cell: ``tgbench.cells.CELL_FAILURES``)."""


class Registry:
    """Name -> lazily imported object of one kind.

    ``base`` (optional, a ``"module:Class"`` string or a class) is checked on load: a registered class must
    subclass it, so a typo'd target fails loudly rather than half-working. Without a base, ``callable_targets``
    asks for a callable instead (dataset loaders are functions).
    """

    def __init__(self, kind: str, base: str | type | None = None, entry_point_group: str | None = None,
                 callable_targets: bool = False, instances: bool = False, contain: tuple[str, ...] = ()):
        self.kind = kind
        # what of a plug-in (not a built-in) runs behind a guard that turns its sys.exit into PluginExited: the
        # loader itself (callable targets), these methods of a class, or these callable fields of an instance
        self._contain = contain
        self._base = base
        self._instances = instances  # entries are instances of ``base`` (suite kinds), not subclasses
        self._callable_targets = callable_targets
        self._targets: dict[str, str | Any] = {}
        self._loaded: dict[str, Any] = {}
        self._origins: dict[str, str] = {}  # where a name not registered here came from (for error messages)
        self._entry_point_group = entry_point_group
        self._entry_points_scanned = entry_point_group is None

    def register(self, name: str, target: str | Any, *, replace: bool = False) -> None:
        """Register ``target`` (an object or ``"module:attr"``) under ``name``; duplicate names are refused."""
        if name in self._targets and not replace and self._targets[name] != target:
            raise ValueError(f"{self.kind} {name!r} is already registered (as {self._targets[name]!r})")
        self._targets[name] = target
        self._loaded.pop(name, None)

    def unregister(self, name: str) -> None:
        """Forget ``name`` (a plugin file that failed half-way is rolled back with this)."""
        for table in (self._targets, self._loaded, self._origins):
            table.pop(name, None)

    def decorator(self, name: str) -> Callable[[Any], Any]:
        """``@registry.decorator("name")`` for classes defined in plugin files."""

        def wrap(obj: Any) -> Any:
            self.register(name, obj)
            return obj

        return wrap

    def add_from_plugin(self, path: Path, declaration: str, declared: dict[str, Any]) -> list[str]:
        """Register what the plugin file ``path`` declares in its ``declaration`` mapping (e.g. ``METHODS``) and
        load each entry at once, so a taken name or a wrong type fails now, as ``BadInput`` naming the file and
        the key, rather than when a suite first asks for it."""
        self._scan_entry_points()  # so that a name taken by an installed plugin is refused too
        done: list[str] = []
        for name, target in declared.items():
            where = f"{path}: {declaration}[{name!r}]"
            try:
                self.register(name, target)
            except ValueError as exc:  # the name is taken
                self._rollback(done)
                raise BadInput(f"{where}: {exc}") from None
            self._origins[name] = f"plugin file {path}"
            done.append(name)
            try:
                self.get(name)
            except BadInput as exc:
                self._rollback(done)
                raise BadInput(f"{where}: {exc}") from None
        return done

    def _rollback(self, names: list[str]) -> None:
        for name in names:
            self.unregister(name)

    def origin(self, name: str) -> str:
        """Where ``name`` comes from, for messages about what it produced: ``plugin file PATH``, ``entry point
        'module:attr'`` (an installed package's) or ``built-in``."""
        self._scan_entry_points()
        return self._origins.get(name, "built-in")

    def _scan_entry_points(self) -> None:
        if self._entry_points_scanned:
            return
        self._entry_points_scanned = True
        for ep in entry_points(group=self._entry_point_group):
            if ep.name not in self._targets:
                self._targets[ep.name] = ep.value
                self._origins[ep.name] = f"entry point {ep.value!r}"

    def names(self) -> list[str]:
        self._scan_entry_points()
        return sorted(self._targets)

    def __contains__(self, name: str) -> bool:
        self._scan_entry_points()
        return name in self._targets

    def unknown(self, name: str, where: str = "") -> UnknownName:
        """The error for an unknown name: valid choices plus a 'did you mean'."""
        names = self.names()
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        prefix = f"{where}: " if where else ""
        return UnknownName(f"{prefix}unknown {self.kind} {name!r}{hint}; choose from: {', '.join(names)}")

    def get(self, name: str, where: str = "") -> Any:
        self._scan_entry_points()
        if name not in self._targets:
            raise self.unknown(name, where)
        if name not in self._loaded:
            target = self._targets[name]
            if isinstance(target, str):
                module_name, _, attr = target.partition(":")
                try:
                    obj = getattr(importlib.import_module(module_name), attr)
                except Exception as exc:  # a plugin that fails on import is named, not a traceback
                    raise BadInput(
                        f"{self.kind} {name!r}: importing {target!r} failed: {type(exc).__name__}: {exc}"
                    ) from exc
            else:
                obj = target
            base = self._resolve_base()
            if base is not None and self._instances and not isinstance(obj, base):
                raise BadInput(f"{self.kind} {name!r}: {target!r} is not a {base.__name__}")
            if base is not None and not self._instances and not (isinstance(obj, type) and issubclass(obj, base)):
                raise BadInput(f"{self.kind} {name!r}: {target!r} is not a subclass of {base.__name__}")
            if self._callable_targets and not callable(obj):
                raise BadInput(f"{self.kind} {name!r}: {target!r} is not callable")
            if self.origin(name) != "built-in":
                obj = self._contained(name, obj)
            self._loaded[name] = obj
        return self._loaded[name]

    def _guard(self, name: str, fn: Callable) -> Callable:
        """``fn``, except that a ``sys.exit`` inside it is :class:`PluginExited` naming the plug-in (a plug-in
        must not end tgbench with its own exit code and nothing on stderr). Exceptions pass as they are: the
        callers already word them (bad input, a failed cell)."""
        @functools.wraps(fn)
        def contained(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except SystemExit as exc:
                raise PluginExited(f"{self.kind} {name!r} ({self.origin(name)}) called sys.exit({exc.code!r}) in "
                                   f"{getattr(fn, '__name__', 'its code')}") from None
        return contained

    def _contained(self, name: str, obj: Any) -> Any:
        """A plug-in's ``obj`` behind :meth:`_guard`: a loader function wrapped; a class subclassed with its
        ``contain`` methods wrapped (class and static methods too); an instance (a dataclass) copied with its
        ``contain`` fields wrapped. Built-ins are used as they are."""
        if self._callable_targets and not isinstance(obj, type):
            return self._guard(name, obj)
        if isinstance(obj, type) and self._contain:
            attrs = {}
            for attr in self._contain:
                raw = inspect.getattr_static(obj, attr, None)
                if isinstance(raw, (classmethod, staticmethod)):
                    attrs[attr] = type(raw)(self._guard(name, raw.__func__))
                elif callable(raw):
                    attrs[attr] = self._guard(name, raw)
            return type(obj.__name__, (obj,), {"__module__": obj.__module__, "__qualname__": obj.__qualname__,
                                               "__doc__": obj.__doc__, **attrs})
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type) and self._contain:
            fields = {f: self._guard(name, getattr(obj, f)) for f in self._contain if callable(getattr(obj, f, None))}
            return dataclasses.replace(obj, **fields)
        return obj

    def _resolve_base(self) -> type | None:
        if isinstance(self._base, str):
            module_name, _, attr = self._base.partition(":")
            self._base = getattr(importlib.import_module(module_name), attr)
        return self._base


# Teaching-data sources. Built-ins live in methods/ (installed as tgbench.methods).
methods = Registry("method", base="tgbench.source:Source", entry_point_group="tgbench.methods")
methods.register("real", "tgbench.methods.real:RealData")
methods.register("dataset_distillation", "tgbench.methods.dataset_distillation:DatasetDistillation")
methods.register("gtn", "tgbench.methods.gtn:GTN")
methods.register("external", "tgbench.methods.external:ExternalData")

# Datasets: each target is a loader function  (data_root, download, seed) -> tgbench.data.Dataset, whose output
# tgbench.data.load_dataset checks (tgbench.data.check_dataset) before anything uses it.
datasets = Registry("dataset", entry_point_group="tgbench.datasets", callable_targets=True)
datasets.register("mnist", "tgbench.data:load_mnist")
datasets.register("mnist-5k", "tgbench.data:load_mnist_5k")
datasets.register("fashion-mnist", "tgbench.data:load_fashion_mnist")
datasets.register("kmnist", "tgbench.data:load_kmnist")
datasets.register("cifar10", "tgbench.data:load_cifar10")
datasets.register("cifar100", "tgbench.data:load_cifar100")
datasets.register("svhn", "tgbench.data:load_svhn")

# NAS proxies: each scores an architecture (cheaply) for the nas_proxy suites; see tgbench/proxies.py.
proxies = Registry("proxy", base="tgbench.proxies:Proxy", entry_point_group="tgbench.proxies",
                   contain=("__init__", "teacher_source", "score"))
proxies.register("param_count", "tgbench.proxies:ParamCount")
proxies.register("synflow", "tgbench.proxies:SynFlow")
proxies.register("grad_norm", "tgbench.proxies:GradNorm")
proxies.register("snip", "tgbench.proxies:Snip")
proxies.register("jacob_cov", "tgbench.proxies:JacobCov")
proxies.register("nwot", "tgbench.proxies:NWOT")
proxies.register("teaching", "tgbench.proxies:TeachingData")
proxies.register("real_epochs", "tgbench.proxies:RealEpochs")

# Suite kinds: each target is a tgbench.kinds.SuiteKind (its YAML section, and what `tgbench run` / `report` do
# with the suite); see docs/adding_a_suite_kind.md.
suite_kinds = Registry("suite kind", base="tgbench.kinds:SuiteKind", entry_point_group="tgbench.suite_kinds",
                       instances=True, contain=("run", "report", "validate"))
suite_kinds.register("fewstep", "tgbench.kinds.fewstep:FEWSTEP")
suite_kinds.register("tune", "tgbench.kinds.tune:TUNE")
suite_kinds.register("nas_proxy", "tgbench.kinds.nas_proxy:NAS_PROXY")


# ------------------------------------------------------------------------------------------ plugin files

# What a plugin file may declare, each a module-level {"name": target} dict, and the registry it feeds.
PLUGIN_DECLARATIONS = {"METHODS": methods, "DATASETS": datasets, "PROXIES": proxies, "SUITE_KINDS": suite_kinds}


def load_plugin_dir(directory: str | Path) -> list[str]:
    """Import every ``*.py`` file in ``directory`` (sorted, ``_``-prefixed files skipped) and register what each
    declares in module-level ``METHODS = {"name": SourceSubclass}``, ``DATASETS = {"name": loader}``,
    ``PROXIES = {"name": ProxySubclass}`` and ``SUITE_KINDS = {"name": SuiteKind(...)}`` mappings (any of them,
    at least one); returns the names registered.

    This is the one loading path for plugin files: ``--methods-dir`` in the CLI and every worker process
    (:mod:`tgbench.cells`) call it. Files are imported eagerly (their names must be known before a suite is
    validated), so a file that raises on import, declares none of the three or reuses a taken name fails
    here: ``BadInput`` naming the file. Loading the same file twice is a no-op (worker processes and the main
    process both call it).
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise BadInput(f"--methods-dir: {folder} is not a directory")
    names = []
    for path in sorted(folder.glob("*.py")):
        if not path.name.startswith("_"):
            names += _load_plugin_file(path.resolve())
    return names


def _load_plugin_file(path: Path) -> list[str]:
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    module_name = f"tgbench_plugin_{digest}_{path.stem}"  # one module per file, even for equal file names
    if module_name in sys.modules:
        module = sys.modules[module_name]
        return [name for key in PLUGIN_DECLARATIONS for name in getattr(module, key, {})]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # a broken plugin is one line naming its file, not a traceback
        del sys.modules[module_name]
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise BadInput(f"{path}: importing the plugin failed: {type(exc).__name__}: {first}") from None
    declared = {key: getattr(module, key) for key in PLUGIN_DECLARATIONS if hasattr(module, key)}
    problem = next((f"{key}: must be a non-empty dict {{'name': ...}}, not {type(value).__name__} {value!r:.40}"
                    for key, value in declared.items() if not isinstance(value, dict) or not value), None)
    if not declared:
        problem = (f"{', '.join(PLUGIN_DECLARATIONS)}: a plugin file must declare at least one of them, e.g. "
                   "METHODS = {'name': SourceSubclass, ...} or DATASETS = {'name': loader, ...}")
    if problem:
        del sys.modules[module_name]
        raise BadInput(f"{path}: {problem}")
    added: list[tuple[Registry, str]] = []
    try:
        for key, mapping in declared.items():
            added += [(PLUGIN_DECLARATIONS[key], name)
                      for name in PLUGIN_DECLARATIONS[key].add_from_plugin(path, key, mapping)]
    except BadInput:  # all of the file or none of it: a rerun in this process reports it again
        for registry, name in added:
            registry.unregister(name)
        del sys.modules[module_name]
        raise
    return [name for _, name in added]

"""The house rules of the code base: no import cycle among tgbench's modules and no import of another module's
``_private`` names, counting module-level imports and imports inside functions alike (issue 16); no function
with more than 8 parameters (the engine-API issue: what travels together is grouped, e.g. ``Problem``,
``Unroll``, ``EvalPlan``)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tgbench"
MAX_PARAMETERS = 8


def _imports() -> dict[str, list[tuple[str, list[str]]]]:
    """module -> [(imported tgbench module, names imported from it)], every import statement anywhere."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):   # subpackages too (kinds/, reporting/)
        parts = path.relative_to(ROOT).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tgbench":
                for alias in node.names:  # `from tgbench import runner` imports the module tgbench.runner
                    sub = f"{node.module}.{alias.name}"
                    folder = ROOT.joinpath(*node.module.split("."))
                    if (folder / f"{alias.name}.py").is_file() or (folder / alias.name / "__init__.py").is_file():
                        found.append((sub, []))
                    else:
                        found.append((node.module, [alias.name]))
            elif isinstance(node, ast.Import):
                found += [(a.name, []) for a in node.names if a.name.split(".")[0] == "tgbench"]
        graph[module] = found
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_among_tgbench_modules():
    imports = _imports()
    graph = {m: {t for t, _ in edges if t in imports and t != m} for m, edges in imports.items()}
    assert _cycles(graph) == []


def test_no_module_imports_another_modules_private_names():
    private = [f"{m} imports {t}.{n}" for m, edges in _imports().items() for t, names in edges
               for n in names if n.startswith("_") and t != m]
    assert private == []



# ------------------------------------------------------------------------------ imports the registry makes by name
# The registry imports its entries lazily from "package.module:Attribute" strings, so a module that looks an entry
# up (``suite_kinds.get(kind)``) depends on that entry's module without an import statement naming it: the suite
# model once reached the suite kinds, which import the suite model, this way. These checks count such a lookup as
# an import of every module its registry names (entries and the checked base class).
REGISTRY = PACKAGE / "registry.py"
# Modules whose cycle through registry lookups is the plug-in dispatch itself: a command, a worker or the suite
# loader looks a kind up by name, and the kind runs cells, studies and suites that read back what looked it up.
# ``tgbench.config`` (the compatibility re-exports), ``tgbench.worker`` (which rebuilds a worker's suite by its
# kind) and ``tgbench.fit`` (which loads a suite to check its values) are in it through the kind-checked suite model. A module joining this loop fails the test below.
KIND_DISPATCH_LOOP = {
    "tgbench.runner", "tgbench.cells", "tgbench.tuning", "tgbench.kinds.fewstep", "tgbench.kinds.fewstep.run",
    "tgbench.kinds.tune", "tgbench.kinds.tune.run", "tgbench.kinds.nas_proxy", "tgbench.kinds.nas_proxy.run",
    "tgbench.suite.by_kind", "tgbench.suite.checks", "tgbench.suite.overrides",
    "tgbench.suite.loading", "tgbench.config", "tgbench.kinds", "tgbench.worker", "tgbench.fit",
}


def _registered_modules(registry_source: str) -> dict[str, set[str]]:
    """Registry variable (``methods``, ``suite_kinds`` ...) -> the modules its string entries and base name, from
    ``X = Registry(..., base="m:C")`` and ``X.register("name", "m:attr")`` in ``registry_source``."""
    named: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(registry_source)):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                and getattr(node.value.func, "id", None) == "Registry":
            strings = [k.value for k in node.value.keywords if k.arg == "base"]
            variable = node.targets[0]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "register" \
                and isinstance(node.func.value, ast.Name):
            strings = node.args[1:2]
            variable = node.func.value
        else:
            continue
        for value in strings:
            if isinstance(value, ast.Constant) and isinstance(value.value, str) and ":" in value.value:
                named.setdefault(variable.id, set()).add(value.value.partition(":")[0])
    return named


def _graph(imports: dict[str, list[tuple[str, list[str]]]],
           registered: dict[str, set[str]] | None = None) -> dict[str, set[str]]:
    """module -> tgbench modules it imports; with ``registered`` (``_registered_modules``), a module that imports a
    registry variable also imports every module that registry names, and one that imports the registry module
    itself, every module of every registry."""
    graph = {}
    for module, edges in imports.items():
        targets = {t for t, _ in edges}
        for target, names in edges:
            if registered is not None and target == "tgbench.registry":
                for variable in names or list(registered):
                    targets |= registered.get(variable, set())
        graph[module] = {t for t in targets if t in imports and t != module}
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_the_suite_schema_reaches_no_registry_even_by_name():
    """The suite's models (what the engine and the hashes read) import no registry, directly, through any module
    they import, or through a module a registry names."""
    registered = _registered_modules(REGISTRY.read_text(encoding="utf-8"))
    assert set(registered) >= {"methods", "datasets", "proxies", "suite_kinds"}
    assert registered["suite_kinds"] >= {"tgbench.kinds.fewstep", "tgbench.kinds.tune", "tgbench.kinds.nas_proxy"}
    reached = _reachable(_graph(_imports(), registered), "tgbench.suite.schema")
    assert "tgbench.registry" not in reached
    assert reached & set().union(*registered.values()) == set()


def test_cycles_through_registry_lookups_stay_in_the_kind_dispatch_loop():
    """Counting a registry lookup as an import, the only cycle is the kind dispatch (``KIND_DISPATCH_LOOP``)."""
    graph = _graph(_imports(), _registered_modules(REGISTRY.read_text(encoding="utf-8")))
    outside = [sorted(set(cycle) - KIND_DISPATCH_LOOP) for cycle in _cycles(graph)]
    assert [extra for extra in outside if extra] == []


def _over_long_signatures(source: str, where: str, limit: int = MAX_PARAMETERS) -> list[str]:
    """``where:line name (n parameters)`` for every function or lambda of ``source`` with more than ``limit``
    parameters: positional, keyword-only, ``*args`` and ``**kwargs`` each count one; a method's ``self`` / ``cls``
    does not."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
            names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
            if names[:1] in (["self"], ["cls"]):
                names = names[1:]
            if len(names) > limit:
                found.append(f"{where}:{node.lineno} {getattr(node, 'name', 'lambda')} ({len(names)} parameters)")
    return found


def test_no_function_takes_more_than_eight_parameters():
    files = [p for folder in ("tgbench", "methods", "benchmarks") for p in sorted((ROOT / folder).rglob("*.py"))]
    assert files
    over = [hit for path in files
            for hit in _over_long_signatures(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]
    assert over == []


def test_the_checks_can_fail():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    nine = "def f(a, b, c, d, e, f, g, h, *, i): ...\nclass C:\n    def m(self, a, b, c, d, e, f, g, *h): ..."
    assert _over_long_signatures(nine, "x.py") == ["x.py:1 f (9 parameters)"]
    assert _over_long_signatures(nine, "x.py", limit=7) == ["x.py:1 f (9 parameters)", "x.py:3 m (8 parameters)"]
    # a lookup by name closes a cycle that no import statement shows (the suite model <-> the suite kinds)
    registry = ('suite_kinds = Registry("suite kind", base="tgbench.kinds:SuiteKind")\n'
                'suite_kinds.register("fewstep", "tgbench.kinds.fewstep:FEWSTEP")\n')
    assert _registered_modules(registry) == {"suite_kinds": {"tgbench.kinds", "tgbench.kinds.fewstep"}}
    imports = {"tgbench.suite.schema": [("tgbench.registry", ["suite_kinds"])], "tgbench.registry": [],
               "tgbench.kinds": [], "tgbench.kinds.fewstep": [("tgbench.suite.schema", ["Suite"])]}
    assert _cycles(_graph(imports)) == []
    assert _cycles(_graph(imports, _registered_modules(registry))) == [["tgbench.kinds.fewstep",
                                                                        "tgbench.suite.schema"]]


# ----------------------------------------------------------------------------------------- the reporting package
REPORTING = PACKAGE / "reporting"
# what a report may build on: numbers (stats), the stored status words (records), errors, and itself
REPORTING_MAY_IMPORT = {"tgbench.stats", "tgbench.records", "tgbench.errors", "tgbench.locations"}
NEVER_IN_REPORTING = {"torch", "torchvision", "optuna"}
# each built-in kind is one folder; its report module renders under the same rules, and may also read its own
# kind's analysis (the numbers the report shows, computed from the frames it is handed)
KIND_REPORTS = {PACKAGE / "kinds" / kind / "report.py": f"tgbench.kinds.{kind}.analysis"
                for kind in ("fewstep", "nas_proxy", "tune")}


def _imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` / ``from ... import`` statement of ``path`` names, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module in ("tgbench", "tgbench.reporting"):
            found |= {f"{node.module}.{a.name}" for a in node.names}   # `from tgbench import stats`: a module
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def test_reporting_renders_only_what_it_is_handed():
    """tgbench.reporting and each kind's report read no store, train nothing and know no other kind: their tgbench
    imports are stats, records, errors, the reporting package (and a kind's report its own kind's analysis), and
    no module of them imports torch or optuna (import-level, every statement)."""
    files = sorted(REPORTING.glob("*.py"))
    assert {p.stem for p in files} >= {"__init__", "markdown", "figures", "files", "frames", "leaderboard", "site"}
    assert all(path.is_file() for path in KIND_REPORTS)
    bad = []
    for path in [*files, *KIND_REPORTS]:
        allowed = REPORTING_MAY_IMPORT | {KIND_REPORTS.get(path, "tgbench.reporting")}
        for module in _imported_modules(path):
            top = module.split(".")[0]
            if top == "tgbench" and not (module in allowed or module == "tgbench.reporting"
                                         or module.startswith("tgbench.reporting.")):
                bad.append(f"{path.relative_to(PACKAGE)} imports {module}")
            if top in NEVER_IN_REPORTING:
                bad.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert bad == []
    assert not (PACKAGE / "report.py").exists(), "tgbench/report.py moved to tgbench/kinds/fewstep/report.py"


def test_importing_every_report_loads_no_store_kind_or_torch():
    """The same at run time: importing every reporting module in a fresh interpreter loads neither torch nor the
    store, the training code or any kind."""
    import subprocess
    import sys

    modules = [f"tgbench.reporting.{p.stem}" for p in sorted(REPORTING.glob("*.py")) if p.stem != "__init__"]
    probe = ("import importlib, sys\n"
             f"for m in {modules!r}: importlib.import_module(m)\n"
             "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'optuna')\n"
             "      or m in ('tgbench.store', 'tgbench.engine', 'tgbench.cells', 'tgbench.provenance')\n"
             "      or m.startswith('tgbench.kinds'))))\n")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert loaded.stdout.split() == []

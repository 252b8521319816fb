"""tgbench as a new user gets it: a wheel built from this tree, installed on its own (``pip install --no-deps
--target``: torch and the other dependencies come from this environment, nothing is downloaded) and run from a
directory outside the checkout. It must carry the suites, find them by name, and report its own version.

The wheel is built from a copy of the sources, so the build leaves nothing in the checkout, and with a version
of its own (``SOURCE_VERSION`` rewritten in the copy), so ``--version`` proves which tgbench answered.
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WHEEL_VERSION = "0.1.0+wheeltest"
TIMEOUT = 300
pytestmark = pytest.mark.system   # builds a wheel and installs it with pip (`pytest -m system` runs it)


def _run(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    res = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 0, f"{args} exited {res.returncode}:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    return res


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict, Path]:
    """(site folder the wheel is installed into, an environment whose only tgbench is that one, the wheel)."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("tgbench", "methods"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)  # (the suites folder is copied as files)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    init = src / "tgbench" / "__init__.py"
    text = init.read_text()
    assert 'SOURCE_VERSION = "' in text
    init.write_text(text.replace(f'SOURCE_VERSION = "{__import__("tgbench").SOURCE_VERSION}"',
                                 f'SOURCE_VERSION = "{WHEEL_VERSION}"'))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TGBENCH_", "PYTHON"))}
    env["OMP_NUM_THREADS"] = "1"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)], tmp, env)
    wheels = list((tmp / "dist").glob("tgbench-*.whl"))
    assert len(wheels) == 1, wheels
    site = tmp / "site"
    _run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheels[0])], tmp, env)
    return site, {**env, "PYTHONPATH": str(site)}, wheels[0]


def test_the_wheel_carries_the_suites(installed):
    _, _, wheel = installed
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    shipped = sorted(p.name for p in (REPO / "suites").glob("*.yaml"))
    assert shipped and all(f"tgbench/suites/{name}" in names for name in shipped)
    assert "tgbench/methods/gtn.py" in names and "tgbench/__main__.py" in names


def test_installed_tgbench_works_outside_the_checkout(installed, tmp_path):
    site, env, _ = installed
    python = [sys.executable]
    where = _run([*python, "-c", "import tgbench; print(tgbench.__file__)"], tmp_path, env).stdout.strip()
    assert Path(where).resolve().is_relative_to(site.resolve()), where  # the wheel, not the checkout
    assert not Path(where).resolve().is_relative_to(REPO)

    version = _run([*python, "-m", "tgbench", "--version"], tmp_path, env).stdout.strip()
    assert version == f"tgbench {WHEEL_VERSION}"

    script = site / "bin" / "tgbench"
    listing = _run([*python, str(script), "list", "suites"], tmp_path, env).stdout
    assert [line.split()[0] for line in listing.splitlines()] == sorted(p.stem for p in (REPO / "suites").glob("*.yaml"))
    assert "INVALID" not in listing


@pytest.mark.slow
def test_installed_tgbench_runs_a_suite_by_name_with_an_override(installed, tmp_path):
    site, env, _ = installed
    cwd, store = tmp_path / "cwd", tmp_path / "store"
    cwd.mkdir()
    res = _run([sys.executable, str(site / "bin" / "tgbench"), "run", "mnist_fewstep", "--profile", "smoke",
                "--set", "outer.iterations=2", "--no-progress", "--storage", f"sqlite:///{store}/t.db",
                "--out", "out"], cwd, env)
    assert "report:" in res.stdout
    report = (cwd / "out" / "report.md").read_text()
    assert "- **overrides**: `--set outer.iterations=2`" in report
    with open(cwd / "out" / "summary.csv") as f:
        rows = {r["source"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["dataset_distillation", "gtn", "real", "real_sgd"]
    assert all(r["status"] == "complete" for r in rows.values())
    assert rows["gtn"]["outer_iterations"] == "2"  # the override, not the smoke profile's 4
    assert [p.name for p in cwd.iterdir()] == ["out"]  # the report where --out said, nothing else in the cwd

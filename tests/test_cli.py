"""The ``tgbench`` command line: listings, bad flags and bad inputs (exit 2, one stderr line, nothing written to
the store), the exit-code contract (0 ok, 2 bad input, 1 anything else, 130 interrupted).

In-process via ``tgbench.cli.main``; one test runs the installed script where its real exit code matters.
Every run passes ``--storage``/``--out`` under tmp_path so nothing lands in the repository's results/.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tgbench import cli
from tgbench.cli import main
from helpers import cli as _cli, studies as _studies

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "suites" / "mnist_fewstep.yaml"
SCRIPT = Path(sys.executable).with_name("tgbench")


@pytest.fixture(autouse=True)
def _no_env_storage(monkeypatch):
    for var in ("TGBENCH_STORAGE", "TGBENCH_ARTIFACTS", "TGBENCH_DEBUG"):
        monkeypatch.delenv(var, raising=False)


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got {len(lines)}:\n{err}"
    assert "Traceback" not in err
    assert lines[0].startswith("tgbench: error: ")
    return lines[0]


def _store_args(tmp_path: Path) -> list[str]:
    return ["--storage", f"sqlite:///{tmp_path}/t.db", "--out", str(tmp_path / "out")]


# ------------------------------------------------------------------------------------------ list
def _first_words(out: str) -> list[str]:
    return [line.split()[0] for line in out.splitlines() if line and not line[0].isspace()]


def test_list_methods(capsys):
    code, out, err = _cli(["list", "methods"], capsys)
    assert code == 0, err
    from tgbench.registry import methods

    # every registered name, sorted (other tests may have registered plug-ins in this process), built-ins included
    assert _first_words(out) == methods.names() == sorted(methods.names())
    assert {"dataset_distillation", "external", "gtn", "real"} <= set(_first_words(out))
    assert "curriculum = 'full'" in out  # each method's params and defaults are listed under it


def test_list_into_a_closed_pipe_is_quiet_and_exit_0():
    # `tgbench list methods | head -1`: the reader closes the pipe after one line
    res = subprocess.run(f"'{sys.executable}' -m tgbench.cli list methods | head -1", shell=True, text=True,
                         capture_output=True, timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert res.stdout.count("\n") == 1
    assert res.stderr == ""


def test_list_datasets(capsys):
    code, out, err = _cli(["list", "datasets"], capsys)
    assert code == 0, err
    names = [line.split()[0] for line in out.splitlines()]
    assert set(names) >= {"mnist", "mnist-5k", "fashion-mnist", "cifar10"}
    assert names == sorted(names)


def test_list_suites_lists_the_installed_suites_from_any_directory(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, out, err = _cli(["list", "suites"], capsys)
    assert code == 0, err
    shipped = sorted(p.stem for p in (REPO / "suites").glob("*.yaml"))
    assert "mnist_fewstep" in shipped
    assert [line.split()[0] for line in out.splitlines()] == shipped
    assert "INVALID" not in out


def test_list_suites_in_the_repository_lists_each_suite_once(capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # suites/ here is the installed folder: not listed a second time by path
    code, out, err = _cli(["list", "suites"], capsys)
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()] == sorted(p.stem for p in (REPO / "suites").glob("*.yaml"))


def test_shipped_suites_live_in_the_package_and_are_named_by_their_file():
    from tgbench.suite.loading import load_suite
    from tgbench.suite.names import INSTALLED_SUITES, installed_suites

    assert (REPO / "suites").resolve() == INSTALLED_SUITES == (REPO / "tgbench" / "suites").resolve()
    for name, path in installed_suites().items():
        assert load_suite(path).name == name  # `tgbench run NAME` makes the study NAME@profile


def test_list_suites_flags_an_invalid_suite(capsys, monkeypatch, tmp_path):
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "broken.yaml").write_text("name: x\nsources: [{method: gtm}]\n")
    monkeypatch.chdir(tmp_path)
    code, out, _ = _cli(["list", "suites"], capsys)
    assert code == 0
    assert "broken.yaml" in out and "INVALID" in out and "gtn" in out


def test_list_suites_flags_an_invalid_suite_after_the_installed_ones(capsys, monkeypatch, tmp_path):
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "mine.yaml").write_text("name: mine\nsources: [{method: real}]\n")
    monkeypatch.chdir(tmp_path)
    code, out, _ = _cli(["list", "suites"], capsys)
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()][-1] == "suites/mine.yaml"


def test_list_suites_exits_1_when_a_shipped_suite_does_not_load(capsys, monkeypatch, tmp_path):
    # what a wheel missing a subpackage looked like: every shipped suite INVALID, and `tgbench list` still exit 0
    import tgbench.suite.names

    broken = tmp_path / "broken.yaml"
    broken.write_text("name: broken\nsources: [{method: gtm}]\n")
    shipped = tgbench.suite.names.installed_suites()
    monkeypatch.setattr(tgbench.suite.names, "installed_suites", lambda: {**shipped, "broken": broken})
    monkeypatch.chdir(tmp_path)
    code, out, err = _cli(["list", "suites"], capsys)
    assert code == 1
    assert "broken" in out and "INVALID" in out and "mnist_fewstep" in out  # every suite is still listed
    assert _one_error_line(err).startswith("tgbench: error: 1 of the ")
    assert "(broken)" in err


# ------------------------------------------------------------------------------------------ suite names
def test_a_suite_name_works_from_any_directory(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, out, err = _cli(["validate", "mnist_fewstep"], capsys)
    assert code == 0, err
    assert out.startswith(f"{(REPO / 'tgbench' / 'suites' / 'mnist_fewstep.yaml').resolve()}: ok")


def test_a_path_wins_over_a_name(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mnist_fewstep").write_text("name: local_one\nsources: [{method: real}]\n")
    code, out, err = _cli(["validate", "mnist_fewstep"], capsys)
    assert code == 0, err
    assert out.startswith("mnist_fewstep: ok (fewstep, 1 sources")


@pytest.mark.parametrize("command", ["run", "report", "validate", "export"])
def test_an_unknown_suite_name_is_one_line_with_the_close_names(command, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    args = {"export": ["export", "--suite", "mnist_fewsteps", "--set", "outer.iterations=2", "--source", "gtn",
                       "--out", "t.pt"]}.get(command, [command, "mnist_fewsteps"])
    code, _, err = _cli(args, capsys)
    assert code == 2
    line = _one_error_line(err)
    assert "mnist_fewsteps" in line and "did you mean mnist_fewstep" in line
    assert not list(tmp_path.iterdir())


def test_a_missing_yaml_path_is_still_a_missing_file(capsys, tmp_path):
    code, _, err = _cli(["validate", str(tmp_path / "mnist_fewstep.yaml")], capsys)
    assert code == 2
    assert "no such suite file" in _one_error_line(err) and "installed" not in err


def test_a_name_and_its_path_give_the_same_pinned_cell_hashes():
    """Moving the suites into the package changed no experiment: these are the hashes of mnist_fewstep's cpu
    cells before the move (computed at revision f6cb88d), by name and by path alike. (The smoke profile itself
    was made cheaper in this round, so its hashes changed on purpose.)"""
    from tgbench.identity import cell_hash
    from tgbench.suite.loading import load_suite
    from tgbench.suite.names import resolve_suite

    pinned = ["931a714f52b41950", "abccf9987a559962", "cbe346051a3a22e8"]
    for ref in ("mnist_fewstep", str(SUITE)):
        suite = load_suite(resolve_suite(ref), "cpu")
        assert [cell_hash(suite, e, "mnist-5k") for e in suite.sources][:3] == pinned


# ------------------------------------------------------------------------------------------ version
def test_version_prints_the_installed_version(capsys):
    import tgbench

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"tgbench {tgbench.__version__}"


def test_version_falls_back_to_the_source_tree(monkeypatch):
    from importlib import metadata

    import tgbench

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert tgbench.installed_version() == tgbench.SOURCE_VERSION
    monkeypatch.setattr(metadata, "version", lambda name: "9.9.9")
    assert tgbench.installed_version() == "9.9.9"


def test_python_dash_m_tgbench(tmp_path):
    res = subprocess.run([sys.executable, "-m", "tgbench", "validate", "mnist_fewstep", "--set",
                          "outer.iterationz=3"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 2
    assert "--set outer.iterationz" in _one_error_line(res.stderr)


def test_unknown_list_target(capsys):
    code, _, err = _cli(["list", "gizmos"], capsys)
    assert code == 2
    assert "gizmos" in _one_error_line(err)


def test_no_command(capsys):
    code, _, err = _cli([], capsys)
    assert code == 2
    _one_error_line(err)


# ------------------------------------------------------------------------------------------ bad run input
def test_run_missing_suite_file(tmp_path, capsys):
    path = tmp_path / "missing.yaml"
    code, _, err = _cli(["run", str(path), "--profile", "smoke", *_store_args(tmp_path)], capsys)
    assert code == 2
    assert str(path) in _one_error_line(err)
    assert not (tmp_path / "t.db").exists()


def test_run_unknown_profile(tmp_path, capsys):
    code, _, err = _cli(["run", str(SUITE), "--profile", "nope", *_store_args(tmp_path)], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert "--profile" in line and "nope" in line
    assert not (tmp_path / "t.db").exists()


def test_run_profile_missing_from_suite(tmp_path, capsys):
    suite = tmp_path / "s.yaml"
    suite.write_text("name: t\nsources: [{method: real}]\nprofiles:\n  smoke: {}\n")
    code, _, err = _cli(["run", str(suite), "--profile", "paper", *_store_args(tmp_path)], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert str(suite) in line and "--profile" in line and "paper" in line
    assert not (tmp_path / "t.db").exists()


@pytest.mark.parametrize("seeds", ["0", "-1", "two"])
def test_run_bad_seeds(seeds, tmp_path, capsys):
    code, _, err = _cli(["run", str(SUITE), "--profile", "smoke", "--seeds", seeds, *_store_args(tmp_path)], capsys)
    assert code == 2
    assert "--seeds" in _one_error_line(err)
    assert not (tmp_path / "t.db").exists()


@pytest.mark.parametrize("command", ["run", "report"])
@pytest.mark.parametrize("seeds", ["1001", "100000000000"])
def test_absurd_seed_counts_are_refused_at_parsing(seeds, command, tmp_path, capsys, monkeypatch):
    """(--seeds 100000000000 used to build that many cells: a hang with growing memory)"""
    monkeypatch.setattr("tgbench.runner.run_suite", lambda *a, **k: pytest.fail("the suite ran"))
    monkeypatch.setattr("tgbench.runner.report_suite", lambda *a, **k: pytest.fail("the report ran"))
    code, _, err = _cli([command, str(SUITE), "--profile", "smoke", "--seeds", seeds, *_store_args(tmp_path)],
                        capsys)
    assert code == 2
    line = _one_error_line(err)
    assert "--seeds" in line and f"at most {cli.MAX_SEEDS}" in line and seeds in line
    assert not list(tmp_path.iterdir())


def test_seed_count_limit_is_inclusive():
    args = cli.build_parser().parse_args(["run", str(SUITE), "--seeds", str(cli.MAX_SEEDS)])
    assert args.seeds == cli.MAX_SEEDS == 1000


def test_run_bad_storage_scheme(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _cli(["run", str(SUITE), "--profile", "smoke", "--no-progress", "--storage", "notascheme://x",
                         "--out", str(tmp_path / "out")], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert "--storage" in line and "notascheme://x" in line
    assert not list(tmp_path.rglob("*.db"))
    assert not (tmp_path / "results").exists()


def test_run_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    out = blocker / "report"
    code, _, err = _cli(["run", str(SUITE), "--profile", "smoke", "--no-progress",
                         "--storage", f"sqlite:///{tmp_path}/t.db", "--out", str(out)], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert "--out" in line and str(out) in line
    assert not (tmp_path / "t.db").exists()
    assert _studies(tmp_path / "t.db") == []


def test_run_sqlite_path_under_a_file(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, _, err = _cli(["run", str(SUITE), "--profile", "smoke", "--no-progress",
                         "--storage", f"sqlite:///{blocker}/sub/t.db", "--out", str(tmp_path / "out")], capsys)
    assert code == 2
    assert "--storage" in _one_error_line(err)


def test_report_without_results(tmp_path, capsys):
    code, _, err = _cli(["report", str(SUITE), "--profile", "smoke", *_store_args(tmp_path)], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert "mnist_fewstep" in line and "run" in line
    assert _studies(tmp_path / "t.db") == []
    assert list(tmp_path.iterdir()) == []  # reading a store that is not there creates neither it nor the report dir


def test_installed_script_bad_run_flags(tmp_path):
    """The console script's own exit codes and single-line errors, nothing created in the store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGBENCH_")}
    for flags, needle in ((["--profile", "nope"], "--profile"), (["--seeds", "0"], "--seeds")):
        res = subprocess.run([str(SCRIPT), "run", str(SUITE), *flags, *_store_args(tmp_path)], capture_output=True,
                             text=True, env=env, cwd=tmp_path, timeout=120)
        assert res.returncode == 2, res.stderr
        assert needle in _one_error_line(res.stderr)
    res = subprocess.run([str(SCRIPT), "run", str(tmp_path / "missing.yaml"), "--profile", "smoke",
                          *_store_args(tmp_path)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert res.returncode == 2
    assert "missing.yaml" in _one_error_line(res.stderr)
    assert not (tmp_path / "t.db").exists()
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------------------------------ exit-code contract
def _boom(what):
    raise RuntimeError("boom\nsecond line")


def test_unexpected_error_is_one_line_and_exit_1(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_list", _boom)
    code, _, err = _cli(["list", "methods"], capsys)
    assert code == 1
    line = _one_error_line(err)
    assert line.startswith("tgbench: error: RuntimeError: boom")
    assert "TGBENCH_DEBUG=1" in line


def test_unexpected_error_propagates_under_debug(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_list", _boom)
    monkeypatch.setenv("TGBENCH_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        main(["list", "methods"])


def test_keyboard_interrupt_is_130(monkeypatch, capsys):
    def interrupt(what):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_list", interrupt)
    code, _, err = _cli(["list", "methods"], capsys)
    assert code == 130
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("tgbench: interrupted")

"""Reliability of inputs that validate as YAML but could not run, of output locations, and of the report files.

Everything a suite says is checked before the first cell starts: values no learner, optimiser or dataset can
take (Adam betas outside [0, 1), a 10**30-step unroll, ``conv_channels: abc`` in an evaluation or held-out
architecture, a batch larger than the training split) and output locations that cannot be written (a file
where ``--artifacts`` needs a directory) are exit 2 with one line naming the file and the key or flag, and
nothing is written to the store. Labels of any length give bounded, distinct file names, and a report that
fails half-way leaves the previous report untouched.

In-process through ``tgbench.cli.main`` on tmp storage, with tiny suites (seconds each when they run).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tgbench.kinds.fewstep import report
from tgbench.suite.schema import Suite
from tgbench.kinds.fewstep.report import ReportInputs, write_report
from helpers import cli as _cli, studies as _studies

TINY = """\
name: {name}
dataset: {{name: mnist-5k}}
learner: {learner}
inner: {inner}
outer: {outer}
evaluation: {evaluation}
sources:
{sources}
profiles:
  smoke: {smoke}
"""
DEFAULTS = {
    "name": "t",
    "learner": "{conv_channels: [[4]], fc_hidden: [[8]], batch_norm: false}",
    "inner": "{steps: 2, batch_size: 10}",
    "outer": "{iterations: 2, meta_batch_size: 16}",
    "evaluation": "{seeds: 1, eval_every: 1, eval_learners: 1, final_learners: 1, held_out: {}}",
    "sources": "  - method: real",
    "smoke": "{}",
}
EVAL = "seeds: 1, eval_every: 1, eval_learners: 1, final_learners: 1"
TRAIN = 3500  # examples in mnist-5k's training split


def _suite(**changes: str) -> str:
    return TINY.format(**{**DEFAULTS, **changes})


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for var in ("TGBENCH_STORAGE", "TGBENCH_ARTIFACTS", "TGBENCH_DEBUG", "TGBENCH_DATA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.cache/tgbench data from this machine
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(tmp_path: Path, capsys, text: str, *flags: str) -> tuple[int, str, str]:
    suite = tmp_path / "suite.yaml"
    suite.write_text(text)
    argv = ["run", str(suite), "--profile", "smoke", "--no-progress", "--out", str(tmp_path / "out")]
    if "--storage" not in flags:
        argv += ["--storage", f"sqlite:///{tmp_path}/t.db"]
    return _cli([*argv, *flags], capsys)


# ------------------------------------------------------------------------------------------ values that cannot run
# kind -> (suite text, extra CLI flags, fragments the one error line must hold). "{tmp}" in flags = tmp_path.
CANNOT_RUN = {
    "adam_betas_out_of_range": (_suite(outer="{iterations: 2, meta_batch_size: 16, betas: [2.0, -1.0]}"), [],
                                ["outer.betas[0]:", "less than 1"]),
    "adam_beta_of_one": (_suite(outer="{iterations: 2, meta_batch_size: 16, betas: [0.9, 1.0]}"), [],
                         ["outer.betas[1]:"]),
    "per_arm_adam_betas": (_suite(sources="  - {method: real, outer: {betas: [0.5, -0.1]}}"), [],
                           ["sources[0].outer.betas[1]:"]),
    "inner_steps_huge": (_suite(inner="{steps: 1000000000000000000000000000000, batch_size: 10}"), [],
                         ["inner.steps:", "less than or equal to"]),
    "learner_width_over_the_bound": (_suite(learner="{conv_channels: [[4]], fc_hidden: [[8193]]}"), [],
                                     ["learner.fc_hidden[0][0]:", "less than or equal to 8192"]),
    "architecture_channels_a_string": (_suite(evaluation=f"{{{EVAL}, architectures: [{{conv_channels: abc}}]}}"),
                                       [], ["evaluation.architectures[0].conv_channels:", "valid list"]),
    "architecture_channel_not_a_number": (_suite(evaluation=f"{{{EVAL}, architectures: [{{fc_hidden: [x]}}]}}"),
                                          [], ["evaluation.architectures[0].fc_hidden[0]:", "valid integer"]),
    "architecture_width_over_the_bound": (_suite(evaluation=f"{{{EVAL}, architectures: [{{fc_hidden: [8193]}}]}}"),
                                          [], ["evaluation.architectures[0].fc_hidden[0]:"]),
    "architecture_bad_activation": (_suite(evaluation=f"{{{EVAL}, architectures: [{{activation: sigmoid}}]}}"),
                                    [], ["evaluation.architectures[0].activation:"]),
    "held_out_channels_a_string": (_suite(evaluation=f"{{{EVAL}, held_out: {{wide: {{conv_channels: abc}}}}}}"),
                                   [], ["evaluation.held_out.wide.conv_channels:"]),
    "held_out_bad_kernel": (_suite(evaluation=f"{{{EVAL}, held_out: {{k: {{kernel_size: -3}}}}}}"), [],
                            ["evaluation.held_out.k.kernel_size:"]),
    "held_out_flag_not_a_bool": (_suite(evaluation=f"{{{EVAL}, held_out: {{r: {{residual: maybe}}}}}}"), [],
                                 ["evaluation.held_out.r.residual:"]),
    "inner_batch_larger_than_train": (_suite(inner=f"{{steps: 2, batch_size: {TRAIN + 1}}}"), [],
                                      ["inner.batch_size:", str(TRAIN + 1), f"{TRAIN} examples", "mnist-5k"]),
    "per_arm_inner_batch_larger_than_train": (_suite(sources=f"  - {{method: real, inner: {{batch_size: 5000}}}}"),
                                              [], ["sources[0].inner.batch_size:", "5000", f"{TRAIN} examples"]),
    "profile_inner_batch_larger_than_train": (_suite(smoke="{inner: {batch_size: 4000}}"), [],
                                              ["inner.batch_size:", "4000", "profile 'smoke'"]),
    "meta_batch_larger_than_train": (_suite(outer="{iterations: 2, meta_batch_size: 5000}"), [],
                                     ["outer.meta_batch_size:", "5000", f"{TRAIN} examples"]),
    "per_arm_meta_batch_larger_than_train": (_suite(sources="  - {method: gtn, params: {noise_dim: 4, fc_hidden: 8, "
                                                            "channels: [4, 4]}, outer: {meta_batch_size: 4000}}"),
                                             [], ["sources[0].outer.meta_batch_size:", "4000"]),
    "artifacts_is_a_file": (_suite(), ["--artifacts", "{tmp}/a_file"], ["--artifacts", "a_file", "not a directory"]),
    "artifacts_under_a_file": (_suite(), ["--artifacts", "{tmp}/a_file/artifacts"],
                               ["--artifacts", "cannot create", "a_file is not a directory"]),
    "default_artifacts_dir_is_a_file": (_suite(), ["--storage", "sqlite:///{tmp}/store/t.db"],
                                        ["--artifacts", "store/artifacts", "not a directory"]),
    "store_is_a_directory": (_suite(), ["--storage", "sqlite:///{tmp}/a_dir"], ["--storage", "a_dir", "directory"]),
}


@pytest.mark.parametrize("kind", list(CANNOT_RUN))
def test_what_cannot_run_is_refused_before_any_work(kind, tmp_path, capsys):
    text, flags, fragments = CANNOT_RUN[kind]
    (tmp_path / "a_file").write_text("a file where a directory is needed")
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "artifacts").write_text("a file where the default artifact directory goes")
    code, out, err = _run(tmp_path, capsys, text, *[f.format(tmp=tmp_path) for f in flags])

    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tgbench: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    if not flags:  # config problems name the suite file
        assert str(tmp_path / "suite.yaml") in lines[0]
    assert "cells" not in out  # no cell was ever scheduled
    assert not list(tmp_path.rglob("*.db")), "the store was created"
    assert _studies(tmp_path / "t.db") == []
    assert not (tmp_path / "out").exists() and not (tmp_path / "results").exists()


# Sizes no machine could run (on the code before these bounds some allocate tens of GB or loop for ever, so they
# are checked with `tgbench validate`, which runs nothing; `run` validates the same models first).
HUGE = {
    "outer_iterations": (dict(outer="{iterations: 1000000000000000000000, meta_batch_size: 16}"), "outer.iterations"),
    "conv_width": (dict(learner="{conv_channels: [[4, 10000000]], fc_hidden: [[8]]}"), "learner.conv_channels[0][1]"),
    "architecture_width": (dict(evaluation=f"{{{EVAL}, architectures: [{{conv_channels: [100000000]}}]}}"),
                           "evaluation.architectures[0].conv_channels[0]"),
    "held_out_width": (dict(evaluation=f"{{{EVAL}, held_out: {{big: {{fc_hidden: [100000000]}}}}}}"),
                       "evaluation.held_out.big.fc_hidden[0]"),
    "inner_batch": (dict(inner="{steps: 2, batch_size: 1000000000000000000000000000000}"), "inner.batch_size"),
    "meta_batch": (dict(outer="{iterations: 2, meta_batch_size: 1000000000000000000000000000000}"),
                   "outer.meta_batch_size"),
    "population": (dict(outer="{iterations: 2, meta_batch_size: 16, population: 1000000000}"), "outer.population"),
    "es_pairs": (dict(outer="{iterations: 2, meta_batch_size: 16, es_pairs: 1000000000}"), "outer.es_pairs"),
    "final_learners": (dict(evaluation="{seeds: 1, final_learners: 1000000000}"), "evaluation.final_learners"),
    "profile_inner_steps": (dict(smoke="{inner: {steps: 100000000}}"), "profiles.smoke.inner.steps"),
    "per_arm_iterations": (dict(sources="  - {method: real, outer: {iterations: 1000000000000}}"),
                           "sources[0].outer.iterations"),
}


@pytest.mark.parametrize("kind", list(HUGE))
def test_sizes_no_machine_could_run_fail_validation(kind, tmp_path, capsys):
    changes, key = HUGE[kind]
    suite = tmp_path / "suite.yaml"
    suite.write_text(_suite(**changes))
    code, _, err = _cli(["validate", str(suite)], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tgbench: error: {suite}: {key}: "), err
    assert "less than or equal to" in lines[0]


def test_a_batch_as_large_as_the_training_split_is_accepted(tmp_path):
    """The size check is not off by one: B = the number of training examples is allowed."""
    from tgbench.suite.checks import check_data_sizes
    from tgbench.suite.loading import load_suite

    path = tmp_path / "suite.yaml"
    path.write_text(_suite(inner=f"{{steps: 2, batch_size: {TRAIN}}}", outer=f"{{iterations: 2, meta_batch_size: "
                                                                             f"{TRAIN}}}"))
    check_data_sizes(path, load_suite(path, "smoke"), TRAIN, "mnist-5k", "smoke")


def test_valid_architectures_validate_to_the_same_plain_dicts():
    """Typed architecture entries stay plain dicts of the keys given: stored configs (and cell hashes) do not
    change, and learner specs build from them."""
    arch = [{"fc_hidden": [8]}, {"conv_channels": [], "activation": "tanh", "residual": False}]
    held = {"mlp": {"conv_channels": [], "fc_hidden": [16]}}
    suite = Suite.model_validate({"name": "t", "sources": [{"method": "real"}],
                                  "learner": {"conv_channels": [[4]], "fc_hidden": [[8]]},
                                  "evaluation": {"architectures": arch, "held_out": held}})
    dumped = suite.model_dump(mode="json")["evaluation"]
    assert dumped["architectures"] == arch and dumped["held_out"] == held
    specs = suite.evaluation.learner_specs(suite.learner, None)
    assert [s.fc_hidden for s in specs] == [(8,), (8,)] and specs[1].conv_channels == ()
    assert suite.evaluation.held_out_specs(suite.learner, None)["mlp"].fc_hidden == (16,)


# ------------------------------------------------------------------------------------------ file names from labels
def test_a_very_long_label_runs_and_its_report_is_written(tmp_path, capsys):
    label = "x" * 200   # the longest a label may be (tgbench.locations.LABEL_LIMIT; longer is exit 2 at load)
    code, _, err = _run(tmp_path, capsys, _suite(sources=f"  - method: real\n    label: {label}"))
    assert code == 0, err[-2000:]
    out = tmp_path / "out"
    samples = list(out.glob("samples_*.png"))
    assert len(samples) == 1 and len(samples[0].name) <= 120
    md = (out / "report.md").read_text(encoding="utf-8")
    assert label in md and f"({samples[0].name})" in md
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name], "a staging directory was left behind"


def _inputs(sources: list[str], acc: float = 0.9) -> ReportInputs:
    rows = [dict(source=s, method="real", variant="default", seed=seed, status="complete", dataset_resolved="mnist",
                 test_acc_final=acc + 0.01 * seed, val_acc_final=acc, meta_train_seconds=1.0, outer_iterations=2)
            for s in sources for seed in range(2)]
    empty_curves = pd.DataFrame(columns=["source", "seed", "outer_iter", "val_acc", "test_acc"])
    empty_steps = pd.DataFrame(columns=["source", "seed", "inner_step", "test_acc", "val_acc"])
    rng = np.random.default_rng(0)
    samples = {s: rng.random((1, 2, 1, 4, 4)) for s in sources}
    return ReportInputs(pd.DataFrame(rows), empty_curves, empty_steps, samples, {s: [0] for s in sources},
                        {"suite": "t", "profile": "smoke", "created": "2025-01-01T00:00:00"})


def test_labels_give_bounded_distinct_sample_file_names(tmp_path):
    sources = ["a b", "a_b", "A_B", "y" * 5000, "y" * 4999 + "z", "gtn", "gtn[steps=8]"]
    paths = write_report(tmp_path / "out", _inputs(sources))
    pngs = sorted(p.name for p in paths if p.suffix == ".png")
    assert len(pngs) == len(sources) == len({n.lower() for n in pngs})  # distinct, even case-insensitively
    assert all(len(n) <= 120 for n in pngs)
    assert {"samples_gtn.png", "samples_gtn_steps_8_.png"} <= set(pngs)  # unambiguous names are as before
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert all(f"({n})" in md for n in pngs)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == pngs


# ------------------------------------------------------------------------------------------ atomic reports
def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_report_that_fails_half_way_leaves_the_previous_one_untouched(tmp_path):
    out = tmp_path / "results" / "out"
    write_report(out, _inputs(["real", "gtn"]))
    (out / "run.log").write_text("the log of the run that made this report")
    before = _contents(out)

    broken = _inputs(["real", "gtn", "zzz"], acc=0.5)  # new numbers: every CSV and report.md would change
    broken.samples["zzz"] = np.zeros((2, 2))             # ... but the last figure cannot be drawn
    with pytest.raises(ValueError, match="must be"):
        write_report(out, broken)
    assert _contents(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"], "a staging directory was left behind"

    paths = write_report(out, _inputs(["real", "gtn"], acc=0.5))  # a good report replaces it, file by file
    after = _contents(out)
    assert after["run.log"] == before["run.log"]  # files that are not the report's are kept
    assert after["summary.csv"] != before["summary.csv"] and after["report.md"] != before["report.md"]
    assert [p.parent for p in paths] == [out] * len(paths) and all(p.is_file() for p in paths)
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]


def test_a_report_replaces_the_files_it_writes_and_nothing_else(tmp_path):
    out = tmp_path / "out"
    first = write_report(out, _inputs(["real"]))
    second = write_report(out, _inputs(["real"]))
    assert [p.name for p in first] == [p.name for p in second]
    assert (out / "report.md").read_text(encoding="utf-8") == report.render_markdown(
        _inputs(["real"]), ["samples_real.png"])
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]


def test_report_of_a_store_left_by_a_killed_run_lists_the_interrupted_cell(tmp_path, capsys):
    """A cell whose claim was marked failed before its record was written (Ctrl-C, SIGTERM, a crash) has only
    its cell key: ``tgbench report`` still works (it was a KeyError 'source', exit 1) and counts it failed."""
    from tgbench.suite.loading import load_suite
    from tgbench.identity import cell_hash
    from tgbench.records import FewstepCell, Status, cell_key
    from tgbench.store import Store

    suite_path = tmp_path / "suite.yaml"
    suite_path.write_text(_suite(evaluation="{seeds: 2, eval_every: 1, eval_learners: 1, final_learners: 1, "
                                            "held_out: {}}"))
    assert _run(tmp_path, capsys, suite_path.read_text(), "--seeds", "1")[0] == 0
    suite = load_suite(suite_path, "smoke")
    store = Store(f"sqlite:///{tmp_path}/t.db")
    study = store.study("t@smoke", create=False)
    key, chash = cell_key("real", 1), cell_hash(suite, suite.sources[0], "mnist-5k")
    trial = store.claim(study, key, chash)
    store.finish(study, trial, FewstepCell(cell=key, config_hash=chash, status=Status.FAILED,
                                           error="KeyboardInterrupt: "))
    code, _, err = _cli(["report", str(suite_path), "--profile", "smoke", "--storage", f"sqlite:///{tmp_path}/t.db",
                         "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    summary = pd.read_csv(tmp_path / "r" / "summary.csv")
    assert sorted(zip(summary["seed"], summary["status"])) == [(0, "complete"), (1, "failed")]


def test_a_store_file_of_another_application_is_refused_untouched(tmp_path, capsys):
    """An SQLite file with someone else's tables (or a file that is not SQLite) is exit 2 naming it, before any
    work, and is left byte for byte as it was; an existing tgbench store still opens."""
    import sqlite3

    foreign = tmp_path / "notes.db"
    with sqlite3.connect(foreign) as con:
        con.execute("create table notes (id integer primary key, text)")
        con.execute("insert into notes (text) values ('mine')")
    before = foreign.read_bytes()
    not_sqlite = tmp_path / "text.db"
    not_sqlite.write_text("just some text, not a database\n" * 10)
    for path, fragment in ((foreign, "another application's tables (notes)"), (not_sqlite, "not an SQLite database")):
        code, _, err = _run(tmp_path, capsys, _suite(), "--storage", f"sqlite:///{path}")
        assert code == 2, err
        [line] = err.strip().splitlines()
        assert str(path) in line and fragment in line, line
    assert foreign.read_bytes() == before
    assert _run(tmp_path, capsys, _suite())[0] == 0   # a fresh store, then the same store again
    assert _run(tmp_path, capsys, _suite())[0] == 0

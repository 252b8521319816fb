"""``--set KEY=VALUE`` overrides (tgbench.config.load_suite / apply_overrides): applied after the profile, YAML-typed,
validated by the suite's own models with one-line errors naming the ``--set`` key and the file (exit 2), part of
the cells' config hashes exactly as the same value written in the file would be, carried into each cell's
(re)loaded suite, and recorded in the report header.
"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tgbench.identity import cell_hash
from tgbench.suite.loading import load_suite
from tgbench.errors import BadInput, ConfigError
from tgbench.reporting.markdown import header_lines
from tgbench.store import Store
from helpers import cli as _cli

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "suites" / "mnist_fewstep.yaml"


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got {len(lines)}:\n{err}"
    assert lines[0].startswith("tgbench: error: ") and "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------------------------------ what a key sets
def test_an_override_wins_over_the_profile_and_only_when_given():
    plain, smoke = load_suite(SHIPPED), load_suite(SHIPPED, "smoke")
    over = load_suite(SHIPPED, "smoke", ["outer.iterations=50", "sources.gtn.params.noise_dim=64"])
    assert smoke.outer.iterations == 4 and plain.outer.iterations == 2000   # the file's values
    assert over.outer.iterations == 50
    gtn = next(e for e in over.sources if e.name == "gtn")
    assert gtn.params["noise_dim"] == 64
    # every other setting of the smoke profile (its own gtn params included) is kept
    assert gtn.params["channels"] == [16, 8] and over.inner.steps == smoke.inner.steps == 4
    assert over.outer.lr == smoke.outer.lr
    assert over.overrides == ("outer.iterations=50", "sources.gtn.params.noise_dim=64")
    assert smoke.overrides == () and load_suite(SHIPPED, "smoke").outer.iterations == 4  # nothing leaks


def test_the_same_key_means_the_same_setting_in_every_profile():
    for profile in ("smoke", "cpu", "paper"):
        assert load_suite(SHIPPED, profile, ["evaluation.seeds=7"]).evaluation.seeds == 7
    assert load_suite(SHIPPED, None, ["evaluation.seeds=7"]).evaluation.seeds == 7   # the base suite too


def test_values_are_yaml_typed():
    suite = load_suite(SHIPPED, "smoke", ["inner.learn_lr=false", "outer.betas=[0.8, 0.95]", "dataset.fallback=null",
                                          "outer.grad_clip=1.5", "description=a b c"])
    assert suite.inner.learn_lr is False
    assert suite.outer.betas == (0.8, 0.95)
    assert suite.dataset.fallback is None
    assert suite.outer.grad_clip == 1.5   # a known key the file does not write is set, not refused
    assert suite.description == "a b c"


def test_list_items_by_label_or_index_and_dotted_mapping_keys():
    suite = load_suite(SHIPPED, "smoke", ["sources.real_sgd.inner.lr=0.3", "sources.2.params.init_scale=0.7",
                                          "tuning.space.inner.lr.high=0.3"])
    by_name = {e.name: e for e in suite.sources}
    assert by_name["real_sgd"].inner["lr"] == 0.3
    assert suite.sources[2].name == "dataset_distillation" and suite.sources[2].params["init_scale"] == 0.7
    assert suite.tuning.space["inner.lr"].high == 0.3


def test_a_yaml_anchor_is_not_set_everywhere_it_is_used():
    # the file writes dataset_distillation's tune_space as `<<: *meta_space`: one shared object after loading
    suite = load_suite(SHIPPED, "smoke", ["tuning.space.inner.lr.high=0.3"])
    dd = next(e for e in suite.sources if e.name == "dataset_distillation")
    assert suite.tuning.space["inner.lr"].high == 0.3
    assert dd.tune_space["inner.lr"].high == 0.5


# ------------------------------------------------------------------------------------------ hashes
def test_an_override_is_the_same_experiment_as_the_edited_file(tmp_path):
    """The hash covers the resolved values, not how they were given: --set outer.iterations=2 over the smoke
    profile hashes like a copy of the file whose smoke profile says 2; without --set the hashes are the file's."""
    text = SHIPPED.read_text()
    edited = text.replace("outer: {iterations: 4, lr: 0.01, meta_batch_size: 64}",
                          "outer: {iterations: 2, lr: 0.01, meta_batch_size: 64}")
    assert edited != text
    (tmp_path / "edited.yaml").write_text(edited)

    def hashes(suite):
        return [cell_hash(suite, e, "mnist-5k") for e in suite.sources]

    over = hashes(load_suite(SHIPPED, "smoke", ["outer.iterations=2"]))
    assert over == hashes(load_suite(tmp_path / "edited.yaml", "smoke"))
    plain = hashes(load_suite(SHIPPED, "smoke"))
    assert not set(over) & set(plain)  # the suite's outer loop is part of every arm's protocol


# ------------------------------------------------------------------------------------------ bad overrides
BAD = {
    # id: (--set arguments, the key the error must name, substrings the one error line must hold besides it)
    "unknown_key": (["outer.iteratons=3"], "outer.iteratons", ["did you mean 'iterations'"]),
    "unknown_top_key": (["epochs=3"], "epochs", ["unknown key 'epochs'"]),
    "unknown_param": (["sources.gtn.params.nois_dim=6"], "sources.gtn.params.nois_dim", ["'noise_dim'"]),
    "unknown_arm_setting": (["sources.gtn.outer.iteratons=3"], "sources.gtn.outer.iteratons", ["'iterations'"]),
    "unknown_source": (["sources.gtm.params.noise_dim=6"], "sources.gtm.params.noise_dim", ["'gtn'"]),
    "bad_index": (["sources.9.params.noise_dim=6"], "sources.9.params.noise_dim", ["index 0-3"]),
    "negative": (["outer.iterations=-1"], "outer.iterations", ["greater than 0"]),
    "boolean_for_a_number": (["inner.steps=yes"], "inner.steps", ["boolean"]),
    "wrong_type": (["sources.gtn.params.noise_dim=big"], "sources.gtn.params.noise_dim", ["integer"]),
    "unknown_dataset": (["dataset.name=mnistt"], "dataset.name", ["did you mean 'mnist'"]),
    # three keys: the error (at `outer`, its population/checkpointing check) names an outer key, not inner.steps
    "incompatible": (["inner.steps=4", "outer.checkpoint_every=2", "outer.population=4"], "outer.",
                     ["population > 1"]),
    "into_a_value": (["inner.steps.x=3"], "inner.steps.x", ["is a value"]),
    "an_unset_section": (["sweep.key=inner.steps"], "sweep.key", ["no 'sweep' section"]),
    "a_profile": (["profiles.smoke.outer.iterations=3"], "profiles.smoke.outer.iterations", ["cannot be set"]),
    "bad_yaml": (["outer.iterations=[1"], "outer.iterations", ["not valid YAML"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_override_is_one_line_naming_the_key_and_exit_2(case, command, tmp_path, capsys):
    sets, key, needles = BAD[case]
    args = [a for s in sets for a in ("--set", s)]
    extra = ["--profile", "smoke", "--storage", f"sqlite:///{tmp_path}/t.db", "--out", str(tmp_path / "o")] \
        if command == "run" else []
    code, _, err = _cli([command, str(SHIPPED), *args, *extra], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert f"--set {key}" in line, line
    assert "--set inner.steps" not in line or key.startswith("inner.steps"), line  # not an innocent key
    assert str(SHIPPED) in line, line
    for needle in needles:
        assert needle in line, line
    assert not list(tmp_path.iterdir())  # nothing ran, nothing was created


def test_a_key_without_a_value_is_refused(capsys):
    code, _, err = _cli(["validate", str(SHIPPED), "--set", "outer.iterations"], capsys)
    assert code == 2
    assert "--set 'outer.iterations'" in _one_error_line(err) and "KEY=VALUE" in err


def test_the_files_own_error_is_not_blamed_on_an_override(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\nouter: {iteratons: 3}\nsources: [{method: real}]\n")
    with pytest.raises(ConfigError) as exc:
        load_suite(bad, None, ["inner.steps=4"])
    assert "--set" not in str(exc.value) and "outer.iteratons" in str(exc.value)


def test_overrides_apply_to_the_chosen_profile_and_validate_checks_every_one(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: t\nsources: [{method: real}, {method: gtn}]\n"
                    "profiles:\n  smoke:\n    sources: [{method: real}]\n  cpu: {}\n")
    assert load_suite(path, "cpu", ["sources.gtn.params.noise_dim=8"]).sources[1].params == {"noise_dim": 8}
    for profile in ("smoke", None):  # the profile that has no gtn arm is named
        with pytest.raises(BadInput, match=r"s.yaml: --set sources.gtn.params.noise_dim: sources has no entry "
                                           r"'gtn'.*\(profile 'smoke'\)"):
            load_suite(path, profile, ["sources.gtn.params.noise_dim=8"])


# ------------------------------------------------------------------------------------------ runs and reports
TINY = """
name: tiny_overrides
dataset: {name: mnist-5k}
learner: {conv_channels: [[4]], fc_hidden: [[8]]}
inner: {steps: 2, batch_size: 8}
outer: {iterations: 3, meta_batch_size: 16}
evaluation: {seeds: 1, eval_every: 1, eval_learners: 1, final_learners: 1, held_out: {}}
sources: [{method: real}]
profiles: {smoke: {}}
"""


@pytest.mark.usefixtures("single_thread")
def test_a_run_with_overrides_trains_reports_and_records_them(tmp_path, capsys):
    """The cell (which reloads its suite from the file) trains with the override, its stored hash is the
    overridden suite's, the report header says --set, and a report without --set does not take those cells."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    store = ["--storage", f"sqlite:///{tmp_path}/t.db"]
    code, out, err = _cli(["run", str(path), "--profile", "smoke", "--no-progress", *store, "--out",
                           str(tmp_path / "out"), "--set", "outer.iterations=1"], capsys)
    assert code == 0, err
    with open(tmp_path / "out" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["source"], r["status"], r["outer_iterations"]) for r in rows] == [("real", "complete", "1")]
    suite = load_suite(path, "smoke", ["outer.iterations=1"])
    st = Store(f"sqlite:///{tmp_path}/t.db")
    records = st.records(st.study("tiny_overrides@smoke", create=False))
    assert [r.config_hash for r in records] == [cell_hash(suite, suite.sources[0], "mnist-5k")]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "- **overrides**: `--set outer.iterations=1`" in report
    # the same cells again with the same --set; without it they are another experiment
    code, _, err = _cli(["report", str(path), "--profile", "smoke", *store, "--out", str(tmp_path / "again"),
                         "--set", "outer.iterations=1"], capsys)
    assert code == 0, err
    code, _, err = _cli(["report", str(path), "--profile", "smoke", *store, "--out", str(tmp_path / "plain")],
                        capsys)
    assert code == 2 and "no results" in _one_error_line(err)


def test_the_report_header_has_an_overrides_line_only_when_there_are_overrides():
    meta = {"suite": "s", "profile": "smoke", "command": "tgbench run s"}
    assert not any("overrides" in line for line in header_lines({**meta, "overrides": ()}))
    lines = header_lines({**meta, "overrides": ("outer.iterations=2", "inner.steps=4")})
    assert "- **overrides**: `--set outer.iterations=2`, `--set inner.steps=4`" in lines
    assert sum("overrides" in line for line in lines) == 1   # not repeated among the extra keys

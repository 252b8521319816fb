"""A saved meta-training state's path is built by the one safe-name function (issue 27): ``Store.saved_state_path``
had its own ``re.sub``, which knew nothing of the length bound, of names that start with a dot (a hidden folder
``.._cpu``) or of the under-its-folder check the other user-derived paths get; ``safe_name`` now replaces each odd
character (not each run of them) as that ``re.sub`` did. Plain names must keep the file
names they always had: a long run resumes from them."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from tgbench.locations import NAME_LIMIT, safe_name
from tgbench.store import Store


@pytest.fixture
def store(tmp_path):
    return Store(f"sqlite:///{tmp_path}/s.db", tmp_path / "artifacts")


@pytest.mark.parametrize("study, cell, expected_folder, expected_file", [
    ("gtn_cpu@cpu", "gtn_cpu|seed=0", "gtn_cpu_cpu", "gtn_cpu_seed_0-0123abcd.pt"),
    ("mnist_fewstep@smoke", "gtn|seed=12", "mnist_fewstep_smoke", "gtn_seed_12-0123abcd.pt"),
    ("metagrad_stability@paper", "backprop_wn[steps=16]|seed=2", "metagrad_stability_paper",
     "backprop_wn_steps_16__seed_2-0123abcd.pt"),
    ("a suite@cpu", "real sgd|seed=0", "a_suite_cpu", "real_sgd_seed_0-0123abcd.pt"),
])
def test_plain_names_keep_the_file_names_a_running_experiment_resumes_from(store, tmp_path, study, cell,
                                                                          expected_folder, expected_file):
    path = store.saved_state_path(SimpleNamespace(study_name=study), cell, "0123abcd")
    assert path == tmp_path / "artifacts" / "saved_states" / expected_folder / expected_file


def test_odd_names_go_through_the_one_safe_name_function(store, tmp_path):
    study, cell = "..@cpu", ".é ü|seed=0"   # (a name that starts with a dot: a hidden folder before)
    path = store.saved_state_path(SimpleNamespace(study_name=study), cell, "0123abcd")
    assert path == tmp_path / "artifacts" / "saved_states" / safe_name(study) / f"{safe_name(cell)}-0123abcd.pt"
    assert path.parent.name == "_.._cpu" and path.name == "_.____seed_0-0123abcd.pt"


def test_a_long_label_gives_a_bounded_file_name_under_its_folder(store, tmp_path):
    study, cell = "s" * 200 + "@cpu", "x" * 200 + "|seed=0"
    path = store.saved_state_path(SimpleNamespace(study_name=study), cell, "0123abcd")
    root = tmp_path / "artifacts" / "saved_states"
    assert path.parent.parent == root and len(path.parent.name) <= NAME_LIMIT + 11
    assert len(path.name) <= NAME_LIMIT + 11 + len("-0123abcd.pt")

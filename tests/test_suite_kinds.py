"""Suite kinds as plug-ins (tgbench.kinds): the worked example of docs/adding_a_suite_kind.md runs as documented
(extracted from the page, so the walkthrough cannot drift), a kind's section is typed and belongs to its suites
alone, and the built-in kinds are registered the same way a plug-in is."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from helpers import cli
from tgbench.suite.by_kind import suite_model
from tgbench.suite.loading import load_suite
from tgbench.data import load_dataset
from tgbench.errors import ConfigError
from tgbench.kinds import SuiteKind
from tgbench.registry import PLUGIN_DECLARATIONS, load_plugin_dir, suite_kinds

REPO = Path(__file__).parents[1]
DOC = REPO / "docs" / "adding_a_suite_kind.md"


def doc_block(lang: str, contains: str) -> str:
    blocks = re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)
    return next(b for b in blocks if contains in b)


PLUGIN = doc_block("python", "SUITE_KINDS = {")
SUITE = doc_block("yaml", "kind: data_audit")
COMMANDS = [line.split("#")[0].split() for line in doc_block("bash", "tgbench run mnist_audit").splitlines()]


@pytest.fixture
def clean_registries():
    """Plugins registered in-process must not leak into other tests."""
    before = {registry: set(registry.names()) for registry in PLUGIN_DECLARATIONS.values()}
    yield
    for registry, names in before.items():
        for name in set(registry.names()) - names:
            registry.unregister(name)


@pytest.fixture
def audit_dir(tmp_path, monkeypatch, clean_registries):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "data_audit.py").write_text(PLUGIN)
    (tmp_path / "mnist_audit.yaml").write_text(SUITE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def repeated_test_images(dataset) -> int:
    """Test images whose pixels equal some training image's, counted another way than the example does."""
    train = dataset.train.x.flatten(1)
    test = dataset.test.x.flatten(1)
    _, inverse = torch.unique(torch.cat([train, test]), dim=0, return_inverse=True)
    seen_in_train = set(inverse[:len(train)].tolist())
    return sum(i in seen_in_train for i in inverse[len(train):].tolist())


def test_the_documented_kind_validates_and_runs_as_the_page_says(audit_dir, capsys):
    assert [c[:2] for c in COMMANDS] == [["tgbench", "validate"], ["tgbench", "run"]]
    code, out, err = cli(COMMANDS[0][1:], capsys)
    assert code == 0 and "ok (data_audit, 1 sources" in out, err
    code, out, err = cli(["list", "kinds", "--methods-dir", "plugins"], capsys)
    assert code == 0 and re.search(r"^data_audit\s+`audit:`\s+split sizes", out, flags=re.M), out
    assert {"fewstep", "tune", "nas_proxy"} <= {line.split()[0] for line in out.splitlines()}

    code, out, err = cli(COMMANDS[1][1:], capsys)
    assert code == 0, err
    report = (audit_dir / "audit" / "report.md").read_text()
    expected = repeated_test_images(load_dataset("mnist-5k"))
    assert f"Test images that are also training images: **{expected}**" in report
    assert ("pass" if expected == 0 else "FAIL") in report
    rows = (audit_dir / "audit" / "audit.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["split", "train", "val", "test"]
    assert rows[1].split(",")[1] == str(len(load_dataset("mnist-5k").train))


def test_a_kinds_section_is_typed_and_checked_by_its_validate(audit_dir, capsys):
    bad_key = SUITE.replace("max_duplicates: 0", "max_duplicate: 0")
    (audit_dir / "typo.yaml").write_text(bad_key)
    code, out, err = cli(["validate", "typo.yaml", "--methods-dir", "plugins"], capsys)
    assert code == 2 and "typo.yaml: audit.max_duplicate: unknown key (did you mean 'max_duplicates'?)" in err
    assert len(err.strip().splitlines()) == 1

    bad_split = SUITE.replace("splits: [train, val, test]", "splits: [train, tset]")
    (audit_dir / "split.yaml").write_text(bad_split)
    code, out, err = cli(["validate", "split.yaml", "--methods-dir", "plugins"], capsys)
    assert code == 2 and "split.yaml: audit.splits[1]: 'tset' is not a split" in err

    load_plugin_dir(audit_dir / "plugins")
    suite = load_suite(audit_dir / "mnist_audit.yaml")
    assert isinstance(suite, suite_model("data_audit")) and suite.audit.max_duplicates == 0
    assert "audit" in suite.model_dump()   # (stored with the suite, like tune: and nas:)


def test_a_kinds_section_belongs_to_its_suites_alone(audit_dir):
    load_plugin_dir(audit_dir / "plugins")
    fewstep = yaml.safe_load(SUITE)
    fewstep["kind"] = "fewstep"
    (audit_dir / "fewstep.yaml").write_text(yaml.safe_dump(fewstep))
    with pytest.raises(ConfigError, match="only data_audit suites may have one"):
        load_suite(audit_dir / "fewstep.yaml")
    del fewstep["kind"], fewstep["audit"]
    fewstep["kind"] = "data_audit"
    (audit_dir / "missing.yaml").write_text(yaml.safe_dump(fewstep))
    with pytest.raises(ConfigError, match="a data_audit suite needs a `audit:` section"):
        load_suite(audit_dir / "missing.yaml")


def test_an_unknown_kind_is_one_line_with_the_close_name(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text("name: s\nkind: few_step\nsources: [{method: real}]\n")
    code, out, err = cli(["validate", str(tmp_path / "s.yaml")], capsys)
    assert code == 2 and "s.yaml: kind: unknown suite kind 'few_step' (did you mean 'fewstep'?)" in err


def test_the_builtin_kinds_are_one_module_each_in_tgbench_kinds():
    for name in ("fewstep", "tune", "nas_proxy"):
        kind = suite_kinds.get(name)
        assert isinstance(kind, SuiteKind)
        assert kind.run.__module__ == kind.report.__module__ == f"tgbench.kinds.{name}.run"   # the kind is its folder
    assert suite_kinds.get("fewstep").section is None
    assert (suite_kinds.get("tune").section, suite_kinds.get("nas_proxy").section) == ("tune", "nas")


def test_a_registered_kind_must_be_a_suite_kind(clean_registries):
    suite_kinds.register("not_a_kind", {"run": print})
    with pytest.raises(Exception, match="not a SuiteKind"):
        suite_kinds.get("not_a_kind")


def kind_name_comparisons(source: str) -> list[int]:
    """Lines of ``source`` that compare something with a built-in suite kind's name (``if kind == "tune"``)."""
    import ast

    names = {"fewstep", "tune", "nas_proxy"}
    return [node.lineno for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Compare)
            and any(isinstance(c, ast.Constant) and c.value in names for c in [node.left, *node.comparators])]


def test_no_module_switches_on_a_suite_kinds_name():
    found = {str(p.relative_to(REPO)): lines for p in sorted((REPO / "tgbench").rglob("*.py"))
             if (lines := kind_name_comparisons(p.read_text()))}
    assert found == {}
    assert kind_name_comparisons('if suite.kind == "tune":\n    pass\n') == [1]   # (the check can fail)

"""Every shipped suite's smoke profile runs end to end (CI runs these): meta-training, evaluation, store, report.

``mnist_fewstep`` smoke is exercised by tests/test_store.py; here the curriculum suite runs on the embedded
digits and the CIFAR-10 suite on a tiny CIFAR-format dataset generated into tmp (read by torchvision's loader).
"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tgbench.cli import main
from test_data import make_cifar_dataset

REPO = Path(__file__).resolve().parents[1]


def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _run(suite: str, tmp: Path, *extra: str) -> int:
    return main(["run", str(REPO / "suites" / suite), "--profile", "smoke", "--no-progress",
                 "--storage", f"sqlite:///{tmp}/t.db", "--out", str(tmp / "out"), *extra])


@pytest.mark.slow
def test_mnist_curriculum_smoke(tmp_path):
    assert _run("mnist_curriculum.yaml", tmp_path) == 0
    rows = _rows(tmp_path / "out" / "summary.csv")
    assert sorted(r["source"] for r in rows) == ["gtn_all_shuffled", "gtn_full", "gtn_none", "gtn_shuffled_batch"]
    assert all(r["status"] == "complete" and r["dataset_resolved"] == "mnist-5k" for r in rows)
    for name in ("report.md", "curves.png", "inner_steps.png", "samples_gtn_full.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_cifar10_smoke_on_generated_files(tmp_path):
    make_cifar_dataset(tmp_path / "data", per_batch=20, n_test=30)
    assert _run("cifar10_fewstep.yaml", tmp_path, "--data-root", str(tmp_path / "data")) == 0
    rows = _rows(tmp_path / "out" / "summary.csv")
    assert sorted(r["source"] for r in rows) == ["gtn", "real"]
    assert all(r["status"] == "complete" and r["dataset_resolved"] == "cifar10" for r in rows)
    assert (tmp_path / "out" / "samples_gtn.png").stat().st_size > 0


def test_cifar10_without_data_is_bad_input(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TGBENCH_DATA", raising=False)
    assert _run("cifar10_fewstep.yaml", tmp_path, "--data-root", str(tmp_path / "empty")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cifar10" in err[0] and str(tmp_path / "empty") in err[0]

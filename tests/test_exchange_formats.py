"""The field's exchange layouts (issue 26): ``tgbench export`` writes DD-Ranking's folder (``images.pt``,
``labels.pt``, ``lr.pt``) and DC-BENCH's file (``{'data': [(images, labels)]}``) or folder (``images_best.pt``,
``labels_best.pt``); the files load with the plain ``torch.load(..., weights_only=True)`` calls those projects
make, and the ``external`` source reads each back (detected, or named with ``format:``) to the same lessons."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
import yaml

from tgbench.builders import build_teacher
from tgbench.suite.loading import load_suite
from tgbench.data import load_dataset
from tgbench.methods.external import as_probabilities, detect_format

from helpers import cli

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {"dataset": {"name": "mnist-5k"}, "learner": {"conv_channels": [[2]], "fc_hidden": [[4]]},
        "inner": {"steps": 3, "batch_size": 8}, "outer": {"iterations": 1, "meta_batch_size": 8},
        "evaluation": {"seeds": 1, "eval_every": 1, "eval_learners": 1, "final_learners": 1},
        "profiles": {"smoke": {}}}
GTN = {"method": "gtn", "params": {"curriculum": "full", "noise_dim": 4, "fc_hidden": 8, "channels": [4, 2]}}


def write_suite(path: Path, name: str, sources: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"name": name, "kind": "fewstep", **TINY, "sources": sources}))
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One tiny GTN run, exported in every layout: (tmp dir, {layout: path})."""
    tmp = tmp_path_factory.mktemp("formats")
    suite = write_suite(tmp / "formats.yaml", "formats", [GTN])
    url = f"sqlite:///{tmp}/s.db"
    from tgbench.cli import main

    assert main(["run", str(suite), "--profile", "smoke", "--no-progress", "--storage", url,
                 "--out", str(tmp / "out")]) == 0
    outs = {"tensors": tmp / "lessons.pt", "dd-ranking": tmp / "ddr", "dc-bench": tmp / "dcb.pt",
            "dc-bench-folder": tmp / "dcb"}
    old = os.umask(0o022)
    try:
        for layout, out in outs.items():
            assert main(["export", "--suite", str(suite), "--profile", "smoke", "--source", "gtn", "--storage", url,
                         "--format", layout.removesuffix("-folder"), "--out", str(out)]) == 0
    finally:
        os.umask(old)
    return tmp, outs


def test_dd_ranking_folder_loads_with_dd_rankings_plain_calls(exported):
    _, outs = exported
    ours = torch.load(outs["tensors"], weights_only=True)
    folder = outs["dd-ranking"]
    images = torch.load(os.path.join(folder, "images.pt"), map_location="cpu", weights_only=True)
    labels = torch.load(os.path.join(folder, "labels.pt"), map_location="cpu", weights_only=True)
    lr = torch.load(os.path.join(folder, "lr.pt"), map_location="cpu", weights_only=True)
    assert torch.equal(images, ours["images"]) and torch.equal(labels, ours["labels"])
    assert lr.dim() == 0 and lr.item() == pytest.approx(ours["lr"].mean().item())  # one lr: the schedule's mean


def test_dc_bench_file_and_folder_load_with_dc_benchs_plain_calls(exported):
    _, outs = exported
    ours = torch.load(outs["tensors"], weights_only=True)
    images, labels = torch.load(outs["dc-bench"], weights_only=True)["data"][-1]
    assert torch.equal(images, ours["images"]) and torch.equal(labels, ours["labels"])
    folder = outs["dc-bench-folder"]
    assert torch.equal(torch.load(folder / "images_best.pt", weights_only=True), ours["images"])
    assert torch.equal(torch.load(folder / "labels_best.pt", weights_only=True), ours["labels"])


@pytest.mark.parametrize("layout, expected", [("tensors", "tgbench"), ("dd-ranking", "dd-ranking"),
                                              ("dc-bench", "dc-bench"), ("dc-bench-folder", "dc-bench")])
def test_each_layout_round_trips_through_the_external_source(exported, layout, expected):
    tmp, outs = exported
    assert detect_format(outs[layout]) == expected
    ours = torch.load(outs["tensors"], weights_only=True)
    dataset = load_dataset("mnist-5k")
    for fmt in ("auto", expected):
        suite = load_suite(write_suite(tmp / f"back-{layout}-{fmt}.yaml", "back", [
            {"method": "external", "params": {"path": str(outs[layout]), "format": fmt}}]), "smoke")
        teacher = build_teacher(suite, suite.sources[0], dataset, seed=0)
        lessons = [teacher(t, None) for t in range(3)]
        assert torch.equal(torch.cat([lesson.x for lesson in lessons]), ours["images"])
        labels = torch.cat([lesson.y for lesson in lessons])
        expected_labels = ours["labels"] if ours["labels"].dim() == 1 else as_probabilities(ours["labels"])
        assert torch.equal(labels, expected_labels)


def test_exported_files_are_readable_by_all(exported):
    _, outs = exported
    files = [outs["tensors"], outs["dc-bench"], *outs["dd-ranking"].iterdir(), *outs["dc-bench-folder"].iterdir()]
    assert len(files) == 7
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o644}


def test_dd_ranking_hard_labels_are_the_class_order(tmp_path):
    """Without labels.pt, DD-Ranking's images are class-ordered: N / classes of class 0, then class 1 ..."""
    folder = tmp_path / "ddr"
    folder.mkdir()
    images = torch.randn(20, 1, 28, 28)
    torch.save(images, folder / "images.pt")
    suite = load_suite(write_suite(tmp_path / "s.yaml", "hard", [{"method": "external", "params": {
        "path": "ddr"}}]), "smoke")
    teacher = build_teacher(suite, suite.sources[0], load_dataset("mnist-5k"), seed=0)
    labels = torch.cat([teacher(t, None).y for t in range(2)])
    assert labels.tolist() == [c for c in range(10) for _ in range(2)][:16]


def test_soft_labels_that_are_logits_are_soft_maxed():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5]])
    probabilities = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    assert torch.allclose(as_probabilities(logits), logits.softmax(1))
    assert torch.equal(as_probabilities(probabilities), probabilities)


@pytest.mark.parametrize("fmt, make, message", [
    ("dd-ranking", lambda p: torch.save({"images": torch.randn(2, 1, 28, 28)}, p), "reads a folder"),
    ("dc-bench", lambda p: torch.save({"data": [torch.randn(2, 1, 28, 28)]}, p), "data"),
    ("auto", lambda p: p.mkdir(), "neither images.pt"),
])
def test_a_layout_that_does_not_fit_is_one_line_naming_the_suite_and_key(tmp_path, capsys, fmt, make, message):
    make(tmp_path / "x.pt")
    suite = write_suite(tmp_path / "s.yaml", "bad", [{"method": "external", "params": {
        "path": "x.pt", "format": fmt}}])
    code, _, err = cli(["validate", str(suite)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(suite) in err and "sources[0].params" in err and message in err

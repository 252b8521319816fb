"""Results other tools load (issue 17): ``results.json`` next to every fewstep report, checked against its schema
and reloaded; ``tgbench export --format tensors`` writes the plain tensor form dataset-distillation benchmarks
take; the ``external`` source teaches from such a file, so a published distilled set can be ranked."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from tgbench import results
from tgbench.cli import main
from tgbench.builders import build_teacher
from tgbench.suite.loading import load_suite
from tgbench.data import load_dataset
from tgbench.records import FewstepCell, cell_key
from tgbench.store import Store

from helpers import cli

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {"dataset": {"name": "mnist-5k"}, "learner": {"conv_channels": [[2]], "fc_hidden": [[4]]},
        "inner": {"steps": 3, "batch_size": 8}, "outer": {"iterations": 2, "meta_batch_size": 8},
        "evaluation": {"seeds": 2, "eval_every": 1, "eval_learners": 1, "final_learners": 1},
        "profiles": {"smoke": {}}}
GTN = {"method": "gtn", "params": {"curriculum": "full", "noise_dim": 4, "fc_hidden": 8, "channels": [4, 2]}}


def write_suite(path: Path, name: str, sources: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"name": name, "kind": "fewstep", **TINY, "sources": sources}))
    return path


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """One tiny two-arm run, shared: (tmp dir, store URL, report dir)."""
    tmp = tmp_path_factory.mktemp("exchange")
    suite = write_suite(tmp / "exchange.yaml", "exchange", [{"method": "real"}, GTN])
    url, out = f"sqlite:///{tmp}/s.db", tmp / "out"
    assert main(["run", str(suite), "--profile", "smoke", "--no-progress", "--storage", url, "--out", str(out)]) == 0
    return tmp, url, out


def test_a_run_writes_results_json_that_validates_and_reloads_the_stores_numbers(ran):
    tmp, url, out = ran
    text = (out / "results.json").read_text()
    raw = json.loads(text)  # plain JSON: no NaN tokens, loadable by any tool
    assert raw["format"] == results.FORMAT and raw["suite"] == "exchange" and raw["profile"] == "smoke"
    document = results.load_results(out / "results.json")  # the schema check
    store = Store(url)
    records = {r.cell: r for r in store.records(store.study("exchange@smoke", create=False))}
    assert {c.cell for c in document.cells} == set(records) and len(records) == 4
    for cell in document.cells:
        record = records[cell.cell]
        assert cell.test_acc_final == record.test_acc_final and cell.val_acc_final == record.val_acc_final
        assert cell.steps_test_acc == record.steps_test_acc and len(cell.curve) == len(record.curve)
        assert cell.schedule == record.schedule and cell.device == "cpu"
    for arm in document.summary:
        accs = [c.test_acc_final for c in document.cells if c.arm == arm.arm]
        assert arm.seeds_complete == 2 and arm.test_acc_mean == pytest.approx(sum(accs) / len(accs))
        assert arm.test_acc_ci_low <= arm.test_acc_mean <= arm.test_acc_ci_high
    assert document.resolved_suite["inner"]["steps"] == 3
    assert document.versions["torch"] == torch.__version__ and document.versions["python"]


def test_the_published_schema_file_is_the_models_schema():
    assert results.SCHEMA_FILE.read_text() == results.schema_text(), (
        "tgbench/results.schema.json is stale: regenerate it with "
        "python -c 'from tgbench.results import *; SCHEMA_FILE.write_text(schema_text())'")


def test_a_document_with_a_wrong_field_is_refused(ran):
    _, _, out = ran
    raw = json.loads((out / "results.json").read_text())
    raw["cells"][0]["seed"] = "zero"
    with pytest.raises(Exception, match="seed"):
        results.ResultsDocument.model_validate(raw)


def test_non_finite_numbers_are_written_as_null(tmp_path):
    record = FewstepCell(cell=cell_key("gtn", 0), source="gtn", method="gtn", seed=0, status="diverged",
                         test_acc_final=0.1, val_acc_final=0.1, val_loss_final=math.nan)
    doc = results.results_document({"name": "x"}, "smoke", [record], {"created": "now", "command": "c",
                                                                       "machine": "m"}, {"torch": "1"})
    path = results.write_results(tmp_path, doc)
    assert json.loads(path.read_text())["cells"][0]["val_loss_final"] is None
    assert results.load_results(path).summary[0].seeds_diverged == 1


def test_export_tensors_then_rank_the_file_with_the_external_source(ran, capsys):
    tmp, url, _ = ran
    suite = tmp / "exchange.yaml"
    lessons = tmp / "distilled.pt"
    code, _, err = cli(["export", "--suite", str(suite), "--profile", "smoke", "--source", "gtn", "--seed", "0",
                        "--format", "tensors", "--out", str(lessons), "--storage", url], capsys)
    assert code == 0, err
    data = torch.load(lessons, weights_only=True)
    assert data["images"].shape == (3 * 8, 1, 28, 28) and data["labels"].shape == (24,)
    assert data["steps"] == 3 and data["batch_size"] == 8 and data["lr"].shape == (3,)
    store = Store(url)
    [record] = [r for r in store.records(store.study("exchange@smoke", create=False)) if r.cell == cell_key("gtn", 0)]
    assert data["lr"].tolist() == pytest.approx(record.schedule["lr"])

    ranked = write_suite(tmp / "ranked.yaml", "ranked", [{"method": "external", "label": "published",
                                                          "params": {"path": str(lessons)}}, {"method": "real"}])
    code, _, err = cli(["run", str(ranked), "--profile", "smoke", "--no-progress", "--storage", url,
                        "--out", str(tmp / "ranked-out")], capsys)
    assert code == 0, err
    board = tmp / "board" / "LEADERBOARD.md"
    code, _, err = cli(["leaderboard", "--storage", url, "--out", str(board)], capsys)
    assert code == 0, err
    assert "published" in board.read_text()
    ranked_doc = results.load_results(tmp / "ranked-out" / "results.json")
    assert {c.arm for c in ranked_doc.cells if c.status == "complete"} == {"published", "real"}


def test_the_external_source_shows_the_files_lessons_in_order_and_can_start_from_its_schedule(tmp_path):
    images = torch.randn(10, 1, 28, 28)
    labels = torch.arange(10) % 10
    path = tmp_path / "set.pt"
    torch.save({"images": images, "labels": labels, "batch_size": 4, "lr": torch.tensor([0.3, 0.2]),
                "momentum": torch.tensor([0.6, 0.7])}, path)
    suite = load_suite(write_suite(tmp_path / "s.yaml", "ext", [{"method": "external", "params": {
        "path": str(path), "schedule": "file"}}]), "smoke")
    dataset = load_dataset("mnist-5k")
    teacher = build_teacher(suite, suite.sources[0], dataset, seed=0)
    first, second, third = (teacher(t, None) for t in range(3))
    assert torch.equal(first.x, images[:4]) and torch.equal(second.x, images[4:8])
    assert torch.equal(third.x, images[:4])  # 10 images of batch 4: 2 lessons, then again from the first
    assert first.lr.item() == pytest.approx(0.3) and second.momentum.item() == pytest.approx(0.7)
    assert third.lr.item() == pytest.approx(0.2)  # beyond the file's schedule: its last value


@pytest.mark.parametrize("payload, key", [
    ({"images": torch.randn(4, 28, 28), "labels": torch.zeros(4, dtype=torch.int64)}, "images"),
    ({"images": torch.randn(4, 1, 28, 28), "labels": torch.zeros(3, dtype=torch.int64)}, "labels"),
    ({"images": torch.randn(4, 1, 28, 28), "labels": torch.zeros(4, dtype=torch.int32)}, "labels"),
    ([1, 2], "expected a dict"),
])
def test_a_bad_tensor_file_is_one_line_naming_the_file_and_key(tmp_path, capsys, payload, key):
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    suite = write_suite(tmp_path / "s.yaml", "ext", [{"method": "external", "params": {"path": str(path)}}])
    code, _, err = cli(["validate", str(suite)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(path) in err and key in err


# ------------------------------------------------------------------------------------------ trackers
def test_log_tensorboard_writes_event_files_that_tensorboard_reads_back(tmp_path, capsys):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install tensorboard)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    suite = write_suite(tmp_path / "tracked.yaml", "tracked", [GTN])
    code, _, err = cli(["run", str(suite), "--profile", "smoke", "--no-progress", "--log", "tensorboard",
                        "--seeds", "1", "--storage", f"sqlite:///{tmp_path}/s.db", "--out", str(tmp_path / "out")],
                       capsys)
    assert code == 0, err
    [run_dir] = (tmp_path / "out" / "tensorboard" / "tracked").iterdir()
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    meta_loss = events.Scalars("meta_loss")
    assert [e.step for e in meta_loss] == [1, 2] and all(math.isfinite(e.value) for e in meta_loss)
    assert [e.step for e in events.Scalars("val_acc")] == [0, 1, 2]
    [image] = events.Images("samples")
    assert image.width == 28 * 10 and image.height == 28 * 3  # 3 inner steps (rows) x 10 classes


def test_log_of_a_missing_tracker_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    suite = write_suite(tmp_path / "tracked.yaml", "tracked", [GTN])
    code, _, err = cli(["run", str(suite), "--profile", "smoke", "--log", "wandb",
                        "--storage", f"sqlite:///{tmp_path}/s.db", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "--log wandb" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.db").exists()

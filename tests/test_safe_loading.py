"""Files tgbench reads are never unpickled beyond tensors and plain values: a teacher file (``tgbench teach``)
or a store artifact holding any other pickled object is refused, one line naming it, exit 2, and the object's
code never runs. Each malicious file here is first shown to be live (unpickling it for real creates its marker
file), so the refusal tests cannot pass by accident.
"""
from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch

from helpers import cli
from tgbench.teach import FORMAT

REPO = Path(__file__).resolve().parents[1]


class CreatesMarker:
    """Unpickling this calls ``open(marker, "w")``: what arbitrary code execution looks like, harmlessly."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _teacher_like(payload_object) -> dict:
    """A payload that looks like an exported teacher, with the malicious object tucked inside."""
    return {"format": FORMAT, "method": "real", "params": {}, "suite": {"name": "x"}, "dataset_resolved": "mnist-5k",
            "seed": 0, "state_dict": {"hyper.log_lr": torch.zeros(2)}, "record": {"note": payload_object}}


WRITERS = {
    "torch_save_zip": lambda obj, path: torch.save(obj, path),
    "torch_save_legacy": lambda obj, path: torch.save(obj, path, _use_new_zipfile_serialization=False),
    "raw_pickle_protocol_2": lambda obj, path: path.write_bytes(pickle.dumps(obj, protocol=2)),
    "raw_pickle_protocol_5": lambda obj, path: path.write_bytes(pickle.dumps(obj, protocol=5)),
}


def _prove_live(write, obj_for, tmp_path: Path) -> None:
    """The same kind of file, loaded the unsafe way, does run its code (the test below could fail)."""
    probe_marker = tmp_path / "probe-marker"
    probe = tmp_path / "probe.pt"
    write(obj_for(probe_marker), probe)
    try:
        torch.load(probe, weights_only=False)
    except Exception:  # (a bare pickle is no torch file: torch unpickles it, runs it, then gives up)
        pass
    assert probe_marker.exists()


@pytest.mark.parametrize("wrapped", [False, True], ids=["bare_object", "inside_a_teacher_payload"])
@pytest.mark.parametrize("how", list(WRITERS))
def test_teach_refuses_a_malicious_pickle_without_running_it(tmp_path, capsys, how, wrapped):
    write = WRITERS[how]
    obj_for = (lambda m: _teacher_like(CreatesMarker(m))) if wrapped else CreatesMarker
    _prove_live(write, obj_for, tmp_path)

    marker = tmp_path / "pwned"
    evil = tmp_path / "teacher.pt"
    write(obj_for(marker), evil)
    code, out, err = cli(["teach", str(evil)], capsys)
    assert not marker.exists(), "the pickled object's code ran"
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tgbench: error: "), err
    assert str(evil) in lines[0] and "not a readable teacher file" in lines[0]
    assert "weights_only=False" not in lines[0]  # never advise the unsafe load


def test_a_store_artifact_holding_a_pickled_object_is_refused_without_running_it(tmp_path):
    from tgbench.errors import BadInput
    from tgbench.store import Store

    store = Store(f"sqlite:///{tmp_path}/s.db", tmp_path / "artifacts")
    study = store.study("evil@smoke")
    trial = store.begin(study, "real|seed=0", "h")
    _prove_live(WRITERS["torch_save_zip"], lambda m: _teacher_like(CreatesMarker(m)), tmp_path)
    marker = tmp_path / "pwned"
    artifact = store.save_teacher(study, trial, _teacher_like(CreatesMarker(marker)))  # torch.save, as the runner
    with pytest.raises(BadInput) as info:
        store.load_teacher(artifact)
    assert not marker.exists(), "the pickled object's code ran"
    msg = str(info.value)
    assert "\n" not in msg and artifact in msg and "not a readable teacher" in msg


def _torch_load_calls(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
            yield node


def test_every_torch_load_in_tgbench_is_weights_only():
    """Source check: each ``torch.load(...)`` in the package passes ``weights_only=True`` literally."""
    calls = {path: list(_torch_load_calls(path)) for path in sorted((REPO / "tgbench").glob("*.py"))}
    assert sum(map(len, calls.values())) >= 1  # (the check sees the loader at all)
    unsafe = [f"{path.name}:{node.lineno}" for path, nodes in calls.items() for node in nodes
              if not any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                         for k in node.keywords)]
    assert unsafe == [], f"torch.load without weights_only=True at {unsafe}"

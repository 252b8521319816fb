"""A full disk under the store says so (issue 27): it read as Optuna's "StorageInternalError: An exception is raised
during the commit ... e.g. exceeding max length". Now: exit 1, one line "no space left on <folder>", and no half
artifact left behind. The file system is really full here: a 100 KB tmpfs mounted in a user namespace
(``unshare -rm``, no root needed; skipped where user namespaces are off); the other two tests simulate the error
the way SQLite and a short copy raise it."""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from tgbench import store as store_module
from tgbench.store import Store

TINY = {"name": "tiny", "kind": "fewstep", "dataset": {"name": "mnist-5k"},
        "learner": {"conv_channels": [[2]], "fc_hidden": [[4]]}, "inner": {"steps": 2, "batch_size": 8},
        "outer": {"iterations": 1, "meta_batch_size": 8},
        "evaluation": {"seeds": 1, "eval_every": 1, "eval_learners": 1, "final_learners": 1, "held_out": {}},
        "profiles": {"smoke": {}}, "sources": [{"method": "real"}]}


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


def _run_on_a_tiny_disk(tmp_path: Path, size: str, where: str) -> tuple[subprocess.CompletedProcess, list[str], Path]:
    """``tgbench run`` of the tiny suite with the options ``where`` (``{disk}``: the disk) on a ``size`` tmpfs
    mounted at ``tmp_path/disk``: the finished run, the files left on that disk, and the disk."""
    suite, disk = tmp_path / "tiny.yaml", tmp_path / "disk"
    suite.write_text(yaml.safe_dump(TINY))
    disk.mkdir()
    run = (f"mount -t tmpfs -o size={size} tmpfs {disk} && {sys.executable} -m tgbench run {suite} --profile smoke "
           f"--no-progress {where.format(disk=disk)} --out {tmp_path}/out; code=$?; "
           f"find {disk} -type f > {tmp_path}/files; exit $code")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", run], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)})
    return done, (tmp_path / "files").read_text().split(), disk


@pytest.mark.skipif(not _namespaces_work(), reason="needs unprivileged user and mount namespaces (unshare -rm)")
def test_a_store_on_a_full_file_system_says_no_space_left(tmp_path):
    done, left, disk = _run_on_a_tiny_disk(tmp_path, "100k", "--storage sqlite:///{disk}/t.db")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert f"no space left on {disk} " in lines[0] and "StorageInternalError" not in lines[0], lines[0]
    assert left == [f"{disk}/t.db"], left   # (no journal, no temporary file; the store as SQLite rolled it back)


def test_optunas_wrapped_sqlite_error_is_told_as_no_space(tmp_path, monkeypatch):
    from tgbench.store import NoSpaceLeft, is_full_disk

    store = Store(f"sqlite:///{tmp_path}/s.db", tmp_path / "artifacts")
    study = store.study("s@smoke")

    def full(*args, **kwargs):
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as exc:
            raise optuna.exceptions.StorageInternalError(
                "An exception is raised during the commit. This typically happens due to invalid data in the "
                "commit, e.g. exceeding max length.") from exc

    monkeypatch.setattr(store.storage, "create_new_trial", full)
    with pytest.raises(NoSpaceLeft, match=f"^no space left on {tmp_path} "):
        store.claim(study, "real|seed=0", "abc")
    assert not is_full_disk(ValueError("exceeding max length"))


def test_a_teacher_copy_cut_short_leaves_no_half_artifact(tmp_path, monkeypatch):
    from tgbench.store import NoSpaceLeft

    store = Store(f"sqlite:///{tmp_path}/s.db", tmp_path / "artifacts")
    study = store.study("s@smoke")
    trial = study.ask()

    def short_copy(artifact_store, file_path, study_or_trial, storage):
        (tmp_path / "artifacts" / "a-half-copied-artifact").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module, "upload_artifact", short_copy)
    with pytest.raises(NoSpaceLeft, match=f"^no space left on {tmp_path / 'artifacts'} "):
        store.save_teacher(study, trial, {"state_dict": {}})
    assert os.listdir(tmp_path / "artifacts") == []


@pytest.mark.skipif(not _namespaces_work(), reason="needs unprivileged user and mount namespaces (unshare -rm)")
def test_a_saved_state_on_a_full_file_system_says_no_space_left(tmp_path):
    """The cell's saved meta-training state (``tgbench.resume``) is the first file written under --artifacts: on a
    full file system the cell fails with "no space left on <folder>" (torch's zip writer said "[enforce fail at
    inline_container.cc ...]") and no temporary file stays behind; the store, elsewhere, holds the failed cell."""
    done, left, disk = _run_on_a_tiny_disk(tmp_path, "8k", f"--storage sqlite:///{tmp_path}/t.db --artifacts {{disk}}")
    assert done.returncode == 1, done.stderr
    assert f"no space left on {disk}/saved_states/" in done.stderr + done.stdout, done.stderr + done.stdout
    assert "enforce fail" not in done.stderr + done.stdout
    assert left == []   # (no half-written state, no temporary file)
    trials = optuna.load_study(study_name="tiny@smoke", storage=f"sqlite:///{tmp_path}/t.db").trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL]


def test_a_short_torch_save_is_a_full_disk_only_where_the_disk_is_nearly_full(tmp_path, monkeypatch):
    from tgbench.store import write_found_disk_full

    zip_writer = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
    assert write_found_disk_full(OSError(28, "No space left on device"), tmp_path)
    assert not write_found_disk_full(zip_writer, tmp_path)          # (this disk has room: another failure)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(10**9, 10**9 - 4096, 4096))
    assert write_found_disk_full(zip_writer, tmp_path)
    assert not write_found_disk_full(ValueError("exceeding max length"), tmp_path)

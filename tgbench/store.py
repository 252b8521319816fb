"""The experiment store: an Optuna RDB storage (SQLite by default, any SQLAlchemy URL such as PostgreSQL).

One suite at one profile is one *study*; each cell (source x seed) is one *trial* whose user attributes hold
the full JSON record (config hash, resolved dataset, curves, per-step accuracies, timings, versions). A cell is
*done* when a trial with its key and config hash carries status ``complete`` or ``diverged``; re-running a
suite skips done cells (resume) and re-runs anything else (failed, interrupted, or configured differently).
Trained teachers are saved as Optuna artifacts next to the database (a file store), linked to their trial.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact
from optuna.trial import TrialState

from tgbench.errors import BadInput

DEFAULT_STORAGE = "sqlite:///results/tgbench.db"
DONE = ("complete", "diverged")

optuna.logging.set_verbosity(optuna.logging.WARNING)


def config_hash(payload: Any) -> str:
    """Stable short hash of a JSON-able payload (the protocol a cell was run under)."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def cell_key(source: str, seed: int) -> str:
    return f"{source}|seed={seed}"


class Store:
    """Thin wrapper over ``optuna.storages.RDBStorage`` that knows cells, records and teacher artifacts."""

    def __init__(self, url: str | None = None, artifacts_dir: str | Path | None = None):
        self.url = url or os.environ.get("TGBENCH_STORAGE") or DEFAULT_STORAGE
        if self.url.startswith("sqlite:///"):
            db_path = Path(self.url.removeprefix("sqlite:///"))
            try:
                db_path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BadInput(f"--storage: cannot create {db_path.parent}: {exc.strerror}") from None
            default_artifacts = db_path.parent / "artifacts"
        else:
            default_artifacts = Path("results") / "artifacts"
        try:
            self.storage = optuna.storages.RDBStorage(self.url)
        except Exception as exc:  # bad scheme, unreachable server, missing driver ...
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise BadInput(f"--storage: cannot open {self.url!r}: {reason}") from None
        self.artifacts_dir = Path(artifacts_dir or os.environ.get("TGBENCH_ARTIFACTS") or default_artifacts)

    # ------------------------------------------------------------------ studies and cells
    def study(self, name: str, create: bool = True) -> optuna.Study:
        if not create:
            try:
                return optuna.load_study(study_name=name, storage=self.storage)
            except KeyError:
                raise BadInput(f"no study {name!r} in {self.url}; run the suite first") from None
        return optuna.create_study(study_name=name, storage=self.storage, direction="maximize",
                                   load_if_exists=True)

    def study_names(self) -> list[str]:
        return [s.study_name for s in optuna.get_all_study_summaries(self.storage, include_best_trial=False)]

    def done_cells(self, study: optuna.Study) -> set[tuple[str, str]]:
        """(cell key, config hash) of every finished (complete or diverged) cell."""
        return {(t.user_attrs["cell"], t.user_attrs.get("config_hash"))
                for t in study.get_trials(deepcopy=False)
                if t.user_attrs.get("status") in DONE and "cell" in t.user_attrs}

    def records(self, study: optuna.Study, accept: dict[str, set[str]] | None = None) -> list[dict]:
        """Finished and failed records, newest per cell; with ``accept`` (cell key -> acceptable config hashes)
        only the cells it names, run under one of their acceptable configs."""
        newest: dict[str, dict] = {}
        for trial in study.get_trials(deepcopy=False):
            attrs = dict(trial.user_attrs)
            if "cell" not in attrs or "status" not in attrs:
                continue
            if accept is not None and attrs.get("config_hash") not in accept.get(attrs["cell"], ()):
                continue
            attrs["trial_number"] = trial.number
            prev = newest.get(attrs["cell"])
            # a finished record always beats a failed/interrupted attempt of the same cell
            if prev is None or (attrs["status"] in DONE) >= (prev["status"] in DONE):
                newest[attrs["cell"]] = attrs
        return list(newest.values())

    def begin(self, study: optuna.Study, key: str, chash: str) -> optuna.Trial:
        trial = study.ask()
        trial.set_user_attr("cell", key)
        trial.set_user_attr("config_hash", chash)
        trial.set_user_attr("status", "running")
        return trial

    def finish(self, study: optuna.Study, trial: optuna.Trial, record: dict) -> None:
        """Write the whole record, then close the trial: COMPLETE (value = final test acc) or FAIL."""
        for key, value in record.items():
            trial.set_user_attr(key, value)
        if record["status"] == "complete":
            study.tell(trial, record["test_acc_final"])
        else:
            study.tell(trial, state=TrialState.FAIL)

    # ------------------------------------------------------------------ teacher artifacts
    def save_teacher(self, study: optuna.Study, trial: optuna.Trial, payload: dict) -> str:
        import torch

        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        store = FileSystemArtifactStore(str(self.artifacts_dir))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "teacher.pt"
            torch.save(payload, path)
            return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial,
                                   storage=self.storage)

    def load_teacher(self, artifact_id: str) -> dict:
        import torch

        store = FileSystemArtifactStore(str(self.artifacts_dir))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "teacher.pt"
            try:
                download_artifact(artifact_store=store, file_path=str(path), artifact_id=artifact_id)
            except Exception as exc:
                raise BadInput(f"teacher artifact {artifact_id} not found under {self.artifacts_dir}: {exc}") from None
            return torch.load(path, weights_only=False)

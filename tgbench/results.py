"""``results.json``: one self-describing file per fewstep report, for tools other than tgbench.

Every ``tgbench run`` / ``tgbench report`` of a fewstep suite writes it next to ``report.md`` (the
lm-evaluation-harness habit): the resolved suite, the versions and machine, a per-arm summary (mean test accuracy
after the last inner step with its 95 % bootstrap interval, as in the report) and every cell with its metrics,
per-step accuracies, outer-loop curve, learned schedule and timings. The models below *are* the schema
(``ResultsDocument.model_json_schema()``; ``tgbench/results.schema.json`` is that schema written out, and a test
keeps it current), so ``ResultsDocument.model_validate_json(text)`` loads a file back with its numbers checked.
Non-finite numbers (a diverged cell's loss) are written as ``null``.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from tgbench import stats
from tgbench.device import label as device_label
from tgbench.records import FewstepCell, Status

FORMAT = "tgbench-results/1"
SCHEMA_FILE = Path(__file__).with_name("results.schema.json")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="null")


class CurvePoint(_Model):
    outer_iter: int
    val_acc: float | None
    test_acc: float | None
    val_loss: float | None = None
    meta_loss: float | None = None


class CellResult(_Model):
    """One cell (an arm at one seed) as the store recorded it."""

    cell: str
    source: str
    arm: str
    method: str | None = None                    # (a failed cell's record may not have got that far)
    variant: str | None = None
    seed: int
    status: str                                  # complete | diverged | failed (a tgbench.records.Status value)
    config_hash: str | None = None
    dataset_resolved: str | None = None
    device: str = "cpu"
    test_acc_final: float | None = None          # after the last inner step
    val_acc_final: float | None = None
    test_loss_final: float | None = None
    val_loss_final: float | None = None
    steps_test_acc: list[float | None] = []      # index t: after t inner steps (0 = at init)
    steps_val_acc: list[float | None] = []
    curve: list[CurvePoint] = []                 # the periodic checks over the outer loop
    schedule: dict[str, list[float | None]] | None = None   # the learned per-step lr and momentum
    outer_iterations: int | None = None
    meta_train_seconds: float | None = None
    meta_train_flops: float | None = None
    phase_seconds: dict[str, float | None] = {}
    revision: str | None = None
    finished: str | None = None
    error: str | None = None
    # the files the cell read as data, by content: {"params.path": {"path", "sha256"}, "plugin": {"file", "sha256"}}
    inputs: dict[str, dict[str, str]] | None = None


class ArmSummary(_Model):
    arm: str
    method: str | None
    seeds_complete: int
    seeds_diverged: int
    test_acc_mean: float | None
    test_acc_ci_low: float | None                # 95 % percentile bootstrap (tgbench.stats.mean_ci)
    test_acc_ci_high: float | None
    val_acc_mean: float | None


class ResultsDocument(_Model):
    format: Literal["tgbench-results/1"] = FORMAT
    suite: str
    profile: str
    created: str
    command: str
    revisions: list[str]
    devices: list[str]
    machine: str
    versions: dict[str, str | None]
    resolved_suite: dict                         # the suite as validated at this profile (Suite.model_dump)
    summary: list[ArmSummary]
    cells: list[CellResult]


def _cell(record: FewstepCell) -> CellResult:
    # (getattr with a default: `inputs` is an extra key of the records that have one)
    fields = {k: getattr(record, k, None) for k in CellResult.model_fields if getattr(record, k, None) is not None}
    fields.setdefault("arm", record.source)
    fields["status"] = record.status.value
    fields["device"] = device_label(record)
    return CellResult.model_validate(fields)


def _summary(cells: list[CellResult]) -> list[ArmSummary]:
    rows = []
    for arm in sorted({c.arm for c in cells}):
        mine = [c for c in cells if c.arm == arm]
        complete = [c for c in mine if c.status == Status.COMPLETE]
        ci = stats.mean_ci([c.test_acc_final for c in complete if c.test_acc_final is not None])
        val = stats.mean_ci([c.val_acc_final for c in complete if c.val_acc_final is not None])
        rows.append(ArmSummary(arm=arm, method=next((c.method for c in mine if c.method), None),
                               seeds_complete=len(complete),
                               seeds_diverged=sum(c.status == Status.DIVERGED for c in mine),
                               test_acc_mean=ci.mean, test_acc_ci_low=ci.low, test_acc_ci_high=ci.high,
                               val_acc_mean=val.mean))
    return rows


def results_document(resolved_suite: dict, profile: str, records: list[FewstepCell], meta: dict,
                     versions: dict[str, str | None]) -> ResultsDocument:
    """The document of a report's records (``meta``: the report's provenance: created, command, machine)."""
    cells = sorted((_cell(r) for r in records), key=lambda c: (c.arm, c.source, c.seed))
    return ResultsDocument(
        suite=resolved_suite["name"], profile=profile, created=meta["created"], command=meta["command"],
        revisions=sorted({r.revision or "unknown" for r in records}),
        devices=sorted({device_label(r) for r in records}), machine=meta["machine"], versions=versions,
        resolved_suite=resolved_suite, summary=_summary(cells), cells=cells)


def write_results(out_dir: Path, document: ResultsDocument) -> Path:
    """Write ``out_dir/results.json`` (the latest) and ``out_dir/results_<UTC time>.json`` (kept: every run's
    document stays, lm-evaluation-harness's layout), each atomically (a temporary file renamed into place: never
    half a file) and readable by all (mode 0644 less the umask, like the report's other files); returns the
    latest."""
    out_dir = Path(out_dir)
    # when it is written, to the microsecond (a run and a report in the same second keep both), with no ':'
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H-%M-%S.%f")
    text = document.model_dump_json(indent=1) + "\n"
    history = out_dir / f"results_{stamp}.json"
    _write_atomically(history, text)
    return _write_atomically(out_dir / "results.json", text)


def _write_atomically(target: Path, text: str) -> Path:
    handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "w") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp's 0600 would hide the results from other users
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_results(path: str | Path) -> ResultsDocument:
    """Read a ``results.json`` back, checked against the schema."""
    return ResultsDocument.model_validate_json(Path(path).read_text())


def schema_text() -> str:
    return json.dumps(ResultsDocument.model_json_schema(), indent=1, sort_keys=True) + "\n"

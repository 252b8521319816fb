"""Store records: what one trial of the experiment store holds, as typed models.

A *record* is the JSON in an Optuna trial's user attributes (``tgbench.store``): one key per field. There are five
kinds, one model each, and every record says which it is (``kind``) and under which version of these models it was
written (``schema_version``):

* :class:`FewstepCell` (``fewstep_cell``): one cell of a fewstep suite, an arm at one seed (``tgbench.cells``);
  the teachers of a ``nas_proxy`` suite are such cells too. Study ``<suite>@<profile>``, key ``<source>|seed=<n>``.
* :class:`TuneTrial` (``tune_trial``): one Optuna trial of a tune suite's arm (``tgbench.kinds.tune``, study
  ``<suite>@<profile>/<arm>``) or of a fewstep suite's tuning stage (``tgbench.tuning``,
  ``<suite>@<profile>/tuning/<arm>``). No cell key: Optuna numbers these trials itself.
* :class:`NasGroundTruth` (``nas_ground_truth``): one real-data training of an architecture at one seed, in the
  study ``nas_ground_truth`` that every ``nas_proxy`` suite shares; key ``<arch id>|seed=<n>``.
* :class:`NasProxyScores` (``nas_proxy_scores``): every architecture's score and cost under one proxy of a
  ``nas_proxy`` suite; study ``<suite>@<profile>``, key ``proxy:<label>``.
* :class:`DataCeiling` (``data_ceiling``): a fewstep suite's evaluation learner trained to convergence on the whole
  training split at one seed (``tgbench.ceiling``), in the study ``data_ceiling`` every suite shares; key
  ``ceiling|seed=<n>``, config hash = what it depends on (learner, data, schedule).

Lifecycle of a record (its :class:`Status`):

1. *claimed*, ``running``: ``Store.begin`` / ``Store.claim`` create the trial with its kind, cell key, config hash,
   worker and status ``running`` in one transaction. (A tune trial is created by Optuna's ``optimize``.)
2. the work runs; then the worker writes the record's fields, one user attribute (one transaction) each;
3. and its status *last*: ``complete`` or ``diverged`` (the two :data:`DONE` statuses: the cell is finished and a
   rerun skips it), ``failed`` (the work raised; the cell runs again next time), ``duplicate`` (a claim that lost
   the race for its cell to another worker's; never reported) or ``pruned`` (a tune trial Optuna's pruner stopped).

Why the status goes last: a worker can be killed between any two of its writes. Readers decide whether a record is
done by its status alone, so with the status written last a half-written record still says ``running``: another
worker fails the claim when its heartbeat stops (``Store.fail_stale``), it reads as ``failed``, and the next run
redoes the cell. Were the status written earlier, a kill after it would leave a "complete" record without the
fields it promises, and every later run would skip the cell and then fail on them.

Records written before these models existed carry neither ``kind`` nor ``schema_version``:
:func:`record_from_attrs` infers their kind from where they live (the one place that knows the shapes of study names
and cell keys) and reads them as ``schema_version`` 0. Keys a model does not declare (written by an older tgbench,
or open-ended provenance) pass through unchanged (``extra="allow"``); every key a reader uses is a declared field,
so readers use attributes.
"""
from __future__ import annotations

from enum import Enum
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tgbench.errors import BadInput

SCHEMA_VERSION = 1           # the version records are written with; 0 = written before typed records
LEGACY_SCHEMA_VERSION = 0

GROUND_TRUTH_STUDY = "nas_ground_truth"   # the study every nas_proxy suite shares its ground truth in
PROXY_PREFIX = "proxy:"                   # cell keys of NAS proxy records: proxy:<label>


class Status(str, Enum):
    """Where a record is in its lifecycle (module docstring). A ``str`` enum: the stored strings are its values,
    the same bytes stores held before the enum existed."""

    RUNNING = "running"       # claimed; the work is under way (or its worker died and nobody noticed yet)
    COMPLETE = "complete"
    DIVERGED = "diverged"     # finished, with a non-finite meta-loss/gradient: recorded, counted, not averaged
    FAILED = "failed"         # the work raised (or was interrupted); the cell runs again next time
    DUPLICATE = "duplicate"   # a claim that lost to another worker's claim of the same cell; never reported
    PRUNED = "pruned"         # a tune trial stopped early by Optuna's pruner

    def __str__(self) -> str:  # f"{status}" in messages is the stored word, not "Status.COMPLETE"
        return self.value

    __format__ = str.__format__


DONE = frozenset({Status.COMPLETE, Status.DIVERGED})   # finished: a rerun skips the cell


def cell_key(source: str, seed: int) -> str:
    return f"{source}|seed={seed}"


def split_cell_key(key: str) -> tuple[str, int] | None:
    """``cell_key``'s inverse: (source, seed); None for a key of another shape (e.g. a NAS proxy record's)."""
    source, sep, seed = key.rpartition("|seed=")
    return (source, int(seed)) if sep and seed.isdigit() else None


def proxy_key(label: str) -> str:
    return f"{PROXY_PREFIX}{label}"


class RecordError(BadInput):
    """A record in the store that no model of this module accepts (a bad status, a newer schema, an unknown kind)."""


# ------------------------------------------------------------------------------------------ the models
class Record(BaseModel):
    """What every record has. Subclasses narrow ``kind`` to their own literal."""

    # extra="allow": older records' keys and open-ended provenance pass through; a reader only uses declared fields
    model_config = ConfigDict(extra="allow")

    kind: str
    schema_version: int = SCHEMA_VERSION
    status: Status
    error: str | None = None
    # where the record was read from (Store.records); never written: Optuna numbers the trial itself
    trial_number: int | None = Field(default=None, exclude=True)

    @field_validator("status", mode="before")
    @classmethod
    def _known_status(cls, value: Any) -> Any:
        if isinstance(value, Status) or (isinstance(value, str) and value in {s.value for s in Status}):
            return value
        raise ValueError(f"{value!r} is not one of {', '.join(s.value for s in Status)}")

    @field_validator("schema_version")
    @classmethod
    def _not_newer(cls, value: int) -> int:
        if not LEGACY_SCHEMA_VERSION <= value <= SCHEMA_VERSION:
            raise ValueError(f"{value} is not a version this tgbench reads ({LEGACY_SCHEMA_VERSION} to "
                             f"{SCHEMA_VERSION}); was it written by a newer tgbench?")
        return value

    @property
    def done(self) -> bool:
        return self.status in DONE

    def fields(self) -> dict[str, Any]:
        """The user attributes this record writes, status excluded (``Store`` writes it last): its kind and schema
        version, then every field the writer set, unknown ones included. Fields left at their defaults are not
        written, so a record stores exactly the keys its writer gave it."""
        written = self.model_dump(exclude_unset=True, exclude={"kind", "schema_version", "status"})
        return {"kind": self.kind, "schema_version": self.schema_version, **written}

    def trial_value(self) -> float:
        """The Optuna value of a complete record's trial (what ``optuna-dashboard`` plots)."""
        raise NotImplementedError(f"a {self.kind} record is not closed by Store.finish")


class CellRecord(Record):
    """A record the store claims by key (``Store.begin``): every kind but the tune trial."""

    cell: str
    config_hash: str | None = None                 # what the result depends on: a rerun under another is new work
    worker: dict[str, Any] | None = None           # host, boot id and pid of the claimant (stale-claim detection)
    # the device that computed it (tgbench.device.facts)
    device: str | None = None
    gpu: str | None = None
    cuda: str | None = None
    cudnn: int | None = None
    tf32: bool | None = None
    gpu_peak_mb: float | None = None


class FewstepCell(CellRecord):
    """One cell of a fewstep suite (``tgbench.cells``): an arm meta-trained at one seed, then evaluated.

    A failed cell's record may hold only its claim (cell, config hash, worker), its error and its status: the
    loader names its source and seed from the cell key."""

    kind: Literal["fewstep_cell"] = "fewstep_cell"
    # the cell
    suite: str | None = None
    profile: str | None = None
    source: str | None = None
    method: str | None = None
    variant: str | None = None
    seed: int | None = None
    arm: str | None = None
    sweep_value: Any = None
    dataset: str | None = None
    dataset_resolved: str | None = None
    fallback_reason: str | None = None
    inner_steps: int | None = None
    batch_size: int | None = None
    protocol: dict[str, Any] | None = None         # what makes cells comparable (tgbench.identity.protocol_of)
    # meta-training
    outer_iterations: int | None = None
    meta_train_seconds: float | None = None
    meta_train_flops: float | None = None
    curve: list[dict[str, Any]] = []               # periodic checks: outer_iter, val/test acc, val loss, meta-loss
    schedule: dict[str, Any] | None = None         # the learned per-step lr and momentum
    # final evaluation (a diverged cell: the last finite check's accuracies)
    test_acc_final: float | None = None
    val_acc_final: float | None = None
    test_loss_final: float | None = None
    val_loss_final: float | None = None
    steps_test_acc: list[float | None] = []        # index t: after t inner steps
    steps_val_acc: list[float | None] = []
    eval_architectures: list[str] | None = None
    eval_seconds: float | None = None
    held_out: list[dict[str, Any]] | None = None   # name, architecture, test_acc, val_acc per held-out learner
    held_out_seconds: float | None = None
    samples: str | None = None                     # the sample grid (tgbench.cells.encode_array)
    sample_steps: list[int] | None = None
    teacher_artifact: str | None = None
    phase_seconds: dict[str, float] | None = None  # wall seconds per phase of the cell
    resumed_from: list[int] | None = None          # outer iterations it resumed from after stops (None: none)
    diagnostics: dict[str, float] | None = None    # the trained source's own numbers (Source.diagnostics)
    # provenance
    peak_rss_mb: float | None = None
    torch: str | None = None
    threads: int | None = None
    revision: str | None = None
    finished: str | None = None
    versions: dict[str, Any] | None = None
    cpu_model: str | None = None
    hostname: str | None = None
    command: str | None = None

    def trial_value(self) -> float:
        return self.test_acc_final


class RealTraining(CellRecord):
    """What ``tgbench.proxies.train_real`` reports of one learner trained on the real training split with Adam and
    early stopping on validation: the fields the NAS ground truth and the data ceiling share."""

    seed: int | None = None
    description: str | None = None                 # the learner (LearnerSpec.describe)
    spec: dict[str, Any] | None = None
    dataset_resolved: str | None = None
    seconds: float | None = None
    test_acc_final: float | None = None            # test accuracy at the best-validation epoch
    val_acc: float | None = None                   # at the best-validation epoch
    test_acc: float | None = None
    best_epoch: float | None = None
    val_acc_last: float | None = None
    test_acc_last: float | None = None
    epochs_run: float | None = None
    curve: list[dict[str, Any]] = []

    def trial_value(self) -> float:
        return self.test_acc_final


class NasGroundTruth(RealTraining):
    """One architecture trained on real data at one seed (``tgbench.proxies.train_real``), cached for every
    ``nas_proxy`` suite under the same protocol (its ``config_hash``)."""

    kind: Literal["nas_ground_truth"] = "nas_ground_truth"
    arch_id: str | None = None
    protocol: str | None = None                    # the protocol hash (= config_hash)
    cpu_seconds: float | None = None


class NasProxyScores(CellRecord):
    """One proxy's score and cost of every scored architecture of a ``nas_proxy`` suite."""

    kind: Literal["nas_proxy_scores"] = "nas_proxy_scores"
    proxy: str | None = None                       # the registered proxy
    label: str | None = None                       # its name in the suite's tables
    family: str | None = None
    params: dict[str, Any] | None = None
    dataset_resolved: str | None = None
    scores: dict[str, float] = {}                  # architecture id -> score, in the suite's architecture order
    seconds: dict[str, float] = {}                 # architecture id -> wall seconds of scoring it
    cpu_seconds: dict[str, float] = {}
    teacher_source: str | None = None              # the teacher a teaching proxy used (None: no teacher)
    setup_seconds: float | None = None             # that teacher's meta-training seconds

    def trial_value(self) -> float:
        return sum(self.seconds.values())          # the trial's value: total scoring seconds


class DataCeiling(RealTraining):
    """The evaluation learner trained on the whole real training split with Adam and early stopping on validation
    (``tgbench.ceiling``): the headroom a fewstep report shows above its arms. Computed once per (learner, data,
    schedule) — its ``config_hash`` — and shared by every suite with the same three."""

    kind: Literal["data_ceiling"] = "data_ceiling"
    schedule: dict[str, Any] | None = None         # the Adam schedule (GroundTruthSchedule, seeds excluded)


class TuneTrial(Record):
    """One Optuna trial of a tune suite's arm, or of a fewstep suite's tuning stage (which writes only the
    meta-training seconds and the validation scores). Its sampled values and objective are the trial's own."""

    kind: Literal["tune_trial"] = "tune_trial"
    val_acc_final: float | None = None
    test_acc_final: float | None = None
    val_loss_final: float | None = None
    meta_train_seconds: float | None = None
    outer_iterations: int | None = None
    curve: list[dict[str, Any]] = []
    dataset_resolved: str | None = None
    revision: str | None = None
    device: str | None = None
    finished: str | None = None


MODELS: dict[str, type[Record]] = {m.model_fields["kind"].default: m
                                   for m in (FewstepCell, TuneTrial, NasGroundTruth, NasProxyScores, DataCeiling)}
FEWSTEP_CELL, TUNE_TRIAL, NAS_GROUND_TRUTH, NAS_PROXY_SCORES, DATA_CEILING = (
    "fewstep_cell", "tune_trial", "nas_ground_truth", "nas_proxy_scores", "data_ceiling")


# ------------------------------------------------------------------------------------------ loading
def infer_kind(attrs: Mapping[str, Any], study_name: str) -> str:
    """The kind of a record written before records said it. The one place that knows where each kind lives:

    * no cell key: an Optuna trial of a tune or tuning study (the store claims every other kind by key);
    * the study ``nas_ground_truth``: ground truth (keys ``<arch id>|seed=<n>``);
    * a key ``proxy:<label>``: a NAS proxy's scores;
    * anything else (``<source>|seed=<n>``): a fewstep cell, in a fewstep suite's study or a nas_proxy suite's
      (its teachers)."""
    cell = attrs.get("cell")
    if cell is None:
        return TUNE_TRIAL
    if study_name == GROUND_TRUTH_STUDY:
        return NAS_GROUND_TRUTH
    if str(cell).startswith(PROXY_PREFIX):
        return NAS_PROXY_SCORES
    return FEWSTEP_CELL


def record_from_attrs(attrs: Mapping[str, Any], study_name: str) -> Record:
    """The typed record of a trial's user attributes (``study_name``: the study it lives in). Records without
    ``kind`` / ``schema_version`` (written before typed records) get their kind from :func:`infer_kind` and
    schema version 0. A fewstep cell whose record holds only its claim is named by its cell key (source, seed).

    Raises :class:`RecordError` (one line: where, and what is wrong) for a record no model accepts."""
    fields = dict(attrs)
    if "kind" not in fields:
        fields["kind"] = infer_kind(fields, study_name)
        fields.setdefault("schema_version", LEGACY_SCHEMA_VERSION)
    where = f"store record {study_name}/{fields.get('cell', fields.get('kind'))}"
    model = MODELS.get(fields["kind"])
    if model is None:
        raise RecordError(f"{where}: kind {fields['kind']!r} is not one of {', '.join(MODELS)}")
    if model is FewstepCell and isinstance(fields.get("cell"), str) and (
            parsed := split_cell_key(fields["cell"])) is not None:
        fields.setdefault("source", parsed[0])
        fields.setdefault("seed", parsed[1])
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise RecordError(f"{where}: {key}: {first['msg'].removeprefix('Value error, ')}") from None

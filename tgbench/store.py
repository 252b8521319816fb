"""The experiment store: an Optuna RDB storage (SQLite by default, any SQLAlchemy URL such as PostgreSQL).

One suite at one profile is one *study*; each cell (source x seed) is one *trial* whose user attributes hold
its record (``tgbench.records``: a typed model per kind; config hash, resolved dataset, curves, per-step
accuracies, timings, versions). The store writes and reads only those models. A cell is *done* when a trial with
its key and config hash carries a done status (``complete`` or ``diverged``); re-running a suite skips done cells
(resume) and re-runs anything else (failed, interrupted, or configured differently).
Trained teachers are saved as Optuna artifacts next to the database (a file store), linked to their trial.

Claiming cells (``Store.claim``): any number of ``tgbench run`` processes, on one machine or many sharing one
PostgreSQL server, may work on one study at once; each cell completes once and none is lost.

1. Stale claims are failed first: a RUNNING trial whose heartbeat is older than ``grace_period`` (Optuna's
   ``fail_stale_trials``), one that never recorded a heartbeat and started longer ago than that, one whose
   worker process is dead on this very machine (so a resume after ``kill -9`` need not wait), and one left by a
   tgbench without heartbeats (no ``worker`` attribute).
2. The claim is a RUNNING trial created with its cell key, config hash and worker in one transaction
   (``create_new_trial`` with a template; Optuna locks the study row while it numbers the trial, so trial
   numbers follow commit order), followed at once by its first heartbeat.
3. The claimant reads the cell's other trials. If one is done, or one with a *smaller* number is RUNNING, the
   cell belongs to someone else: the claim is closed as FAIL with status ``duplicate`` (ignored by reports)
   and the cell is skipped. Two claimants cannot both win: the later-numbered one committed after the earlier
   one, so it sees it.
4. While the cell runs, a thread records a heartbeat every ``heartbeat_interval`` seconds. A worker that is
   killed stops beating; after ``grace_period`` any other worker fails its trial and runs the cell again. A
   worker whose claim was failed that way while it still ran (a long pause) discards its result.

Because every cell (and worker process) opens the store by its URL, an in-memory SQLite database
(``sqlite://``, ``sqlite:///:memory:``), private to the connection that made it, can never hold a suite: such
URLs are refused up front. Teacher artifacts are read back with ``torch.load(weights_only=True)``: tensors and
plain containers only, never arbitrary pickled objects.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import errno
import functools
import hashlib
import json
import os
import re
import sqlite3
import shutil
import socket
import tempfile
import threading
import time
import warnings
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact
from optuna.trial import TrialState

from tgbench import interrupt
from tgbench.errors import BadInput
from tgbench.locations import check_regular_file, check_under, child_path, safe_name
from tgbench.records import CellRecord, FewstepCell, Record, Status, record_from_attrs

DEFAULT_STORAGE = "sqlite:///results/tgbench.db"
HEARTBEAT_INTERVAL = 10   # seconds between the heartbeats of a running cell
GRACE_PERIOD = 60         # a running cell silent for longer is stale: its worker is gone and the cell re-runs
# what losing the race to create a fresh store's tables looks like (SQLite, PostgreSQL)
SCHEMA_RACES = ("already exists", "database is locked", "UNIQUE constraint failed", "duplicate key value")

optuna.logging.set_verbosity(optuna.logging.WARNING)
# after a Ctrl-C, no "Trial N failed" traceback from Optuna under the one "tgbench: interrupted" line
for _handler in optuna.logging.get_logger("optuna").handlers:
    _handler.addFilter(interrupt.quiet_once_received)


def config_hash(payload: Any) -> str:
    """Stable short hash of a JSON-able payload (the protocol a cell was run under)."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def artifacts_location(url: str | None, artifacts_dir: str | Path | None) -> tuple[Path, str]:
    """Where a ``Store(url, artifacts_dir)`` keeps teacher artifacts, and the flag or variable that chose it:
    ``artifacts_dir``, else ``$TGBENCH_ARTIFACTS``, else ``artifacts/`` next to an SQLite store, else
    ``results/artifacts``."""
    if artifacts_dir:
        return Path(artifacts_dir), "--artifacts"
    if os.environ.get("TGBENCH_ARTIFACTS"):
        return Path(os.environ["TGBENCH_ARTIFACTS"]), "$TGBENCH_ARTIFACTS"
    url = resolve_url(url)
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).parent / "artifacts", "--artifacts (default: next to the store)"
    return Path("results") / "artifacts", "--artifacts (default)"


def resolve_url(url: str | None) -> str:
    """The storage URL a ``Store(url)`` opens: ``url``, else ``$TGBENCH_STORAGE``, else the default."""
    return url or os.environ.get("TGBENCH_STORAGE") or DEFAULT_STORAGE


def is_in_memory(url: str) -> bool:
    """Whether ``url`` names an in-memory SQLite database (``sqlite://``, ``sqlite:///:memory:``, a
    ``file::memory:`` or ``mode=memory`` URI)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # not a URL at all: opening it reports that
        return False
    if parsed.drivername.split("+")[0] != "sqlite":
        return False
    database = parsed.database or ""
    return (database in ("", ":memory:") or database.startswith("file::memory:")
            or parsed.query.get("mode") == "memory")


def refuse_in_memory(url: str) -> str:
    """``url``, or :class:`BadInput` when it is an in-memory SQLite database: every cell and worker opens the
    store by its URL, so each would get its own empty database and the suite would never finish."""
    if is_in_memory(url):
        raise BadInput(f"--storage: {url!r} is an in-memory SQLite database, private to each connection, so the "
                       "cells and workers of a suite could never share it; use a file, e.g. "
                       "sqlite:///results/tgbench.db")
    return url


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URL (query string dropped); None for other URLs."""
    if not url.startswith("sqlite:///") or is_in_memory(url):
        return None
    return Path(url.removeprefix("sqlite:///").split("?", 1)[0])


@functools.cache
def optuna_schema() -> tuple[dict[str, set[str]], set[str]]:
    """The schema this Optuna gives a store: table -> column names (its SQLAlchemy models, plus Alembic's own
    ``alembic_version``), and the Alembic revisions it knows (its migration scripts). Read from the installed
    Optuna, so it follows the version in use; nothing is created."""
    from optuna.storages._rdb import models   # (the table definitions RDBStorage creates: no public accessor)

    tables = {name: {c.name for c in table.columns} for name, table in models.BaseModel.metadata.tables.items()}
    tables["alembic_version"] = {"version_num"}
    scripts = Path(models.__file__).parent / "alembic" / "versions"
    revisions = {match.group(1) for path in scripts.glob("*.py")
                 for match in [re.search(r'^revision\s*=\s*["\']([^"\']+)', path.read_text(), re.M)] if match}
    return tables, revisions


def store_problem(con: sqlite3.Connection) -> str | None:
    """Why an SQLite database (opened read-only) is not a tgbench store, or ``None`` when it is one (or has no
    tables yet): every table of Optuna's schema, each with exactly Optuna's columns, no table of another
    application, and a version row Optuna wrote (``version_info.schema_version``, a known Alembic revision)."""
    found = {row[0] for row in con.execute("select name from sqlite_master where type = 'table'")
             if not row[0].startswith("sqlite_")}
    if not found:
        return None
    tables, revisions = optuna_schema()
    foreign = sorted(found - set(tables))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        return f"it holds another application's tables ({shown})"
    for table in sorted(found):
        columns = {row[1] for row in con.execute(f'pragma table_info("{table}")')}
        if columns != tables[table]:
            return f"its table {table!r} has columns {sorted(columns)}, not those of a tgbench (Optuna) store"
    missing = sorted(set(tables) - found)
    if missing:
        return f"{IN_CREATION}: it lacks tables of a tgbench (Optuna) store ({', '.join(missing[:5])})"
    versions = list(con.execute("select schema_version from version_info"))
    alembic = list(con.execute("select version_num from alembic_version"))
    if len(versions) != 1 or not isinstance(versions[0][0], int) or len(alembic) != 1 or alembic[0][0] not in revisions:
        return f"{IN_CREATION}: its version tables do not hold one version Optuna wrote"
    return None


# What a store another process is creating right now looks like for a moment (Optuna creates its tables, then
# writes its version): only Optuna's tables, each with Optuna's columns, some missing or no version yet.
IN_CREATION = "an incomplete store"
CREATION_WAIT_SECONDS = 30   # how long such a file may stay incomplete before it is refused


def refuse_foreign_sqlite(url: str) -> None:
    """``BadInput`` when ``url`` names an existing SQLite file that is not a tgbench store (:func:`store_problem`):
    Optuna creates whatever tables it misses on open, so a file of another application that merely has a table
    called ``studies`` would get Optuna's beside its own. A file that is not SQLite at all is refused the same
    way; an empty file, or an SQLite database without tables, is fine. Only reads: the file is left untouched."""
    path = sqlite_path(url)
    if path is None or not path.exists():
        return
    if not path.is_file():
        raise BadInput(f"--storage: {path} is not a regular file (an SQLite store is a file)")
    if path.stat().st_size == 0:
        return
    deadline = time.monotonic() + CREATION_WAIT_SECONDS
    while True:   # (two workers started together on a new file: one of them is creating the store's tables)
        try:
            # Read-write, though it only reads: a read-only connection to a WAL-mode file (tgbench's own stores)
            # leaves the -wal and -shm files it needs beside it, a read-write one removes them when it closes
            # last. (Not a peek at the file's header with open(): closing any descriptor of the file drops every
            # POSIX lock this process's SQLite connections hold on it — "How To Corrupt An SQLite Database File",
            # 2.2 — and a worker's store went "malformed" so.)
            with contextlib.closing(sqlite3.connect(path, timeout=30)) as con:
                problem = store_problem(con)
        except sqlite3.DatabaseError as exc:   # (a hot journal a killed writer left is rolled back on opening)
            raise BadInput(f"--storage: {path} is not an SQLite database tgbench can use: {exc}") from None
        if not (problem or "").startswith(IN_CREATION) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if problem:
        raise BadInput(f"--storage: {path} is not a tgbench store: {problem}; tgbench will not change it: give "
                       "a new file or an existing tgbench store")


def require_existing(url: str | None, hint: str = "run the suite first, or pass the --storage it used") -> str:
    """For commands that only read the store (report, export): the resolved URL, or :class:`BadInput` when it
    names an SQLite file that does not exist (opening it would create an empty store there)."""
    url = resolve_url(url)
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise BadInput(f"--storage: no store at {path}; {hint}")
    return url


class NoSpaceLeft(OSError):
    """The file system under the store (or its artifacts) is full: a one-line "no space left on <folder>" (exit 1)
    instead of Optuna's "StorageInternalError ... e.g. exceeding max length", which hid the cause."""


FULL_DISK_WORDS = ("database or disk is full", "no space left on device", "disk quota exceeded")


def is_full_disk(exc: BaseException) -> bool:
    """Whether ``exc`` or what caused it (Optuna wraps SQLAlchemy, which wraps sqlite3) says the disk is full."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(words in str(exc).lower() for words in FULL_DISK_WORDS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def write_found_disk_full(exc: BaseException, folder: str | Path) -> bool:
    """Whether a failed write of a file in ``folder`` was a full disk: :func:`is_full_disk`, or torch's zip writer
    (``torch.save``), which words a short write as ``RuntimeError: [enforce fail at inline_container.cc:...]``,
    on a file system with under 64 MB left."""
    if is_full_disk(exc):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    try:
        return shutil.disk_usage(folder).free < 64 * 1024 ** 2
    except OSError:
        return False


def _says_when_full(method):
    """``method`` of :class:`Store`, raising :class:`NoSpaceLeft` naming the folder when a write found the disk
    full (the store is left as SQLite's rollback leaves it: the cell's claim is retried by the next run)."""
    @functools.wraps(method)
    def checked(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except NoSpaceLeft:
            raise
        except Exception as exc:
            if not is_full_disk(exc):
                raise
            raise NoSpaceLeft(f"no space left on {self.full_disk_folder(method.__name__)} "
                                            f"(writing the store {self.url}); free some space and run again: "
                                            "unfinished cells are retried") from exc
    return checked


#: How long an SQLite store's transaction waits for another process's write lock before "database is locked"
#: (pysqlite's default is 5 s; every transaction takes the lock, see :func:`commit_without_fsync`).
BUSY_TIMEOUT_MS = 30_000

#: Every Store of this process (weakly: a Store no one holds is collected as before), for :func:`close_stores`.
OPEN_STORES: weakref.WeakSet = weakref.WeakSet()


def commit_without_fsync(engine, switch_to_wal: bool) -> None:
    """Make every connection of ``engine`` (an SQLite store's) keep its log ahead of the database file (WAL),
    commit without waiting for the disk (``synchronous=NORMAL``) and take the write lock when a transaction
    begins (``BEGIN IMMEDIATE``). ``switch_to_wal``: put the file in WAL mode (a store this Store creates); an
    existing store keeps its mode — one a tgbench before WAL wrote may still be in use by such a tgbench (a long
    run from an older revision), whose deferred transactions would fail at once in WAL mode (below) — and only
    a store already in WAL mode commits without waiting for the disk (in rollback mode that is unsafe).

    Why: a store writes one transaction per record field (Optuna's user attributes), hundreds per run, and SQLite's
    default rollback journal waits for several fsyncs on each: ~10-20 ms a commit on this project's machine, a
    third of the quick start. In WAL mode with ``synchronous=NORMAL`` a commit appends to the log and returns; a
    killed process still loses nothing it committed and never leaves a half transaction — only a power loss or an
    OS crash may drop the last commits, never corrupt the file (SQLite's documentation, "Write-Ahead Logging").
    WAL needs the readers and writers on one machine, which an SQLite store already does (PostgreSQL across
    machines: README). The mode is stored in the file; a connection that cannot switch now (another process in
    a transaction) keeps the file's mode, which is just slower.

    ``BEGIN IMMEDIATE``: Optuna reads, then writes, in one transaction; in WAL mode a transaction that read
    before another process committed cannot write at all (SQLITE_BUSY_SNAPSHOT: "database is locked" at once,
    no waiting; SQLite's "Isolation In SQLite"), where a rollback journal made it wait. Taking the lock at
    the start makes every transaction wait its turn (``busy_timeout``) instead; pysqlite's own transaction
    handling is turned off for this (SQLAlchemy's documented recipe, "Serializable isolation / Savepoints /
    Transactional DDL" for pysqlite)."""
    import sqlalchemy

    def on_connect(connection, _record) -> None:
        connection.isolation_level = None   # (pysqlite's own deferred BEGIN off: on_begin says BEGIN IMMEDIATE)
        cursor = connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        mode = cursor.execute("PRAGMA journal_mode").fetchone()[0]
        if mode != "wal" and switch_to_wal:
            try:
                mode = cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            except sqlite3.OperationalError:   # busy: another connection holds a lock; the next connect tries again
                pass
        if mode == "wal":
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    def on_begin(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    sqlalchemy.event.listen(engine, "connect", on_connect)
    sqlalchemy.event.listen(engine, "begin", on_begin)
    engine.dispose()   # (the connections Optuna opened to create the tables predate the listeners)


def close_stores() -> None:
    """Close the connections of every store this process opened (``tgbench.cli.main`` does, as each command ends).
    The last connection to an SQLite store in WAL mode folds the log into the file and removes it, so the file
    alone is the whole store again — what a user copies or hands to another machine. (A process that ends
    without closing, or is killed, leaves the log beside the file, which the next open folds in: nothing is lost,
    but a copy of the file alone misses what is in the log.) A store stays usable: it reconnects when used."""
    for store in list(OPEN_STORES):
        store.storage.engine.dispose()


class Store:
    """Thin wrapper over ``optuna.storages.RDBStorage`` that knows cells, records and teacher artifacts."""

    @_says_when_full
    def __init__(self, url: str | None = None, artifacts_dir: str | Path | None = None,
                 heartbeat_interval: int | None = None, grace_period: int | None = None):
        self.url = refuse_in_memory(resolve_url(url))
        refuse_foreign_sqlite(self.url)
        db_file = sqlite_path(self.url)
        new_file = db_file is not None and (not db_file.exists() or db_file.stat().st_size == 0)
        if self.url.startswith("sqlite:///"):
            db_path = Path(self.url.removeprefix("sqlite:///"))
            try:
                db_path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BadInput(f"--storage: cannot create {db_path.parent}: {exc.strerror}") from None
        self.heartbeat_interval = heartbeat_interval or HEARTBEAT_INTERVAL
        self.grace_period = grace_period or GRACE_PERIOD
        for attempt in range(3):
            try:
                with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna (stable since 2.9)
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    self.storage = optuna.storages.RDBStorage(_with_driver(self.url),
                                                              heartbeat_interval=self.heartbeat_interval,
                                                              grace_period=self.grace_period)
                break
            except Exception as exc:  # bad scheme, unreachable server, missing driver ...
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                # workers starting together on a fresh store race to create its tables: the loser tries again
                if attempt < 2 and any(race in reason for race in SCHEMA_RACES):
                    time.sleep(0.5 + attempt)
                    continue
                raise BadInput(f"--storage: cannot open {self.url!r}: {reason}") from None
        if db_file is not None:
            commit_without_fsync(self.storage.engine, switch_to_wal=new_file)
        OPEN_STORES.add(self)
        # and when this Store is collected: its engine's pool sits in reference cycles that outlive it until the
        # garbage collector's next pass, and with them the open connections that keep the log apart from the file
        weakref.finalize(self, self.storage.engine.dispose)
        self.artifacts_dir = artifacts_location(self.url, artifacts_dir)[0]

    # ------------------------------------------------------------------ studies and cells
    @_says_when_full
    def study(self, name: str, create: bool = True) -> optuna.Study:
        if not create:
            try:
                return optuna.load_study(study_name=name, storage=self.storage)
            except KeyError:
                # a long run still in its tuning stage has only the studies under its name (``<name>/tuning/<arm>``)
                under = sorted(n for n in self.study_names() if n.startswith(f"{name}/"))
                if under:
                    raise BadInput(f"no study {name!r} in {self.url} yet, only {', '.join(under)}: its run has not "
                                   "reached its final cells (a tuning stage still under way?)") from None
                raise BadInput(f"no study {name!r} in {self.url}; run the suite first") from None
        return optuna.create_study(study_name=name, storage=self.storage, direction="maximize",
                                   load_if_exists=True)

    def study_names(self) -> list[str]:
        return [s.study_name for s in optuna.get_all_study_summaries(self.storage, include_best_trial=False)]

    def cell_records(self, study: optuna.Study, states: tuple[TrialState, ...] | None = None) -> list[CellRecord]:
        """The typed record of every claimed trial (every record but tune trials), in trial order, duplicates
        and still-running claims included."""
        records = (trial_record(t, study.study_name) for t in study.get_trials(deepcopy=False, states=states))
        return [r for r in records if isinstance(r, CellRecord)]

    def done_cells(self, study: optuna.Study) -> set[tuple[str, str]]:
        """(cell key, config hash) of every finished (complete or diverged) cell."""
        return {(r.cell, r.config_hash) for r in self.cell_records(study) if r.done}

    def records(self, study: optuna.Study, accept: dict[str, set[str]] | None = None) -> list[CellRecord]:
        """Finished and failed records, newest per cell; with ``accept`` (cell key -> acceptable config hashes)
        only the cells it names, run under one of their acceptable configs. Duplicate claims are left out."""
        newest: dict[str, CellRecord] = {}
        for record in self.cell_records(study):
            if record.status == Status.DUPLICATE:
                continue
            if accept is not None and record.config_hash not in accept.get(record.cell, ()):
                continue
            prev = newest.get(record.cell)
            # a finished record always beats a failed/interrupted attempt of the same cell
            if prev is None or record.done >= prev.done:
                newest[record.cell] = record
        return list(newest.values())

    @_says_when_full
    def begin(self, study: optuna.Study, key: str, chash: str,
              kind: type[CellRecord] = FewstepCell) -> optuna.Trial:
        """Open a RUNNING trial for a cell (a record of ``kind``): its kind, cell key, config hash, worker and
        status ``running`` are written in the same transaction that creates the trial (no one ever sees a claim
        without its cell), then its first heartbeat."""
        claim = kind(cell=key, config_hash=chash, worker=_this_worker(), status=Status.RUNNING)
        template = optuna.trial.create_trial(state=TrialState.RUNNING,
                                             user_attrs={**claim.fields(), "status": claim.status.value})
        study_id = self.storage.get_study_id_from_name(study.study_name)
        trial_id = self.storage.create_new_trial(study_id, template_trial=template)
        self.storage.record_heartbeat(trial_id)
        return optuna.Trial(study, trial_id)

    @_says_when_full
    def claim(self, study: optuna.Study, key: str, chash: str,
              kind: type[CellRecord] = FewstepCell) -> optuna.Trial | None:
        """This process's RUNNING trial for the cell, or None when the cell is done or another worker holds it
        (the protocol is in the module docstring)."""
        self.fail_stale(study)
        trial = self.begin(study, key, chash, kind)
        holder = self.holder(study, trial)
        if holder is not None:
            self.finish(study, trial, kind(cell=key, config_hash=chash, status=Status.DUPLICATE,
                                           error=f"cell held by trial {holder}"))
            return None
        return trial

    def holder(self, study: optuna.Study, trial: optuna.Trial) -> int | None:
        """Number of the trial that owns ``trial``'s cell instead of it: a done one, or an earlier-numbered
        RUNNING one; None when ``trial`` owns its cell."""
        mine = record_from_attrs(trial.user_attrs, study.study_name)
        for other in study.get_trials(deepcopy=False):
            record = trial_record(other, study.study_name)
            if other.number == trial.number or not isinstance(record, CellRecord) \
                    or (record.cell, record.config_hash) != (mine.cell, mine.config_hash):
                continue
            if record.done or (other.state == TrialState.RUNNING and other.number < trial.number):
                return other.number
        return None

    def busy_cells(self, study: optuna.Study) -> set[tuple[str, str]]:
        """(cell key, config hash) of every cell some live worker is running (stale claims are failed first)."""
        self.fail_stale(study)
        return {(r.cell, r.config_hash) for r in self.cell_records(study, states=(TrialState.RUNNING,))}

    @_says_when_full
    def fail_stale(self, study: optuna.Study) -> None:
        """Fail the RUNNING trials whose worker is gone (step 1 of the protocol in the module docstring)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        silent = self._never_beaten([t._trial_id for t in running]) if running else set()
        old = dt.datetime.now() - dt.timedelta(seconds=self.grace_period)
        for trial in running:
            record = trial_record(trial, study.study_name)
            worker = record.worker if isinstance(record, CellRecord) else None
            if (worker is None or _died_here(worker)
                    or (trial._trial_id in silent and trial.datetime_start is not None and trial.datetime_start < old)):
                try:
                    self.storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
                except optuna.exceptions.UpdateFinishedTrialError:
                    pass  # another worker failed it first

    def _never_beaten(self, trial_ids: list[int]) -> set[int]:
        """Those of ``trial_ids`` without a heartbeat row (Optuna's stale check skips them; we age them by start)."""
        import sqlalchemy

        query = sqlalchemy.text("SELECT trial_id FROM trial_heartbeats WHERE trial_id IN :ids").bindparams(
            sqlalchemy.bindparam("ids", expanding=True))
        with self.storage.engine.connect() as conn:
            beaten = {row[0] for row in conn.execute(query, {"ids": trial_ids})}
        return set(trial_ids) - beaten

    @contextmanager
    def heartbeat(self, trial: optuna.Trial):
        """Record the trial's heartbeat every ``heartbeat_interval`` seconds from a thread while the block runs."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat_interval):
                try:
                    self.storage.record_heartbeat(trial._trial_id)
                except Exception:  # a database hiccup: the next beat retries; only a long silence means stale
                    pass

        thread = threading.Thread(target=beat, name=f"heartbeat-trial-{trial.number}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    @_says_when_full
    def finish(self, study: optuna.Study, trial: optuna.Trial, record: Record) -> None:
        """Write the whole record (:func:`write_record`: its status last), then close the trial: COMPLETE (value
        ``record.trial_value()``, e.g. the final test accuracy) or FAIL.

        Raises ``optuna.exceptions.UpdateFinishedTrialError`` when another worker failed this claim as stale."""
        write_record(trial, record)
        if record.status == Status.COMPLETE:
            study.tell(trial, record.trial_value())
        else:
            study.tell(trial, state=TrialState.FAIL)

    @contextmanager
    def failed_if_raised(self, study: optuna.Study, trial: optuna.Trial, record_type: type[Record], cell: str,
                         config_hash: str):
        """Whatever stops the work inside (Ctrl-C, SIGTERM, a bug, a full disk) finishes ``trial`` as a FAILED
        ``record_type`` record naming the error, then goes on up: a live process never leaves a claim RUNNING. A
        trial already closed (another worker failed it as stale just before) is left as it is."""
        try:
            yield
        except BaseException as exc:
            try:
                self.finish(study, trial, record_type(cell=cell, config_hash=config_hash, status=Status.FAILED,
                                                      error=f"{type(exc).__name__}: {exc}"))
            except optuna.exceptions.UpdateFinishedTrialError:
                pass
            raise

    # ------------------------------------------------------------------ teacher artifacts
    def saved_state_path(self, study: optuna.Study, cell: str, chash: str) -> Path:
        """Where a cell's meta-training state is saved while it runs (``tgbench.resume``): beside the teacher
        artifacts, keyed by the study, the cell and its config hash — not by the trial, since a rerun claims a
        new one and must find it."""
        # (names through the one safe-name function: a plain name keeps the file name it always had, e.g.
        # gtn_cpu|seed=0 -> gtn_cpu_seed_0-<hash>.pt, which a long run's resume depends on)
        folder = child_path(self.artifacts_dir / "saved_states", study.study_name)
        return check_under(folder, folder / f"{safe_name(cell)}-{chash}.pt")

    @_says_when_full
    def save_teacher(self, study: optuna.Study, trial: optuna.Trial, payload: dict) -> str:
        import torch

        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        store = FileSystemArtifactStore(str(self.artifacts_dir))
        before = set(os.listdir(self.artifacts_dir))
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "teacher.pt"
                torch.save(payload, path)
                return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial,
                                       storage=self.storage)
        except BaseException:  # a copy cut short (a full disk, a signal) leaves no half artifact behind
            for name in set(os.listdir(self.artifacts_dir)) - before:
                with contextlib.suppress(OSError):
                    (self.artifacts_dir / name).unlink()
            raise

    def full_disk_folder(self, doing: str) -> Path | str:
        """The folder a full disk stopped: the artifacts' for a teacher, else the SQLite file's (a server's
        database: its URL)."""
        if doing == "save_teacher" or not self.url.startswith("sqlite:///"):
            return self.artifacts_dir if doing == "save_teacher" else self.url
        return Path(self.url.removeprefix("sqlite:///")).parent

    def load_teacher(self, artifact_id: str) -> dict:
        """The payload :meth:`save_teacher` stored, read with ``weights_only=True`` (tensors and plain
        containers; a file holding anything else is refused, never unpickled) and checked to be a dict with a
        ``state_dict`` of tensors."""
        import torch

        store = FileSystemArtifactStore(str(self.artifacts_dir))
        where = f"teacher artifact {artifact_id} under {self.artifacts_dir}"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "teacher.pt"
            try:
                download_artifact(artifact_store=store, file_path=str(path), artifact_id=artifact_id)
            except Exception as exc:
                raise BadInput(f"teacher artifact {artifact_id} not found under {self.artifacts_dir}: {exc}") from None
            try:
                payload = load_weights_only(path)
            except Exception as exc:
                raise BadInput(f"{where}: not a readable teacher ({exc})") from None
        state = payload.get("state_dict") if isinstance(payload, dict) else None
        if not (isinstance(state, dict) and state
                and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())):
            raise BadInput(f"{where}: not a tgbench teacher (expected a dict with a 'state_dict' of tensors)")
        return payload


def write_record(trial: optuna.Trial, record: Record) -> None:
    """Write ``record`` into the trial's user attributes: every field, then the status, last. Each attribute is
    its own transaction, so a worker killed between two of them leaves a partial record; with the status last
    that record still says ``running`` (or whatever its claim said), never done (``tgbench.records``)."""
    for key, value in record.fields().items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("status", record.status.value)


STALE_ERROR = "interrupted: its worker stopped (no heartbeat)"


# the status of a trial that has none of its own (Optuna's state); WAITING and RUNNING: running
STATE_STATUS = {TrialState.COMPLETE: Status.COMPLETE, TrialState.FAIL: Status.FAILED, TrialState.PRUNED: Status.PRUNED}


def trial_record(trial: optuna.trial.FrozenTrial, study_name: str) -> Record:
    """The typed record of a trial (``tgbench.records.record_from_attrs``), with what only the trial's state says:
    a claim still ``running`` in a FAILED trial was failed as stale (its worker died); a trial without a status
    (a tune trial Optuna closed before its record was written, or one written before tune trials had one) has its
    state's."""
    attrs = dict(trial.user_attrs)
    if attrs.get("status") == Status.RUNNING and trial.state == TrialState.FAIL:
        attrs["status"], attrs["error"] = Status.FAILED, STALE_ERROR
    if trial.state == TrialState.PRUNED:
        attrs["status"] = Status.PRUNED
    attrs.setdefault("status", STATE_STATUS.get(trial.state, Status.RUNNING))
    record = record_from_attrs(attrs, study_name)
    record.trial_number = trial.number
    return record


def load_weights_only(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)``: tensors, primitive values and plain containers only, so a file
    holding any other pickled object (which could run code when unpickled) is refused without running it.
    ``FileNotFoundError`` propagates; any other failure is a ``ValueError`` whose message is one short line
    (torch's own spans many and suggests ``weights_only=False``, which tgbench never does)."""
    import pickle
    import re

    import torch

    try:
        # only a regular file: a FIFO would block torch.load forever and a device never end (FileNotFoundError
        # propagates; BadInput's line becomes the ValueError below)
        check_regular_file(path, "tensor file")
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": one line on stderr is all we print
            warnings.simplefilter("ignore")
            return torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise
    except BadInput as exc:
        raise ValueError(str(exc).removeprefix(f"{path}: ")) from None
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f"a pickled {found.group(1)}" if found else "pickle data"
        raise ValueError(f"it holds {what}, not only tensors and plain values; refused without loading it") from None
    except Exception as exc:
        text = " ".join(str(exc).split())
        raise ValueError(f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__) from None


def _with_driver(url: str) -> str:
    """``postgresql://`` means psycopg 3 to SQLAlchemy 2.1; use psycopg2 when only it is installed."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


# ------------------------------------------------------------------ workers
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _this_worker() -> dict:
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": os.getpid()}


def _died_here(worker: dict) -> bool:
    """True when ``worker`` ran on this machine (same host name and boot) and its process no longer exists."""
    if not isinstance(worker, dict) or (worker.get("host"), worker.get("boot")) != (socket.gethostname(), _boot_id()):
        return False
    try:
        os.kill(int(worker["pid"]), 0)
    except ProcessLookupError:
        return True
    except (OSError, KeyError, TypeError, ValueError):
        return False
    return False

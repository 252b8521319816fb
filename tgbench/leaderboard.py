"""The leaderboard: every finished few-step cell in a store, ranked per comparable protocol, with its cost.

``tgbench leaderboard`` reads every study of a store, ranks its arms into tables and hands them over as one frame
(:func:`leaderboard_frame`) to ``tgbench.reporting.leaderboard``, which writes ``LEADERBOARD.md`` +
``LEADERBOARD.csv`` (and one accuracy-vs-compute PNG per table) and the static web page
``LEADERBOARD_site/index.html`` (``tgbench.reporting.site``). Conventions:

* **Only comparable runs share a table.** A table is one (protocol hash, profile); the protocol
  (:func:`tgbench.identity.protocol_of`) is the resolved dataset, the inner loop (steps, batch size, optimiser),
  the learner space and the final-evaluation settings (learners per architecture, held-out architectures).
  Everything else — the method, its params, the outer loop (iterations, meta-batch, lr) — is what a method is
  free to choose, and its cost shows in the compute column. Records written since this module exist carry their
  ``protocol``; older ones get it from the suite saved inside their teacher artifact, and when that is unavailable
  from the few fields every record holds plus the suite name (:func:`tgbench.identity.recorded_protocol`) — so an
  unknown protocol never shares a table with another suite.
* **A row** is one arm of one study under one config hash: its seeds are the same experiment. Accuracy is the
  test accuracy after the last inner step (the report's headline), mean over *complete* seeds with a 95 %
  percentile bootstrap CI (:func:`tgbench.stats.mean_ci`); diverged seeds are counted, not averaged.
* **Compute** is meta-training FLOPs per seed, counted by ``torch.utils.flop_counter.FlopCounterMode`` around
  real ``MetaTrainer.step()`` calls (:func:`tgbench.compute.meta_train_flops`): matmul/convolution FLOPs of the forward, backward
  and double-backward, *not* element-wise work or evaluation. New records store it (``meta_train_flops``); for
  older records the leaderboard measures it from the config in the teacher artifact (n/a when unavailable).
* The **Pareto front** of a table: rows no other row beats on both accuracy (higher) and compute (lower).
* **A row's report** is the run report of its suite and profile where ``tgbench run`` writes it by default
  (``results/<suite>/<profile>/report.md`` under the working directory, ``tgbench.locations.out_location``) and
  it exists; a run written elsewhere with ``--out`` has no link (the store does not record where it went).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tgbench import stats
from tgbench.compute import meta_train_flops
from tgbench.suite.by_kind import suite_from_dict
from tgbench.errors import BadInput
from tgbench.device import label as device_label
from tgbench.identity import protocol_hash, recorded_protocol
from tgbench.provenance import report_provenance
from tgbench.records import FewstepCell, Status
from tgbench.problem import Problem
from tgbench.reporting import leaderboard as leaderboard_report
from tgbench.reporting.leaderboard import COLUMNS
from tgbench.store import Store

DEFAULT_OUT = Path("results") / "LEADERBOARD.md"
# columns of the leaderboard CSV read back as text: a hash or revision of digits only must stay what it was
TEXT_COLUMNS = ("table", "dataset", "profile", "suite", "source", "method", "variant", "config_hash", "finished",
                "revision", "device", "protocol", "report")
RUN_REPORTS = Path("results")   # where `tgbench run` puts <suite>/<profile>/ by default (tgbench.locations)


# ------------------------------------------------------------------------------------------ the protocol


def describe_protocol(p: dict) -> str:
    if p.get("partial"):
        return (f"{p['dataset']}, {p['inner_steps']} steps x batch {p['batch_size']}; learner space and evaluation "
                f"not recorded (no teacher artifact), so only suite {p['suite']!r} shares this table")
    inner, learner, ev = p["inner"], p["learner"], p["evaluation"]
    space = ", ".join(f"{k}={learner[k]}" for k in ("conv_channels", "fc_hidden", "kernel_size", "activation"))
    held_out = f", held-out architectures {ev['architectures']}" if ev.get("architectures") else ""
    return (f"{p['dataset']}, {inner['steps']} {inner['optimizer']} steps x batch {inner['batch_size']}; learner "
            f"space {space} (bn={learner['batch_norm']}, wn={learner['weight_norm']}); final evaluation "
            f"{ev['final_learners']} fresh learner(s) per architecture{held_out}")


# ------------------------------------------------------------------------------------------ compute


# ------------------------------------------------------------------------------------------ rows and tables
@dataclass
class Row:
    study: str
    suite: str
    profile: str
    source: str
    method: str
    variant: str
    config_hash: str
    accuracy: stats.MeanCI
    seeds_complete: int
    seeds_done: int
    diverged: int
    meta_train_seconds: float
    flops: float                 # mean meta-training FLOPs per complete seed (nan: unknown)
    finished: str
    revisions: str
    devices: str = "cpu"         # where its seeds ran (times and last bits differ between device kinds)
    pareto: bool = False


@dataclass
class Table:
    key: str                     # short id: protocol hash + profile
    profile: str
    protocol: dict
    rows: list[Row] = field(default_factory=list)


class _ProtocolResolver:
    """Protocol and compute of a record, from the record itself or (older records) its teacher artifact."""

    def __init__(self, store: Store, log):
        self.store, self.log = store, log
        self._step_flops: dict[str, dict] = {}  # config hash -> {architecture: FLOPs of one meta-step}
        self._artifact_cache: dict[str, dict | None] = {}

    def _artifact(self, record: FewstepCell) -> dict | None:
        artifact = record.teacher_artifact
        if not artifact:
            return None
        if artifact not in self._artifact_cache:
            try:
                payload = self.store.load_teacher(artifact)
                self._artifact_cache[artifact] = {k: payload[k] for k in ("suite", "image_shape", "num_classes")}
            except Exception as exc:  # missing artifact store, unreadable file: degrade, say so
                self.log(f"leaderboard: teacher artifact of {record.suite}/{record.cell} unavailable "
                         f"({type(exc).__name__}); its protocol is partial and its compute n/a")
                self._artifact_cache[artifact] = None
        return self._artifact_cache[artifact]

    def protocol(self, record: FewstepCell, siblings: list[FewstepCell]) -> dict:
        if record.protocol:
            return record.protocol
        # any seed of the same config saved the same suite
        saved = next((s for s in (self._artifact(r) for r in [record, *siblings]) if s is not None), None)
        return recorded_protocol(record, saved["suite"] if saved is not None else None)

    def flops(self, record: FewstepCell, siblings: list[FewstepCell]) -> float:
        if record.meta_train_flops is not None:
            return float(record.meta_train_flops)
        saved = next((s for s in (self._artifact(r) for r in [record, *siblings]) if s is not None), None)
        if saved is None:
            return math.nan
        return self._measure(saved, record)

    def _measure(self, saved: dict, record: FewstepCell) -> float:
        try:
            suite = suite_from_dict(saved["suite"])
            entry = next(e for e in suite.sources if e.name == record.source)
            return meta_train_flops(suite, entry, Problem(saved["image_shape"], saved["num_classes"]),
                                    record.seed, int(record.outer_iterations),
                                    cache=self._step_flops.setdefault(record.config_hash, {}))
        except Exception as exc:  # e.g. a plugin method that is not installed here
            self.log(f"leaderboard: cannot count FLOPs of {record.suite}/{record.cell}: "
                     f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            return math.nan


def collect(stores: Store | list[Store], log=print) -> list[Table]:
    """Every finished few-step arm in the store(s), grouped into comparable tables, ranked, Pareto front marked.

    Several stores: an arm (study, source, config hash) that two of them hold with the same records (a copied
    store) is ranked once; with different records (other seeds, other results) the two are refused, naming both
    stores (``BadInput``): a row is one measurement of one configuration, and ranking both would put the same
    experiment twice in a table and its Pareto front with nothing to say which is which."""
    tables: dict[tuple[str, str], Table] = {}
    seen: dict[tuple[str, str, str], tuple[str, tuple]] = {}   # arm -> (store, its records' fingerprint)
    for store in [stores] if isinstance(stores, Store) else stores:
        _collect_store(store, tables, log, seen)
    for table in tables.values():
        table.rows.sort(key=lambda r: (-_or(r.accuracy.mean, -1.0), r.suite, r.source))
        mark_pareto(table.rows)
    return sorted(tables.values(), key=lambda t: (t.protocol.get("dataset") or "", t.profile, t.key))


def fingerprint(cells: list[FewstepCell]) -> tuple:
    """What two stores must agree on to hold the same records of an arm: each seed's status and scores."""
    return tuple(sorted((r.seed, r.status.value, r.test_acc_final, r.val_acc_final, r.outer_iterations)
                        for r in cells))


def _already_ranked(seen: dict, arm: tuple[str, str, str], store: Store, cells: list[FewstepCell]) -> bool:
    """True when another store already gave the same records of ``arm``; ``BadInput`` when it gave others."""
    mine = fingerprint(cells)
    if arm not in seen:
        seen[arm] = (store.url, mine)
        return False
    first, theirs = seen[arm]
    if theirs == mine:
        return True
    seeds = sorted({s[0] for s in set(theirs) ^ set(mine)})
    raise BadInput(f"--storage: {first} and {store.url} hold different records of study {arm[0]!r} arm {arm[1]!r} "
                   f"(config {arm[2]}; seed(s) {', '.join(map(str, seeds))} differ): a leaderboard ranks one "
                   "measurement per configuration; name one of the two stores, or merge their cells into one")


def _collect_store(store: Store, tables: dict[tuple[str, str], Table], log, seen: dict) -> None:
    resolver = _ProtocolResolver(store, log)
    for name in sorted(store.study_names()):
        study = store.study(name, create=False)
        # few-step cells, by kind (a nas_proxy study holds its teachers' cells beside its proxy scores)
        records = [r for r in store.records(study) if isinstance(r, FewstepCell) and r.done]
        by_arm: dict[tuple[str, str], list[FewstepCell]] = {}
        for r in records:
            by_arm.setdefault((r.source, r.config_hash), []).append(r)
        for (source, chash), cells in sorted(by_arm.items()):
            cells.sort(key=lambda r: r.seed)
            if _already_ranked(seen, (name, source, chash), store, cells):
                continue
            first = cells[0]
            protocol = resolver.protocol(first, cells[1:])
            profile = _or_missing(first.profile, "?")
            pkey = (protocol_hash(protocol), profile)
            table = tables.setdefault(pkey, Table(f"{pkey[0][:8]}-{profile}", profile, protocol))
            complete = [r for r in cells if r.status == Status.COMPLETE]
            flops = [resolver.flops(r, cells) for r in complete]
            table.rows.append(Row(
                study=name, suite=_or_missing(first.suite, name), profile=profile, source=source,
                method=_or_missing(first.method, "?"), variant=_or_missing(first.variant, ""), config_hash=chash,
                accuracy=stats.mean_ci([r.test_acc_final for r in complete]),
                seeds_complete=len(complete), seeds_done=len(cells),
                diverged=sum(r.status == Status.DIVERGED for r in cells),
                meta_train_seconds=_mean([r.meta_train_seconds for r in complete]),
                flops=_mean(flops), finished=max((r.finished or "") for r in cells)[:10],
                revisions=", ".join(sorted({_or_missing(r.revision, "unknown") for r in cells})),
                devices=", ".join(sorted({device_label(r) for r in cells}))))


def _or_missing(value, default):
    """``value``, or ``default`` for a field the record never held (as ``dict.get(key, default)`` read them)."""
    return default if value is None else value


def _mean(values) -> float:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(vals) / len(vals) if vals else math.nan


def _or(x: float, default: float) -> float:
    return default if math.isnan(x) else x


def mark_pareto(rows: list[Row]) -> None:
    """A row is on the front if it has accuracy and compute and no other row is at least as accurate for at
    most the compute, strictly better on one of the two."""
    known = [r for r in rows if not math.isnan(r.accuracy.mean) and not math.isnan(r.flops)]
    for r in rows:
        r.pareto = r in known and not any(
            o is not r and o.accuracy.mean >= r.accuracy.mean and o.flops <= r.flops
            and (o.accuracy.mean > r.accuracy.mean or o.flops < r.flops) for o in known)


# ------------------------------------------------------------------------------------------ the frame
def leaderboard_frame(tables: list[Table]) -> pd.DataFrame:
    """One row per arm, table by table in rank order (``tgbench.reporting.leaderboard.COLUMNS``): what the
    leaderboard's CSV holds and its Markdown and figures are rendered from."""
    rows = []
    for table in tables:
        for rank, r in enumerate(table.rows, 1):
            rows.append({"table": table.key, "dataset": table.protocol.get("dataset"), "profile": table.profile,
                         "rank": rank, "suite": r.suite, "source": r.source, "method": r.method,
                         "variant": r.variant, "config_hash": r.config_hash, "test_acc_mean": r.accuracy.mean,
                         "test_acc_ci_low": r.accuracy.low, "test_acc_ci_high": r.accuracy.high,
                         "seeds_complete": r.seeds_complete, "diverged": r.diverged,
                         "meta_train_seconds": r.meta_train_seconds, "meta_train_flops": r.flops,
                         "pareto": r.pareto, "finished": r.finished, "revision": r.revisions,
                         "device": r.devices, "protocol": describe_protocol(table.protocol)})
    return pd.DataFrame(rows, columns=COLUMNS)


def with_report_links(frame: pd.DataFrame, out: Path) -> pd.DataFrame:
    """``frame`` with its ``report`` column: each row's default run report (module docstring) relative to the
    folder of the leaderboard's Markdown ``out``, "" where there is none."""
    folder = Path(out).parent.resolve()

    def link(suite, profile) -> str:
        report = RUN_REPORTS / str(suite) / str(profile) / "report.md"
        return os.path.relpath(report.resolve(), folder) if report.is_file() else ""

    return frame.assign(report=[link(s, p) for s, p in zip(frame["suite"], frame["profile"])])


def portable(arg: str) -> str:
    """A path or SQLite URL of the provenance as a reader elsewhere can use it: relative to the working directory
    when it lies under it, else only its file name (a scratch folder of one machine names nothing a reader has)."""
    prefix = "sqlite:///" if arg.startswith("sqlite:///") else ""
    path = arg.removeprefix(prefix)
    if not path.startswith("/"):
        return arg
    try:
        return prefix + str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return prefix + f"<{Path(path).name}>"


def build_leaderboard(storages: list[str] | None, out: str | None, artifacts_dir: str | None = None,
                      command: str = "", log=print, keep_csv: str | None = None) -> Path:
    """What ``tgbench leaderboard`` does: read the whole store(s), write the Markdown, CSV and figures.
    ``artifacts_dir`` (default: each SQLite store's own) applies to every store. ``keep_csv`` (``--keep``): the
    CSV of an earlier leaderboard whose tables the stores do not hold are kept as they were, after the stores'
    (a committed result whose store is gone stays on the board; a table the stores hold is ranked from them)."""
    for url in storages or []:  # reading must not create an empty SQLite store where a typo'd path points
        if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
            raise BadInput(f"--storage: no store at {url.removeprefix('sqlite:///')}")
    kept = read_leaderboard_csv(keep_csv, "--keep") if keep_csv else None
    stores = [Store(url, artifacts_dir) for url in (storages or [None])]
    frame = leaderboard_frame(collect(stores, log))
    store_line = ", ".join(portable(s.url) for s in stores)
    if kept is not None:
        kept = kept[~kept["table"].isin(set(frame["table"]))]
        frame = pd.concat([frame, kept.reindex(columns=frame.columns)], ignore_index=True)
        store_line += (f"; kept from {portable(keep_csv)}: {kept['table'].nunique()} table(s) the stores do not "
                       "hold")
    out_path = Path(out) if out else DEFAULT_OUT
    command = " ".join(portable(arg) for arg in (command or "tgbench leaderboard").split(" "))
    meta = {**report_provenance(command=command).as_meta(), "store": store_line}
    leaderboard_report.write_report(out_path, with_report_links(frame, out_path), meta)
    log(f"leaderboard: {frame['table'].nunique()} table(s), {len(frame)} row(s) -> {out_path} "
        f"(web page: {leaderboard_report.site_dir(out_path) / 'index.html'})")
    return out_path


def read_leaderboard_csv(csv: str, flag: str) -> pd.DataFrame:
    """The frame of a leaderboard CSV an earlier ``tgbench leaderboard`` wrote (columns it did not write yet:
    n/a); a file that is not one is bad input named by ``flag``."""
    try:
        frame = pd.read_csv(csv, keep_default_na=False, na_values=[""], dtype=dict.fromkeys(TEXT_COLUMNS, str))
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BadInput(f"{flag}: cannot read {csv}: {exc}") from None
    missing = [c for c in COLUMNS if c not in frame and c not in ("device", "report")]  # (newer than the CSVs)
    if missing:
        raise BadInput(f"{flag}: {csv} is not a leaderboard CSV (no column {', '.join(missing)})")
    return frame.reindex(columns=COLUMNS)


def build_page_from_csv(csv: str, out: str | None, command: str = "", log=print) -> Path:
    """``tgbench leaderboard --from-csv``: the web page of a leaderboard an earlier ``tgbench leaderboard`` wrote,
    from its CSV (the frame itself) when its stores are gone, beside the Markdown ``out``, whose provenance lines
    the page lists (plus the command that rendered it). The Markdown, CSV and figures are left as they are;
    columns an older tgbench did not write show as n/a."""
    out_path = Path(out) if out else DEFAULT_OUT
    frame = read_leaderboard_csv(csv, "--from-csv")
    try:
        meta = leaderboard_report.provenance_of_markdown(out_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"--from-csv: cannot read the Markdown {out_path} beside {csv}: {exc}") from None
    frame = with_report_links(frame, out_path)
    command = " ".join(portable(arg) for arg in (command or f"tgbench leaderboard --from-csv {csv}").split(" "))
    page = leaderboard_report.write_site_only(out_path, frame, {**meta, "page": command})
    log(f"leaderboard: web page of {len(frame)} row(s) from {csv} -> {page}")
    return page

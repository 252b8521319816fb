"""The leaderboard: every finished few-step cell in a store, ranked per comparable protocol, with its cost.

``tgbench leaderboard`` reads every study of a store and writes ``LEADERBOARD.md`` + ``LEADERBOARD.csv`` (and
one accuracy-vs-compute PNG per table). Conventions:

* **Only comparable runs share a table.** A table is one (protocol hash, profile); the protocol
  (:func:`tgbench.compute.protocol_of`) is the resolved dataset, the inner loop (steps, batch size, optimiser), the learner space
  and the final-evaluation settings (learners per architecture, held-out architectures). Everything else — the
  method, its params, the outer loop (iterations, meta-batch, lr) — is what a method is free to choose, and its
  cost shows in the compute column. Records written since this module exist carry their ``protocol``; older
  ones get it from the suite saved inside their teacher artifact, and when that is unavailable from the few
  fields every record holds plus the suite name — so an unknown protocol never shares a table with another suite.
* **A row** is one arm of one study under one config hash: its seeds are the same experiment. Accuracy is the
  test accuracy after the last inner step (the report's headline), mean over *complete* seeds with a 95 %
  percentile bootstrap CI (:func:`tgbench.stats.mean_ci`); diverged seeds are counted, not averaged.
* **Compute** is meta-training FLOPs per seed, counted by ``torch.utils.flop_counter.FlopCounterMode`` around
  real ``MetaTrainer.step()`` calls (:func:`tgbench.compute.meta_train_flops`): matmul/convolution FLOPs of the forward, backward
  and double-backward, *not* element-wise work or evaluation. New records store it (``meta_train_flops``); for
  older records the leaderboard measures it from the config in the teacher artifact (n/a when unavailable).
* The **Pareto front** of a table: rows no other row beats on both accuracy (higher) and compute (lower).
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from tgbench import stats  # noqa: E402
from tgbench.compute import meta_train_flops, protocol_of  # noqa: E402
from tgbench.errors import BadInput  # noqa: E402
from tgbench.device import label as device_label  # noqa: E402
from tgbench.provenance import git_revision, machine  # noqa: E402
from tgbench.records import FewstepCell, Status  # noqa: E402
from tgbench.problem import Problem  # noqa: E402
from tgbench.store import Store, config_hash  # noqa: E402

DEFAULT_OUT = Path("results") / "LEADERBOARD.md"


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
        for r in [record, *siblings]:  # any seed of the same config saved the same suite
            saved = self._artifact(r)
            if saved is not None:
                entry = next((e for e in saved["suite"]["sources"]
                              if (e.get("label") or e["method"]) == record.source), None)
                return protocol_of(saved["suite"], record.dataset_resolved, entry)
        return {"partial": True, "suite": record.suite, "dataset": record.dataset_resolved,
                "inner_steps": record.inner_steps, "batch_size": record.batch_size}

    def flops(self, record: FewstepCell, siblings: list[FewstepCell]) -> float:
        if record.meta_train_flops is not None:
            return float(record.meta_train_flops)
        saved = next((s for s in (self._artifact(r) for r in [record, *siblings]) if s is not None), None)
        if saved is None:
            return math.nan
        return self._measure(saved, record)

    def _measure(self, saved: dict, record: FewstepCell) -> float:
        from tgbench.config import suite_from_dict

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
    """Every finished few-step arm in the store(s), grouped into comparable tables, ranked, Pareto front marked."""
    tables: dict[tuple[str, str], Table] = {}
    for store in [stores] if isinstance(stores, Store) else stores:
        _collect_store(store, tables, log)
    for table in tables.values():
        table.rows.sort(key=lambda r: (-_or(r.accuracy.mean, -1.0), r.suite, r.source))
        mark_pareto(table.rows)
    return sorted(tables.values(), key=lambda t: (t.protocol.get("dataset") or "", t.profile, t.key))


def _collect_store(store: Store, tables: dict[tuple[str, str], Table], log) -> None:
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
            first = cells[0]
            protocol = resolver.protocol(first, cells[1:])
            profile = _or_missing(first.profile, "?")
            pkey = (config_hash(protocol), profile)
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


# ------------------------------------------------------------------------------------------ writing
def _fmt_flops(flops: float) -> str:
    if math.isnan(flops):
        return "n/a"
    giga = flops / 1e9
    return f"{giga:,.0f}" if giga >= 100 else f"{giga:.3g}"


HEADER = ["rank", "source", "suite", "variant", "test acc, last inner step (mean % [95 % CI])", "seeds",
          "meta-train time (s/seed)", "meta-train compute (GFLOP/seed)", "Pareto", "measured", "revision", "device"]


def table_lines(table: Table, figure: str | None) -> list[str]:
    from tgbench.report import md_table, fmt_pct_ci

    body = []
    for i, r in enumerate(table.rows, 1):
        seeds = f"{r.seeds_complete}" + (f" (+{r.diverged} diverged)" if r.diverged else "")
        body.append([i, r.source, r.suite, r.variant, fmt_pct_ci(r.accuracy), seeds,
                     "n/a" if math.isnan(r.meta_train_seconds) else f"{r.meta_train_seconds:.1f}",
                     _fmt_flops(r.flops), "★" if r.pareto else "", r.finished, r.revisions, r.devices])
    lines = [f"## {table.protocol.get('dataset')} · profile `{table.profile}` · protocol `{table.key}`", "",
             f"Protocol: {describe_protocol(table.protocol)}.", "", *md_table(HEADER, body), ""]
    front = sorted((r for r in table.rows if r.pareto), key=lambda r: r.flops)
    if front:
        lines += ["Cost-aware view — the Pareto front, cheapest first (each step buys accuracy with compute): "
                  + " → ".join(f"{r.suite}/{r.source} ({100 * r.accuracy.mean:.2f} % for {_fmt_flops(r.flops)} "
                               "GFLOP)" for r in front) + ".", ""]
    if figure:
        lines += [f"Accuracy vs meta-training compute, Pareto front in red: ![pareto]({figure})", ""]
    return lines


def pareto_figure(table: Table, path: Path) -> Path | None:
    rows = [r for r in table.rows if not math.isnan(r.flops) and not math.isnan(r.accuracy.mean)]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for r in rows:
        low = r.accuracy.mean - (r.accuracy.low if not math.isnan(r.accuracy.low) else r.accuracy.mean)
        high = (r.accuracy.high if not math.isnan(r.accuracy.high) else r.accuracy.mean) - r.accuracy.mean
        ax.errorbar(r.flops / 1e9, 100 * r.accuracy.mean, yerr=[[100 * low], [100 * high]], fmt="o",
                    capsize=3, color="tab:red" if r.pareto else "tab:blue")
        ax.annotate(f"{r.suite}/{r.source}", (r.flops / 1e9, 100 * r.accuracy.mean), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    front = sorted((r for r in rows if r.pareto), key=lambda r: r.flops)
    ax.plot([r.flops / 1e9 for r in front], [100 * r.accuracy.mean for r in front], "--", color="tab:red",
            drawstyle="steps-post", label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("meta-training compute per seed (GFLOP, FlopCounterMode)")
    ax.set_ylabel("test accuracy after the last inner step (%)")
    ax.set_title(f"{table.protocol.get('dataset')} · {table.profile} · {table.key}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_leaderboard(tables: list[Table], out: Path, meta: dict[str, str]) -> list[Path]:
    """``out`` (Markdown), ``out`` with ``.csv`` (one row per arm) and ``<stem>_figures/pareto_<table>.png``."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig_dir = out.parent / f"{out.stem}_figures"
        fig_dir.mkdir(exist_ok=True)
    except OSError as exc:
        raise BadInput(f"--out: cannot write to {out.parent}: {exc.strerror}") from None
    lines = ["# tgbench leaderboard", "",
             "Few-step teaching: a freshly initialised learner trains for the protocol's inner steps on each "
             "source's data; accuracy is its test accuracy after the last step, mean over complete seeds with a "
             "95 % percentile bootstrap CI (1000 resamples). Only runs under the same protocol share a table. "
             "Compute = matmul/conv FLOPs of meta-training per seed (`torch.utils.flop_counter`, forward + "
             "backward + double backward, evaluation excluded). ★ = on the accuracy-vs-compute Pareto front.", ""]
    lines += [f"- {k}: `{v}`" for k, v in meta.items()] + [""]
    written, csv_rows = [], []
    if not tables:
        lines += ["No finished few-step cells in the store.", ""]
    for table in tables:
        fig = pareto_figure(table, fig_dir / f"pareto_{table.key}.png")
        if fig is not None:
            written.append(fig)
        lines += table_lines(table, f"{fig_dir.name}/{fig.name}" if fig else None)
        for rank, r in enumerate(table.rows, 1):
            csv_rows.append({"table": table.key, "dataset": table.protocol.get("dataset"), "profile": table.profile,
                             "rank": rank, "suite": r.suite, "source": r.source, "method": r.method,
                             "variant": r.variant, "config_hash": r.config_hash, "test_acc_mean": r.accuracy.mean,
                             "test_acc_ci_low": r.accuracy.low, "test_acc_ci_high": r.accuracy.high,
                             "seeds_complete": r.seeds_complete, "diverged": r.diverged,
                             "meta_train_seconds": r.meta_train_seconds, "meta_train_flops": r.flops,
                             "pareto": r.pareto, "finished": r.finished, "revision": r.revisions,
                             "device": r.devices, "protocol": describe_protocol(table.protocol)})
    out.write_text("\n".join(lines))
    csv = out.with_suffix(".csv")
    pd.DataFrame(csv_rows, columns=["table", "dataset", "profile", "rank", "suite", "source", "method", "variant",
                                    "config_hash", "test_acc_mean", "test_acc_ci_low", "test_acc_ci_high",
                                    "seeds_complete", "diverged", "meta_train_seconds", "meta_train_flops",
                                    "pareto", "finished", "revision", "device", "protocol"]).to_csv(csv, index=False)
    return [out, csv, *written]


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
                      command: str = "", log=print) -> Path:
    """What ``tgbench leaderboard`` does: read the whole store(s), write the Markdown, CSV and figures.
    ``artifacts_dir`` (default: each SQLite store's own) applies to every store."""
    for url in storages or []:  # reading must not create an empty SQLite store where a typo'd path points
        if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
            raise BadInput(f"--storage: no store at {url.removeprefix('sqlite:///')}")
    stores = [Store(url, artifacts_dir) for url in (storages or [None])]
    tables = collect(stores, log)
    out_path = Path(out) if out else DEFAULT_OUT
    command = " ".join(portable(arg) for arg in (command or "tgbench leaderboard").split(" "))
    meta = {"command": command, "store": ", ".join(portable(s.url) for s in stores),
            "machine": machine(),
            "torch": torch.__version__, "leaderboard revision": git_revision(),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    write_leaderboard(tables, out_path, meta)
    log(f"leaderboard: {len(tables)} table(s), {sum(len(t.rows) for t in tables)} row(s) -> {out_path}")
    return out_path

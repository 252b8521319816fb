"""Writes a suite's report (markdown, CSVs, figures) from plain DataFrames.

The runner builds a :class:`ReportInputs` from the store; this module only formats. ``report.md`` is a pure
function of the inputs (every interval is a seeded bootstrap from :mod:`tgbench.stats`); the PNGs are not
byte-reproducible (matplotlib metadata, fonts) but show the same data.

Statistics conventions (also stated in the report itself): means, intervals and p-values use complete cells
only; diverged and failed cells are counted per source but excluded. Intervals are 95 % percentile
bootstrap CIs over seeds (1000 resamples, :func:`tgbench.stats.mean_ci`). Sources evaluated on different
resolved datasets are never put in the same table, p-value matrix or figure panel.
"""
from __future__ import annotations

import errno
import hashlib
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tgbench import stats  # noqa: E402
from tgbench.records import Status  # noqa: E402

HEADER_KEYS = ("suite", "profile", "revision", "command", "overrides", "machine", "created")
UNKNOWN_DATASET = "(unknown dataset)"


@dataclass
class ReportInputs:
    """Everything a report is made of; see the module docstring of the runner for how it is assembled.

    * ``summary``: one row per cell: ``source, method, variant, seed, status`` (a ``Status`` value), ``dataset_resolved,
      test_acc_final, val_acc_final`` (fractions in [0, 1]), ``meta_train_seconds, outer_iterations``.
    * ``curves``: long ``source, seed, outer_iter, val_acc, test_acc`` (accuracy during meta-training).
    * ``steps``: long ``source, seed, inner_step, test_acc, val_acc`` (final teachers; step 0 = at init).
    * ``samples``: source -> ``(rows, classes, C, H, W)`` images in [0, 1]; ``sample_steps``: source -> the
      inner step of each row.
    * ``meta``: suite, profile, revision, command, machine, torch, created (ISO time), and anything else.
    """

    summary: pd.DataFrame
    curves: pd.DataFrame
    steps: pd.DataFrame
    samples: dict[str, np.ndarray] = field(default_factory=dict)
    sample_steps: dict[str, list[int]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    held_out: pd.DataFrame = field(default_factory=pd.DataFrame)
    # a tuning stage's per-arm space, budget and chosen values (``tune.tuning_frame``); empty without one
    tuning: pd.DataFrame = field(default_factory=pd.DataFrame)
    # long ``source, seed, phase, seconds`` (``runner.phase_frame``): where each cell's wall time went
    phases: pd.DataFrame = field(default_factory=pd.DataFrame)


# --------------------------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class SourceRow:
    """One line of a results table: a source's aggregate over its cells on one resolved dataset."""

    source: str
    variant: str
    n_cells: int
    n_complete: int
    n_diverged: int
    n_failed: int
    test: stats.MeanCI
    val: stats.MeanCI
    meta_train_seconds: float


def _source_row(source: str, cells: pd.DataFrame) -> SourceRow:
    ok = cells[cells["status"] == Status.COMPLETE.value]
    variants = sorted({str(v) for v in cells["variant"].dropna()})
    secs = ok["meta_train_seconds"].dropna()
    return SourceRow(
        source=str(source),
        variant=", ".join(variants),
        n_cells=len(cells),
        n_complete=len(ok),
        n_diverged=int((cells["status"] == Status.DIVERGED.value).sum()),
        n_failed=int((cells["status"] == Status.FAILED.value).sum()),
        test=stats.mean_ci(ok["test_acc_final"]),
        val=stats.mean_ci(ok["val_acc_final"]),
        meta_train_seconds=float(secs.mean()) if len(secs) else math.nan,
    )


def source_rows(summary: pd.DataFrame) -> list[SourceRow]:
    """Rows of one dataset's table, by mean test accuracy descending (no complete cell: last; ties: name)."""
    rows = [_source_row(s, g) for s, g in summary.groupby("source", sort=True)]

    def key(r: SourceRow) -> tuple:
        m = r.test.mean
        return (math.isnan(m), -m if not math.isnan(m) else 0.0, r.source)

    return sorted(rows, key=key)


def datasets(summary: pd.DataFrame) -> list[str]:
    """Resolved datasets in the summary, sorted; a missing value is its own group."""
    return sorted(summary["dataset_resolved"].fillna(UNKNOWN_DATASET).astype(str).unique())


def _by_dataset(summary: pd.DataFrame, dataset: str) -> pd.DataFrame:
    return summary[summary["dataset_resolved"].fillna(UNKNOWN_DATASET).astype(str) == dataset]


def fmt_pct_ci(ci: stats.MeanCI) -> str:
    """``"97.31 % [96.90, 97.72]"`` for fractions; ``"—"`` with no data, ``"[n/a]"`` with one value."""
    if math.isnan(ci.mean):
        return "—"
    if math.isnan(ci.low) or math.isnan(ci.high):
        return f"{100 * ci.mean:.2f} % [n/a]"
    return f"{100 * ci.mean:.2f} % [{100 * ci.low:.2f}, {100 * ci.high:.2f}]"


def _fmt_p(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.3g}"


def _cell(text: Any) -> str:
    """Markdown table cell: pipes escaped, newlines flattened."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return lines


RESULTS_HEADER = [
    "source",
    "variant",
    "seeds completed",
    "test acc, last inner step (mean % [95 % CI])",
    "val acc (mean % [95 % CI])",
    "mean meta-train time (s)",
    "diverged",
    "failed",
]


def results_table(rows: list[SourceRow]) -> list[str]:
    """Markdown lines of one results table."""
    body = [
        [
            r.source,
            r.variant,
            f"{r.n_complete}/{r.n_cells}",
            fmt_pct_ci(r.test),
            fmt_pct_ci(r.val),
            "—" if math.isnan(r.meta_train_seconds) else f"{r.meta_train_seconds:.1f}",
            r.n_diverged,
            r.n_failed,
        ]
        for r in rows
    ]
    return md_table(RESULTS_HEADER, body)


def p_value_matrix(summary: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Pairwise Welch p-values of ``test_acc_final`` over complete cells, rows/columns in ``order``."""
    ok = summary[summary["status"] == Status.COMPLETE.value]
    return stats.pairwise_p_values(ok, "source", "test_acc_final", test="welch", order=order)


def p_value_table(matrix: pd.DataFrame) -> list[str]:
    names = [str(c) for c in matrix.columns]
    body = [
        [names[i]] + ["—" if i == j else _fmt_p(float(matrix.iat[i, j])) for j in range(len(names))]
        for i in range(len(names))
    ]
    return md_table(["source"] + names, body)


# --------------------------------------------------------------------------------------------- markdown


def _code(text: Any) -> str:
    s = str(text)
    ticks = "``" if "`" in s else "`"
    pad = " " if ticks == "``" else ""
    return f"{ticks}{pad}{s}{pad}{ticks}"


def header_lines(meta: dict[str, Any]) -> list[str]:
    """Title and the provenance list: the fixed keys first, then any other meta keys sorted."""
    g = meta.get
    lines = [f"# tgbench report: {g('suite', '?')}", ""]
    lines += [
        f"- **suite**: {g('suite', '?')}",
        f"- **profile**: {g('profile', '?')}",
        f"- **revision**: {_code(g('revision', '?'))}",
        f"- **command**: {_code(g('command', '?'))}",
    ]
    if g("overrides"):  # the suite's `--set KEY=VALUE` overrides (tgbench.config.load_suite), part of its cells' hashes
        lines.append(f"- **overrides**: {', '.join(_code(f'--set {o}') for o in g('overrides'))}")
    lines += [
        f"- **machine**: {g('machine', '?')}",
        f"- **date**: {g('created', '?')}",
    ]
    lines += [f"- **{k}**: {meta[k]}" for k in sorted(meta, key=str) if k not in HEADER_KEYS]
    return lines + [""]


def _method_note(meta: dict[str, Any]) -> str:
    return (
        f"*Produced by {_code(meta.get('command', '?'))} with profile `{meta.get('profile', '?')}`. "
        "Accuracies are test/validation accuracy of a freshly initialised learner after the last inner step, "
        "averaged over the completed seeds; brackets are 95 % percentile bootstrap CIs over seeds "
        "(scipy.stats.bootstrap, 1000 resamples, seed 0; [n/a] = a single seed). Diverged and failed cells "
        "are counted but excluded from the means, times and p-values.*"
    )


def comparison_frame(cells: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Every pair of sources (in table order): the difference of mean test accuracy with a 95 % bootstrap CI,
    the Welch p-value and its Holm–Bonferroni adjustment over all pairs of the table."""
    ok = cells[cells["status"] == Status.COMPLETE.value]
    values = {s: ok.loc[ok["source"] == s, "test_acc_final"].to_numpy(dtype=float) for s in order}
    rows = []
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            diff = stats.difference_ci(values[a], values[b])
            rows.append({"a": a, "b": b, "difference": diff.mean, "low": diff.low, "high": diff.high,
                         "p": stats.welch_p(values[a], values[b])})
    frame = pd.DataFrame(rows, columns=["a", "b", "difference", "low", "high", "p"])
    frame["p_holm"] = stats.holm(frame["p"].tolist()) if len(frame) else []
    return frame


def comparison_table(frame: pd.DataFrame) -> list[str]:
    def pp(v: float) -> str:
        return "n/a" if math.isnan(v) else f"{100 * v:+.2f}"

    body = [[f"{r.a} − {r.b}", f"{pp(r.difference)} [{pp(r.low)}, {pp(r.high)}]", _fmt_p(r.p), _fmt_p(r.p_holm),
             "yes" if not math.isnan(r.p_holm) and r.p_holm < 0.01 else "no"]
            for r in frame.itertuples()]
    return md_table(["pair", "test acc difference (pp [95 % CI])", "Welch p", "Holm p", "significant (Holm p < 0.01)"],
                     body)


def convergence_flags(curves: pd.DataFrame, summary: pd.DataFrame) -> dict[str, bool]:
    """Source -> whether its seed-averaged validation curve (complete cells) was still rising over the last
    20 % of its outer iterations (``stats.still_rising``)."""
    long = _complete_only(curves, summary)
    if long.empty:
        return {}
    mean = long.groupby(["source", "outer_iter"], as_index=False)["val_acc"].mean()
    return {str(src): stats.still_rising(g["outer_iter"].tolist(), g["val_acc"].tolist())
            for src, g in mean.groupby("source")}


PHASE_ORDER = ["meta_training", "checks", "final_evaluation", "held_out", "samples", "flop_counting", "teacher_save"]


def phase_section(phases: pd.DataFrame) -> list[str]:
    """Mean wall seconds per cell and phase, per source, with each phase's share of the cell's time."""
    if phases.empty:
        return []
    table = phases.groupby(["source", "phase"], sort=False)["seconds"].mean().unstack("phase").fillna(0.0)
    columns = [p for p in PHASE_ORDER if p in table.columns] + [p for p in table.columns if p not in PHASE_ORDER]
    table = table[columns]
    rows = []
    for source, row in table.iterrows():
        total = float(row.sum())
        rows.append([source, *[f"{v:.1f} ({100 * v / total:.0f} %)" if total else f"{v:.1f}" for v in row],
                     f"{total:.1f}"])
    return (["## Where the time went (mean wall seconds per cell)", "",
             "meta_training = the outer steps; checks = validation/test checks during meta-training; "
             "final_evaluation = fresh learners scored after every inner step; held_out = the held-out "
             "architectures; samples = the sample grid; flop_counting = the leaderboard's compute measure; "
             "teacher_save = the artifact. The tuning stage's time is in its own table.", ""]
            + md_table(["source", *columns, "total"], rows) + [""])


def tuning_section(tuning: pd.DataFrame) -> list[str]:
    """The tuning stage's table: what each arm tuned, with what budget, and what it chose (validation only)."""
    if tuning.empty:
        return []
    rows = [[r.arm, r.space, r.trials, r.outer_iterations_per_trial, r.chosen,
             "–" if pd.isna(r.best_val_acc) else f"{100 * r.best_val_acc:.2f}", f"{r.tuning_seconds:.0f}"]
            for r in tuning.itertuples()]
    return (["## Tuning stage (validation split)", "",
             "Every arm was tuned with the same budget before the comparison below: Optuna TPE, the same number of "
             "trials per arm, each trial meta-training one teacher for the same number of outer iterations "
             "(fewer only where the arm's own budget is smaller). The chosen values are applied to the final "
             "seeds, which are reported on test.", ""]
            + md_table(["arm", "tuned space", "trials", "outer iterations / trial", "chosen values",
                         "best val acc %", "tuning meta-train s"], rows) + [""])


def held_out_section(held_out: pd.DataFrame, cells: pd.DataFrame, dataset: str) -> list[str]:
    """Table: per source (rows, in the results table's order), mean test accuracy [95 % CI over seeds] of
    fresh learners of each held-out architecture (columns) after the last inner step, beside the evaluation
    learner's own. Empty when no record of this dataset has held-out scores."""
    if held_out.empty:
        return []
    frame = held_out[held_out["dataset_resolved"].fillna(UNKNOWN_DATASET).astype(str) == dataset]
    if frame.empty:
        return []
    names = list(pd.unique(frame["name"]))
    arch = {n: frame.loc[frame["name"] == n, "architecture"].iloc[0] for n in names}
    body = []
    for row in source_rows(cells):
        scores = frame[frame["source"] == row.source]
        body.append([row.source, fmt_pct_ci(row.test)]
                    + [fmt_pct_ci(stats.mean_ci(scores.loc[scores["name"] == n, "test_acc"])) for n in names])
    lines = [f"### Held-out architectures ({dataset})", "",
             "Test accuracy after the last inner step of fresh learners the teacher was never meta-trained with "
             "(mean % [95 % CI] over seeds; " + "; ".join(f"{n} = {_code(arch[n])}" for n in names) + ").", ""]
    return lines + md_table(["source", "evaluation learner"] + names, body) + [""]


def dataset_section(summary: pd.DataFrame, dataset: str, meta: dict[str, Any],
                    curves: pd.DataFrame | None = None) -> list[str]:
    """Results table, provenance note, convergence flags, pairwise comparisons and p-value matrix of one
    resolved dataset."""
    cells = _by_dataset(summary, dataset)
    rows = source_rows(cells)
    lines = [f"## Dataset: {dataset}", ""] + results_table(rows) + ["", _method_note(meta), ""]
    flags = convergence_flags(curves, cells) if curves is not None and not curves.empty else {}
    rising = [r.source for r in rows if flags.get(r.source)]
    if flags:
        lines += [("**Still rising** (seed-mean validation accuracy gained > 0.2 pp over the last 20 % of outer "
                   "iterations; a longer budget may change the ranking): " + ", ".join(rising)) if rising else
                  "No arm's validation curve was still rising over its last 20 % of outer iterations.", ""]

    lines += [
        f"### Pairwise Welch p-values ({dataset})",
        "",
        "Two-sided Welch t-test on test_acc_final of complete cells (no multiple-comparison correction; "
        "n/a = fewer than 2 complete seeds on a side).",
        "",
    ]
    lines += p_value_table(p_value_matrix(cells, [r.source for r in rows])) + [""]
    lines += [f"### Pairwise comparisons ({dataset})", "",
              "Difference of mean test accuracy (first arm minus second, percentage points) with a 95 % "
              "percentile bootstrap CI resampling each arm's seeds; two-sided Welch p-values, Holm–Bonferroni "
              "adjusted over every pair of this table.", ""]
    lines += comparison_table(comparison_frame(cells, [r.source for r in rows])) + [""]
    return lines


# --------------------------------------------------------------------------------------------- sweeps
def sweep_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, arm, swept value): runs, diverged count and fraction, test accuracy of the non-diverged
    (complete) runs with its CI, mean meta-training time. Empty when the suite has no ``sweep:``."""
    cols = ["dataset_resolved", "arm", "value", "runs", "diverged", "diverged_fraction", "test_acc_mean",
            "test_acc_low", "test_acc_high", "complete", "meta_train_seconds"]
    if "sweep_value" not in summary or summary["sweep_value"].isna().all():
        return pd.DataFrame(columns=cols)
    swept = summary[summary["sweep_value"].notna()].copy()
    swept["dataset_resolved"] = swept["dataset_resolved"].fillna(UNKNOWN_DATASET).astype(str)
    rows = []
    for (ds, arm, value), g in swept.groupby(["dataset_resolved", "arm", "sweep_value"], sort=True):
        ok = g[g["status"] == Status.COMPLETE.value]
        ci = stats.mean_ci(ok["test_acc_final"])
        diverged = int((g["status"] == Status.DIVERGED.value).sum())
        rows.append([ds, arm, value, len(g), diverged, diverged / len(g), ci.mean, ci.low, ci.high, len(ok),
                     float(ok["meta_train_seconds"].mean()) if len(ok) else math.nan])
    return pd.DataFrame(rows, columns=cols)


def sweep_section(frame: pd.DataFrame, key: str) -> list[str]:
    lines = [f"## Sweep over `{key}`", "",
             "Per arm and value: runs diverged (NaN/inf meta-loss, meta-gradient or parameters) and test accuracy "
             "after the last inner step of the runs that did not diverge (mean [95 % bootstrap CI over seeds]).", ""]
    for ds, part in frame.groupby("dataset_resolved", sort=True):
        rows = [[r.arm, r.value, f"{r.diverged}/{r.runs}",
                 fmt_pct_ci(stats.MeanCI(r.test_acc_mean, r.test_acc_low, r.test_acc_high, r.complete)),
                 "–" if math.isnan(r.meta_train_seconds) else f"{r.meta_train_seconds:.0f}"]
                for r in part.itertuples()]
        lines += [f"### {ds}", ""]
        lines += md_table(["arm", key, "diverged", "test acc (non-diverged)", "meta-train s"], rows) + [""]
    return lines


def sweep_figure(frame: pd.DataFrame, key: str) -> plt.Figure:
    """Test accuracy (non-diverged, mean with CI bars) and divergence rate against the swept value, per arm."""
    fig, (acc_ax, div_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    numeric = pd.to_numeric(frame["value"], errors="coerce")
    for arm, g in frame.assign(_x=numeric).groupby("arm", sort=True):
        g = g.sort_values("_x")
        xs = g["_x"].to_numpy(dtype=float)
        mean = 100 * g["test_acc_mean"].to_numpy(dtype=float)
        err = np.vstack([mean - 100 * g["test_acc_low"].to_numpy(dtype=float),
                         100 * g["test_acc_high"].to_numpy(dtype=float) - mean])
        acc_ax.errorbar(xs, mean, yerr=np.nan_to_num(err), marker="o", capsize=3, label=str(arm))
        div_ax.plot(xs, 100 * g["diverged_fraction"].to_numpy(dtype=float), marker="o", label=str(arm))
    positive = numeric.notna().all() and (numeric > 0).all()
    for ax in (acc_ax, div_ax):
        if positive:  # T doubles: log axis, ticks labelled with the values themselves
            ax.set_xscale("log", base=2)
            ticks = sorted(set(numeric.tolist()))
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    acc_ax.set(ylabel="test accuracy (%), non-diverged runs", title=f"Few-step accuracy vs {key}")
    div_ax.set(ylabel="runs diverged (%)", title=f"Divergence vs {key}", ylim=(-5, 105))
    acc_ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def render_markdown(inputs: ReportInputs, figures: list[str]) -> str:
    """The whole ``report.md``; deterministic given ``inputs`` and the figure file names."""
    lines = header_lines(inputs.meta)
    summary = inputs.summary
    if summary.empty:
        lines += ["No cells in the summary.", ""]
    lines += tuning_section(inputs.tuning)
    for ds in datasets(summary) if not summary.empty else []:
        lines += dataset_section(summary, ds, inputs.meta, inputs.curves)
        lines += held_out_section(inputs.held_out, _by_dataset(summary, ds), ds)
    sweep = sweep_frame(summary)
    if not sweep.empty:
        lines += sweep_section(sweep, inputs.meta.get("sweep", "sweep"))
    lines += phase_section(inputs.phases)
    if figures:
        lines += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures] + [""]
    return "\n".join(lines).rstrip("\n") + "\n"


# --------------------------------------------------------------------------------------------- figures
# Bands are stats.mean_ci per point (95 % percentile bootstrap over seeds), computed for all points of a
# source at once by stats.mean_ci_columns (one vectorised scipy.stats.bootstrap call), so this stays fast
# even for thousands of outer iterations.


def _complete_only(long: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Drop (source, seed) pairs whose cell is not complete; pairs the summary does not know are kept."""
    if long.empty or summary.empty:
        return long
    bad = summary.loc[summary["status"] != Status.COMPLETE.value, ["source", "seed"]]
    bad_keys = set(zip(bad["source"].astype(str), bad["seed"]))
    keep = [(str(s), d) not in bad_keys for s, d in zip(long["source"], long["seed"])]
    return long[np.asarray(keep, dtype=bool)]


def _dataset_of(summary: pd.DataFrame) -> dict[str, str]:
    if summary.empty:
        return {}
    ds = summary["dataset_resolved"].fillna(UNKNOWN_DATASET).astype(str)
    return {str(s): d for s, d in zip(summary["source"], ds)}


def _band(ax, long: pd.DataFrame, x: str, y: str, label: str) -> None:
    """Mean line and 95 % CI band over seeds of ``long[y]`` against ``long[x]``."""
    wide = long.pivot_table(index=x, columns="seed", values=y, aggfunc="mean").sort_index()
    mean, low, high = stats.mean_ci_columns(wide.to_numpy().T)
    xs = wide.index.to_numpy(dtype=float)
    (line,) = ax.plot(xs, 100 * mean, label=f"{label} (n={wide.shape[1]})")
    ax.fill_between(xs, 100 * low, 100 * high, color=line.get_color(), alpha=0.2, linewidth=0)


def save_figure(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def band_plot(long: pd.DataFrame, summary: pd.DataFrame, x: str, xlabel: str, title: str) -> plt.Figure:
    """One panel per resolved dataset, one mean ± 95 % CI line per source (test accuracy, %).

    Only complete cells are drawn (see :func:`_complete_only`); the legend gives each source's seed count.
    """
    data = _complete_only(long, summary).copy()
    ds_of = _dataset_of(summary)
    data["_ds"] = [ds_of.get(str(s), UNKNOWN_DATASET) for s in data["source"]]
    panels = sorted(data["_ds"].unique()) or ["(no complete cells)"]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, ds in zip(axes[0], panels):
        part = data[data["_ds"] == ds]
        for source, g in part.groupby("source", sort=True):
            _band(ax, g, x, "test_acc", str(source))
        ax.set(title=ds, xlabel=xlabel, ylabel="test accuracy (%)")
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(title="source (seeds)", fontsize="small")
    fig.suptitle(f"{title}\nmean over seeds, band = 95 % bootstrap CI")
    fig.tight_layout()
    return fig


NAME_LIMIT = 80  # characters of a label kept in a file name; longer labels are cut and get a hash of the whole


def _label_hash(source: str) -> str:
    return hashlib.sha256(str(source).encode("utf-8")).hexdigest()[:10]


def _safe_name(source: str) -> str:
    """A file-name-safe, bounded form of a label: runs of other characters become ``_``; a result longer than
    ``NAME_LIMIT`` is cut there and ends in ``-<hash of the full label>`` (so it stays distinct)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(source)) or "_"
    if len(name) > NAME_LIMIT:
        name = f"{name[:NAME_LIMIT]}-{_label_hash(source)}"
    return name


def sample_file_names(sources) -> dict[str, str]:
    """Source label -> ``samples_<safe name>.png``, distinct even where two labels have the same safe name or
    differ only in case (``"a b"`` / ``"a_b"``, ``"A"`` / ``"a"``): those get ``-<hash of the label>`` too.
    A label with a unique safe name keeps its plain name."""
    safe = {str(s): _safe_name(s) for s in sources}
    taken: dict[str, int] = {}
    for name in safe.values():
        taken[name.lower()] = taken.get(name.lower(), 0) + 1
    names = {s: (n if taken[n.lower()] == 1 else f"{n[:NAME_LIMIT]}-{_label_hash(s)}") for s, n in safe.items()}
    seen: set[str] = set()
    for s in sorted(names):  # (a label that happens to equal another's disambiguated name)
        base, name, k = names[s], names[s], 1
        while name.lower() in seen:
            name, k = f"{base}-{k}", k + 1
        seen.add(name.lower())
        names[s] = name
    return {s: f"samples_{n}.png" for s, n in names.items()}


def _to_image(x: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(C, H, W) in [0, 1] -> something imshow takes, and the colormap (gray for 1 channel)."""
    x = np.clip(np.asarray(x, dtype=float), 0.0, 1.0)
    if x.shape[0] == 1:
        return x[0], "gray"
    if x.shape[0] == 3:
        return np.transpose(x, (1, 2, 0)), None
    raise ValueError(f"sample images must have 1 or 3 channels, got {x.shape[0]}")


def samples_grid(source: str, images: np.ndarray, steps: list[int] | None) -> plt.Figure:
    """Grid of learned samples: one column per class, one row per recorded inner step (paper Fig. 6).

    Drawn as one mosaic image in one axes (a subplot per sample cost ~0.5 s per figure: a tenth of the smoke
    run), with a one-pixel gap between samples; the x tick labels are the class indices, the y tick labels
    ``"step k"`` (``"row i"`` if ``steps`` is missing or has the wrong length). 1-channel images are drawn in
    gray, 3-channel as RGB; values clipped to [0, 1].
    """
    images = np.asarray(images)
    if images.ndim != 5:
        raise ValueError(f"samples[{source!r}] must be (rows, classes, C, H, W), got shape {images.shape}")
    n_rows, n_cls = images.shape[:2]
    labels = [f"step {k}" for k in steps] if steps is not None and len(steps) == n_rows else None
    labels = labels or [f"row {i}" for i in range(n_rows)]
    tiles = [[_to_image(images[r, c]) for c in range(n_cls)] for r in range(n_rows)]
    cmap = tiles[0][0][1]
    h, w = tiles[0][0][0].shape[:2]
    gap = 1
    shape = (n_rows * (h + gap) - gap, n_cls * (w + gap) - gap) + tiles[0][0][0].shape[2:]
    mosaic = np.ones(shape, dtype=np.float32)  # white gaps
    for r in range(n_rows):
        for c in range(n_cls):
            mosaic[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = tiles[r][c][0]
    cell = min(1.0, 24.0 / max(n_cls, 1))
    fig, ax = plt.subplots(figsize=(cell * n_cls + 1.0, cell * n_rows + 0.8))
    ax.imshow(mosaic, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([c * (w + gap) + (w - 1) / 2 for c in range(n_cls)], [str(c) for c in range(n_cls)], fontsize=8)
    ax.set_yticks([r * (h + gap) + (h - 1) / 2 for r in range(n_rows)], labels, fontsize=8)
    ax.tick_params(length=0)
    ax.xaxis.tick_top()
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(f"Learned samples: {source} (columns = class, rows = inner step)", fontsize=10)
    fig.tight_layout()
    return fig


def samples_figure(source: str, images: np.ndarray, steps: list[int] | None, path: Path) -> Path:
    """Write :func:`samples_grid` to ``path``."""
    return save_figure(samples_grid(source, images, steps), path)


# --------------------------------------------------------------------------------------------- entry


CURVES_XLABEL, CURVES_TITLE = "outer iteration (meta-training steps)", "Test accuracy during meta-training"
STEPS_XLABEL, STEPS_TITLE = "inner step (learner SGD steps; 0 = at init)", "Test accuracy vs inner step, final teachers"


def _write_figures(out_dir: Path, inputs: ReportInputs) -> list[Path]:
    """curves.png, inner_steps.png (each skipped if its frame is empty), then samples_<source>.png."""
    written = []
    if not inputs.curves.empty:
        fig = band_plot(inputs.curves, inputs.summary, "outer_iter", CURVES_XLABEL, CURVES_TITLE)
        written.append(save_figure(fig, out_dir / "curves.png"))
    if not inputs.steps.empty:
        fig = band_plot(inputs.steps, inputs.summary, "inner_step", STEPS_XLABEL, STEPS_TITLE)
        written.append(save_figure(fig, out_dir / "inner_steps.png"))
    sweep = sweep_frame(inputs.summary)
    if not sweep.empty:
        written.append(save_figure(sweep_figure(sweep, inputs.meta.get("sweep", "sweep")), out_dir / "sweep.png"))
    names = sample_file_names(inputs.samples)
    for source in sorted(inputs.samples):
        path = out_dir / names[str(source)]
        written.append(samples_figure(source, inputs.samples[source], inputs.sample_steps.get(source), path))
    return written


def write_report(out_dir: Path, inputs: ReportInputs) -> list[Path]:
    """Write summary.csv, steps.csv, curves.csv, the figures and report.md into ``out_dir``.

    Returns the paths written (CSVs, figures, then report.md). A figure whose data frame is empty is skipped.
    Everything is written first into a temporary directory next to ``out_dir`` (``<out>.tmp-XXXX``; inside
    ``out_dir`` when its parent is not writable) and only then moved into place, file by file with
    ``os.replace``, report.md last: a report that fails half-way leaves the previous one untouched. Other files
    in ``out_dir`` (a run log, an older report's figures) are left alone.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = _staging_dir(out_dir)
    try:
        names = [p.name for p in _write_report_files(staging, inputs)]
        targets = [out_dir / name for name in names]
        blocked = [t for t in targets if t.is_dir()]
        if blocked:
            raise IsADirectoryError(errno.EISDIR, "a directory is in the way of a report file", str(blocked[0]))
        for name, target in zip(names, targets):
            _move_into_place(staging / name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return targets


def _staging_dir(out_dir: Path) -> Path:
    """A fresh temporary directory on the same file system as ``out_dir`` (so moving out of it is a rename)."""
    target = out_dir.resolve()
    try:
        return Path(tempfile.mkdtemp(prefix=f"{target.name[:100]}.tmp-", dir=target.parent))
    except OSError:  # the parent is not ours to write (e.g. --out /srv/reports): stage inside out_dir itself
        return Path(tempfile.mkdtemp(prefix=".report.tmp-", dir=target))


def _move_into_place(src: Path, dst: Path) -> None:
    try:
        os.replace(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:  # out_dir is a mount point: its sibling is on another file system
            raise
        shutil.copy2(src, dst)


def _write_report_files(out_dir: Path, inputs: ReportInputs) -> list[Path]:
    """The body of :func:`write_report`: every file of the report, written straight into ``out_dir``."""
    written = []
    frames = [("summary", inputs.summary), ("steps", inputs.steps), ("curves", inputs.curves)]
    sweep = sweep_frame(inputs.summary)
    if not sweep.empty:
        frames.append(("sweep", sweep))
    if not inputs.held_out.empty:
        frames.append(("held_out", inputs.held_out))
    if not inputs.tuning.empty:
        frames.append(("tuning", inputs.tuning))
    if not inputs.phases.empty:
        frames.append(("phases", inputs.phases))
    for name, frame in frames:
        path = out_dir / f"{name}.csv"
        frame.to_csv(path, index=False)
        written.append(path)
    figures = _write_figures(out_dir, inputs)
    written += figures
    md = out_dir / "report.md"
    md.write_text(render_markdown(inputs, [p.name for p in figures]), encoding="utf-8")
    written.append(md)
    return written

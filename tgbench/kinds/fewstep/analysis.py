"""The few-step report's numbers, computed from the frames ``tgbench.kinds.fewstep.run`` reads from the store
(``tgbench.kinds.fewstep.report.ReportInputs``): per-arm aggregates, pairwise comparisons and p-values, convergence
flags, the equal-compute table and where curves cross, the sweep, the data ceiling. ``report`` formats them.

Conventions (stated in the report too): means, intervals and p-values use complete cells only; intervals are 95 %
percentile bootstrap CIs over seeds (``tgbench.stats``, seeded); sources evaluated on different resolved datasets
are never compared. The statistics themselves live in :mod:`tgbench.stats`; this module only says which numbers
of which frames they are applied to.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from tgbench import stats
from tgbench.records import Status
from tgbench.reporting.frames import complete_only, dataset_labels


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
    return sorted(dataset_labels(summary).unique())


def by_dataset(summary: pd.DataFrame, dataset: str) -> pd.DataFrame:
    return summary[dataset_labels(summary) == dataset]


def p_value_matrix(summary: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Pairwise Welch p-values of ``test_acc_final`` over complete cells, rows/columns in ``order``."""
    ok = summary[summary["status"] == Status.COMPLETE.value]
    return stats.pairwise_p_values(ok, "source", "test_acc_final", test="welch", order=order)


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


def late_gains(curves: pd.DataFrame, summary: pd.DataFrame) -> dict[str, stats.MeanCI]:
    """Source -> what its seed-averaged validation curve (complete cells) gained over the last 20 % of its outer
    iterations (``stats.late_gain``; sources with no check in that window are left out)."""
    long = complete_only(curves, summary)
    if long.empty:
        return {}
    mean = long.groupby(["source", "outer_iter"], as_index=False)["val_acc"].mean()
    gains = {str(src): stats.late_gain(g["outer_iter"].tolist(), g["val_acc"].tolist())
             for src, g in mean.groupby("source")}
    return {src: gain for src, gain in gains.items() if gain is not None}


def convergence_flags(gains: dict[str, stats.MeanCI]) -> dict[str, bool]:
    """Source -> whether it was still rising over the last 20 % of its outer iterations, from its
    :func:`late_gains` (``stats.still_rising``'s rule: a late gain above ``stats.RISING_TOLERANCE``)."""
    return {src: gain.mean > stats.RISING_TOLERANCE for src, gain in gains.items()}


def ceiling_of(ceiling: pd.DataFrame | None, dataset: str) -> pd.DataFrame:
    if ceiling is None or ceiling.empty:
        return pd.DataFrame(columns=["dataset_resolved", "seed", "test_acc", "val_acc"])
    return ceiling[dataset_labels(ceiling) == dataset]


def ceiling_accuracy(ceiling: pd.DataFrame) -> tuple[stats.MeanCI, stats.MeanCI]:
    """(test, validation) accuracy of the data ceiling's seeds: mean with its bootstrap CI."""
    return stats.mean_ci(ceiling["test_acc"]), stats.mean_ci(ceiling["val_acc"])


def best_row(rows: list[SourceRow]) -> SourceRow | None:
    """The best arm of a results table (``source_rows`` order) that has a complete cell; None if none has."""
    return next((r for r in rows if not math.isnan(r.test.mean)), None)


BUDGET_FRACTIONS = (0.1, 0.3, 1.0)   # of the largest arm's total compute


def compute_long(curves: pd.DataFrame, summary: pd.DataFrame, compute: pd.DataFrame) -> pd.DataFrame:
    """Long ``dataset_resolved, source, seed, outer_iter, val_acc, test_acc, flops, seconds`` of complete cells:
    each curve check with the cell's cumulative meta-training compute at it, its total scaled by the share of its
    outer iterations done (every outer iteration of one architecture costs the same FLOPs; wall time per
    iteration is roughly constant). ``flops`` is NaN where the record has no FLOP count."""
    cols = ["dataset_resolved", "source", "seed", "outer_iter", "val_acc", "test_acc", "flops", "seconds"]
    long = complete_only(curves, summary)
    if long.empty:
        return pd.DataFrame(columns=cols)
    cells = summary[["source", "seed", "dataset_resolved", "meta_train_seconds", "outer_iterations"]].copy()
    cells["dataset_resolved"] = dataset_labels(cells)
    flops = (compute if not compute.empty
             else pd.DataFrame(columns=["source", "seed", "meta_train_flops"]))
    cells = cells.merge(flops, on=["source", "seed"], how="left")
    long = long.merge(cells, on=["source", "seed"], how="inner")
    share = long["outer_iter"].astype(float) / long["outer_iterations"].astype(float).where(
        long["outer_iterations"] > 0)
    long["flops"] = share * long["meta_train_flops"].astype(float)
    long["seconds"] = share * long["meta_train_seconds"].astype(float)
    return long[cols].reset_index(drop=True)


def compute_axis(long: pd.DataFrame) -> str:
    """``flops`` when every check of these cells has a FLOP count, else ``seconds`` (smoke profiles and other
    suites with ``evaluation.count_flops: false``, older records)."""
    return "flops" if len(long) and long["flops"].notna().all() else "seconds"


def _seed_curves(part: pd.DataFrame, axis: str, metric: str) -> list[stats.Curve]:
    return [(g[axis].to_numpy(float), g[metric].to_numpy(float)) for _, g in part.groupby("seed", sort=True)]


def equal_compute_frame(long: pd.DataFrame, axis: str) -> pd.DataFrame:
    """One row per (source, budget): the budgets are :data:`BUDGET_FRACTIONS` of the largest arm's total compute
    (an arm's total = the least any of its seeds reached, so each of its seeds reached it); the test accuracy of
    each arm's seeds read there from their curves (``stats.value_at_budget``), mean with its bootstrap CI, and
    whether every seed's curve reached the budget (else its last value stands)."""
    cols = ["source", "total", "fraction", "budget", "mean", "low", "high", "n", "reached"]
    if long.empty:
        return pd.DataFrame(columns=cols)
    totals = long.groupby(["source", "seed"])[axis].max().groupby("source").min()
    largest = float(totals.max())
    rows = []
    for source, part in long.groupby("source", sort=True):
        curves = _seed_curves(part, axis, "test_acc")
        for fraction in BUDGET_FRACTIONS:
            ci, reached = stats.value_at_budget(curves, fraction * largest)
            rows.append([source, float(totals[source]), fraction, fraction * largest, ci.mean, ci.low, ci.high,
                         ci.n, reached])
    return pd.DataFrame(rows, columns=cols)


def crossing_frame(long: pd.DataFrame, axis: str) -> pd.DataFrame:
    """Every pair of arms whose seed-mean test curves cross on the compute axis (``stats.crossings``): where."""
    means = {str(s): stats.mean_curve(_seed_curves(part, axis, "test_acc"))
             for s, part in long.groupby("source", sort=True)}
    rows = []
    names = sorted(means)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for x in stats.crossings(means[a], means[b]):
                rows.append({"a": a, "b": b, "at": x})
    return pd.DataFrame(rows, columns=["a", "b", "at"])


def sweep_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, arm, swept value): runs, diverged count and fraction, test accuracy of the non-diverged
    (complete) runs with its CI, mean meta-training time. Empty when the suite has no ``sweep:``."""
    cols = ["dataset_resolved", "arm", "value", "runs", "diverged", "diverged_fraction", "test_acc_mean",
            "test_acc_low", "test_acc_high", "complete", "meta_train_seconds"]
    if "sweep_value" not in summary or summary["sweep_value"].isna().all():
        return pd.DataFrame(columns=cols)
    swept = summary[summary["sweep_value"].notna()].copy()
    swept["dataset_resolved"] = dataset_labels(swept)
    rows = []
    for (ds, arm, value), g in swept.groupby(["dataset_resolved", "arm", "sweep_value"], sort=True):
        ok = g[g["status"] == Status.COMPLETE.value]
        ci = stats.mean_ci(ok["test_acc_final"])
        diverged = int((g["status"] == Status.DIVERGED.value).sum())
        rows.append([ds, arm, value, len(g), diverged, diverged / len(g), ci.mean, ci.low, ci.high, len(ok),
                     float(ok["meta_train_seconds"].mean()) if len(ok) else math.nan])
    return pd.DataFrame(rows, columns=cols)


def held_out_accuracy(held_out: pd.DataFrame, source: str, names: list[str]) -> list[stats.MeanCI]:
    """Test accuracy (mean [95 % CI over seeds]) of ``source``'s fresh learners of each held-out architecture of
    ``names``, after the last inner step (``held_out``: one dataset's rows of ``ReportInputs.held_out``)."""
    scores = held_out[held_out["source"] == source]
    return [stats.mean_ci(scores.loc[scores["name"] == n, "test_acc"]) for n in names]


def diagnostic_means(diagnostics: pd.DataFrame) -> list[tuple[str, str, stats.MeanCI]]:
    """``(source, diagnostic, mean [95 % CI over seeds])`` of each number the teachers reported about themselves,
    by source then name (``diagnostics``: the complete cells' rows of ``ReportInputs.diagnostics``)."""
    return [(source, name, stats.mean_ci(g["value"]))
            for (source, name), g in diagnostics.groupby(["source", "name"], sort=True)]

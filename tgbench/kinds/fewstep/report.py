"""The few-step report: ``report.md``, its CSVs and figures, from the frames ``tgbench.kinds.fewstep.run`` hands over.

The kind builds a :class:`ReportInputs` from the store; ``tgbench.kinds.fewstep.analysis`` computes the numbers
and this module formats them. ``report.md`` is a pure
function of the inputs (every interval is a seeded bootstrap from :mod:`tgbench.stats`); the PNGs are not
byte-reproducible (matplotlib metadata, fonts) but show the same data.

Statistics conventions (also stated in the report itself): means, intervals and p-values use complete cells
only; diverged and failed cells are counted per source but excluded. Intervals are 95 % percentile
bootstrap CIs over seeds (1000 resamples, :func:`tgbench.stats.mean_ci`). Sources evaluated on different
resolved datasets are never put in the same table, p-value matrix or figure panel.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tgbench import stats
from tgbench.kinds.fewstep.analysis import (BUDGET_FRACTIONS, SourceRow, best_row, by_dataset, ceiling_accuracy,
                                            ceiling_of, comparison_frame, compute_axis, compute_long,
                                            convergence_flags, crossing_frame, datasets, diagnostic_means,
                                            equal_compute_frame, held_out_accuracy, late_gains, p_value_matrix,
                                            source_rows, sweep_frame)
from tgbench.records import Status
from tgbench.reporting.figures import (band_plot, compute_curves_figure, sample_file_names, samples_figure,
                                       save_figure, sweep_figure, tuning_trials_figure)
from tgbench.reporting.files import write_atomically
from tgbench.reporting.frames import complete_only, dataset_labels
from tgbench.reporting.markdown import (PERCENT_POINTS_DIFFERENCE, code, document, figure_links, fmt_ci, fmt_p,
                                        fmt_pct_ci, fmt_seconds, header_lines, md_table)


@dataclass
class ReportInputs:
    """Everything a report is made of (``tgbench.kinds.fewstep.run.build_report`` assembles it from the store).

    * ``summary``: one row per cell: ``source, method, variant, seed, status`` (a ``Status`` value), ``dataset_resolved,
      test_acc_final, val_acc_final`` (fractions in [0, 1]), ``meta_train_seconds, outer_iterations``.
    * ``curves``: long ``source, seed, outer_iter, val_acc, test_acc`` (accuracy during meta-training).
    * ``steps``: long ``source, seed, inner_step, test_acc, val_acc`` (final teachers; step 0 = at init).
    * ``samples``: source -> ``(rows, classes, C, H, W)`` images in [0, 1]; ``sample_steps``: source -> the
      inner step of each row.
    * ``meta``: the provenance (``tgbench.provenance.Provenance.as_meta()``: suite, profile, revision, command,
      overrides, machine, created (ISO time), torch, device) and anything else the kind adds (rendered sorted).
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
    # long ``source, seed, meta_train_flops`` (NaN: not counted): the compute axis of the equal-compute verdict
    compute: pd.DataFrame = field(default_factory=pd.DataFrame)
    # long ``source, seed, name, value``: what each trained source said about itself (``Source.diagnostics``)
    diagnostics: pd.DataFrame = field(default_factory=pd.DataFrame)
    # long ``dataset_resolved, seed, test_acc, val_acc, best_epoch, epochs_run, seconds, learner, schedule``: the
    # data ceiling's seeds (``tgbench.ceiling``); empty = not computed
    ceiling: pd.DataFrame = field(default_factory=pd.DataFrame)


# --------------------------------------------------------------------------------------------- tables












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




def p_value_table(matrix: pd.DataFrame) -> list[str]:
    names = [str(c) for c in matrix.columns]
    body = [
        [names[i]] + ["—" if i == j else fmt_p(float(matrix.iat[i, j])) for j in range(len(names))]
        for i in range(len(names))
    ]
    return md_table(["source"] + names, body)


def _method_note(meta: dict[str, Any]) -> str:
    return (
        f"*Produced by {code(meta.get('command', '?'))} with profile `{meta.get('profile', '?')}`. "
        "Accuracies are test/validation accuracy of a freshly initialised learner after the last inner step, "
        "averaged over the completed seeds; brackets are 95 % percentile bootstrap CIs over seeds "
        "(scipy.stats.bootstrap, 1000 resamples, seed 0; [n/a] = a single seed). Diverged and failed cells "
        "are counted but excluded from the means, times and p-values.*"
    )




def comparison_table(frame: pd.DataFrame) -> list[str]:
    body = [[f"{r.a} − {r.b}", fmt_ci(r.difference, r.low, r.high, PERCENT_POINTS_DIFFERENCE), fmt_p(r.p),
             fmt_p(r.p_holm), "yes" if not math.isnan(r.p_holm) and r.p_holm < 0.01 else "no"]
            for r in frame.itertuples()]
    return md_table(["pair", "test acc difference (pp [95 % CI])", "Welch p", "Holm p", "significant (Holm p < 0.01)"],
                     body)




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
    """The tuning stage's table: what each arm tuned, with what budget, what it chose (validation only), and how
    its study went — the budget used in runs of the arm's trial horizon, diverged and pruned trials (counted,
    never dropped), how flat the optimum is, and every trial's validation accuracy at the outer iteration where
    it stopped."""
    if tuning.empty:
        return []

    def optional(value, text: str) -> str:
        return "–" if value is None or pd.isna(value) else text

    rows = [[r.arm, r.space, r.trials, r.outer_iterations_per_trial, r.chosen,
             optional(r.best_val_acc, f"{100 * r.best_val_acc:.2f}"), f"{r.tuning_seconds:.0f}",
             f"{r.budget_runs_used:.2f}" + ("" if pd.isna(r.budget_runs) else f" / {r.budget_runs:g}"), r.diverged,
             r.pruned,
             optional(r.near_best_share, f"{100 * r.near_best_share:.0f} %")]
            for r in tuning.itertuples()]
    lines = ["## Tuning stage (validation split)", "",
             "Every arm was tuned with the same budget before the comparison below (Optuna TPE; the protocol line "
             "above says how). The chosen values are applied to the final seeds, which are reported on test. "
             "Budget used = outer iterations meta-trained over the arm's trials (a pruned or diverged trial counts "
             "what it ran) / the outer iterations of one trial, out of the stage's budget where it has one "
             "(pruned counts the trials the budget stopped too). Near "
             "best = share of the trials run to the end (diverged ones included) within 1 point of the best "
             "validation accuracy: near 100 % the optimum is flat and the pick hardly matters.", ""]
    lines += md_table(["arm", "tuned space", "trials", "outer iterations / trial", "chosen values", "best val acc %",
                       "tuning meta-train s", "budget used (runs)", "diverged", "pruned", "near best"], rows) + [""]
    traces = [f"- {r.arm}: " + ", ".join(
        f"{100 * acc:.1f} % @ {it}{'' if status == Status.COMPLETE.value else f' ({status})'}"
        for acc, it, status in zip(json.loads(r.trial_val_acc), json.loads(r.trial_outer_iterations),
                                   json.loads(r.trial_status)))
        for r in tuning.itertuples() if r.trials > 0]
    if traces:
        lines += ["Every trial, in order: validation accuracy @ the outer iteration it stopped at (status if not "
                  "complete; at the full horizon trial 0 is the arm's settings as written).", ""] + traces + [""]
    return lines


def held_out_section(held_out: pd.DataFrame, cells: pd.DataFrame, dataset: str) -> list[str]:
    """Table: per source (rows, in the results table's order), mean test accuracy [95 % CI over seeds] of
    fresh learners of each held-out architecture (columns) after the last inner step, beside the evaluation
    learner's own. Empty when no record of this dataset has held-out scores."""
    if held_out.empty:
        return []
    frame = held_out[dataset_labels(held_out) == dataset]
    if frame.empty:
        return []
    names = list(pd.unique(frame["name"]))
    arch = {n: frame.loc[frame["name"] == n, "architecture"].iloc[0] for n in names}
    body = []
    for row in source_rows(cells):
        body.append([row.source, fmt_pct_ci(row.test)]
                    + [fmt_pct_ci(ci) for ci in held_out_accuracy(frame, row.source, names)])
    lines = [f"### Held-out architectures ({dataset})", "",
             "Test accuracy after the last inner step of fresh learners the teacher was never meta-trained with "
             "(mean % [95 % CI] over seeds; " + "; ".join(f"{n} = {code(arch[n])}" for n in names) + ").", ""]
    return lines + md_table(["source", "evaluation learner"] + names, body) + [""]


def convergence_lines(curves: pd.DataFrame | None, cells: pd.DataFrame, sources: list[str]) -> list[str]:
    """What each arm's seed-mean validation curve gained over its last 20 % of outer iterations (a least-squares
    line through its checks there, ``stats.late_gain``), and the arms that count as still rising by it."""
    gains = late_gains(curves, cells) if curves is not None and not curves.empty else {}
    if not gains:
        return []
    flags = convergence_flags(gains)
    rising = [src for src in sources if flags.get(src)]
    each = "; ".join(f"{src} {fmt_ci(g.mean, g.low, g.high, PERCENT_POINTS_DIFFERENCE)} ({g.n} checks)"
                     for src in sources if (g := gains.get(src)) is not None)
    tolerance = f"{stats.RISING_TOLERANCE * 100:.1f} pp"
    return [f"Gain of the seed-mean validation accuracy over each arm's last 20 % of outer iterations (pp, slope of "
            f"a least-squares line through its checks there times the window, [90 % CI]; two checks: their "
            f"difference, no interval): {each}.", "",
            (f"**Still rising** (gained > {tolerance}; a longer budget may change the ranking): " + ", ".join(rising))
            if rising else f"No arm's validation curve was still rising (gained > {tolerance}) over its last 20 % "
            "of outer iterations.", ""]


def dataset_section(summary: pd.DataFrame, dataset: str, meta: dict[str, Any],
                    curves: pd.DataFrame | None = None, ceiling: pd.DataFrame | None = None) -> list[str]:
    """Results table (with the data-ceiling row), provenance note, ceiling note, convergence flags, pairwise
    comparisons and p-value matrix of one resolved dataset."""
    cells = by_dataset(summary, dataset)
    rows = source_rows(cells)
    ceiling_rows = ceiling_of(ceiling, dataset)
    lines = ([f"## Dataset: {dataset}", ""] + results_table(rows) + ceiling_table_row(ceiling_rows)
             + ["", _method_note(meta), "", ceiling_note(ceiling_rows, rows), ""])
    lines += convergence_lines(curves, cells, [r.source for r in rows])

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


# --------------------------------------------------------------------------------------------- data ceiling
CEILING_LABEL = "*data ceiling* (real data, Adam to convergence)"




def ceiling_table_row(ceiling: pd.DataFrame) -> list[str]:
    """The results table's last row: the data ceiling's test and validation accuracy over its seeds (a line
    that says it was not computed when the store has none)."""
    if ceiling.empty:
        return [f"| {CEILING_LABEL} | not computed | — | — | — | — | — | — |"]
    test, val = ceiling_accuracy(ceiling)
    return [f"| {CEILING_LABEL} | {ceiling['learner'].iloc[0]} | {len(ceiling)}/{len(ceiling)} | "
            f"{fmt_pct_ci(test)} | {fmt_pct_ci(val)} | — | 0 | 0 |"]


def ceiling_note(ceiling: pd.DataFrame, rows: list[SourceRow]) -> str:
    """What the ceiling row is, and the headroom it leaves above the best arm."""
    if ceiling.empty:
        return ("**Data ceiling: not computed** (no ceiling stored for this learner, data and schedule; "
                "`tgbench run` of the suite computes it once and stores it).")
    ci, _ = ceiling_accuracy(ceiling)
    best = best_row(rows)
    headroom = (f" The best arm, {best.source}, is {100 * (ci.mean - best.test.mean):.2f} pp below it (the "
                "headroom left to any teaching method)." if best is not None else "")
    return (f"**Data ceiling**: the evaluation learner trained on the whole training split "
            f"({ceiling['schedule'].iloc[0]}; test accuracy at the best-validation epoch, "
            f"{len(ceiling)} seed(s), mean {ceiling['epochs_run'].mean():.1f} epochs run, "
            f"{fmt_seconds(float(ceiling['seconds'].mean()))} s each): {fmt_pct_ci(ci)}.{headroom}")


# --------------------------------------------------------------------------------------------- equal compute
AXES = {"flops": "meta-training FLOPs", "seconds": "meta-training wall seconds"}
NOT_REACHED = "‡"






def fmt_compute(value: float, axis: str) -> str:
    if math.isnan(value):
        return "n/a"
    if axis == "seconds":
        return f"{fmt_seconds(value)} s"
    for unit, size in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.3g} FLOP"








def equal_compute_section(long: pd.DataFrame, dataset: str) -> list[str]:
    """The equal-compute table of one dataset, where the arms' mean curves cross, and the verdict at equal
    compute."""
    part = long[long["dataset_resolved"] == dataset]
    axis = compute_axis(part)
    frame = equal_compute_frame(part, axis)
    lines = [f"### Equal compute ({dataset})", ""]
    if frame.empty:
        return lines + ["No complete cell has a curve: no equal-compute table.", ""]
    budgets = frame.drop_duplicates("fraction")[["fraction", "budget"]].itertuples()
    header = ["source", f"total ({AXES[axis]}, per seed)"] + [
        f"test acc at {100 * b.fraction:.0f} % ({fmt_compute(b.budget, axis)})" for b in budgets]
    order = frame[frame["fraction"] == BUDGET_FRACTIONS[-1]].sort_values(["mean", "source"], ascending=[False, True])
    body = []
    for source in order["source"]:
        rows = frame[frame["source"] == source]
        body.append([source, fmt_compute(rows["total"].iloc[0], axis)] + [
            fmt_pct_ci(stats.MeanCI(r.mean, r.low, r.high, r.n)) + ("" if r.reached else f" {NOT_REACHED}")
            for r in rows.itertuples()])
    fallback = ("" if axis == "flops" else
                " **The axis is wall seconds of meta-training**, not FLOPs: these records have no FLOP count "
                "(`evaluation.count_flops: false`, e.g. the smoke profile, or older records), so the budgets "
                "depend on the machine and its load.")
    lines += [f"Test accuracy of each arm at the same meta-training compute ({AXES[axis]}: each check's "
              "compute is its cell's total times the share of its outer iterations done). The budgets are 10, "
              "30 and 100 % of the largest arm's total (an arm's total is the least any of its seeds reached). "
              "Read from the meta-training curves: the checks every `evaluation.eval_every` outer iterations, "
              "each scored by `evaluation.eval_learners` fresh learners (fewer than the final evaluation's, so "
              "the 100 % column can differ from the results table), linear between checks; mean % [95 % "
              f"bootstrap CI over seeds]. {NOT_REACHED} = the arm's curve ended before this budget: its final "
              f"value is shown.{fallback}", ""]
    lines += md_table(header, body) + [""]
    lines += [equal_compute_verdict(frame), ""]
    crossings = crossing_frame(part, axis)
    if crossings.empty:
        lines += ["No two arms' seed-mean test curves cross within the compute range both cover.", ""]
    else:
        where = "; ".join(f"{a} × {b} at {', '.join(fmt_compute(x, axis) for x in g['at'])}"
                          for (a, b), g in crossings.groupby(["a", "b"], sort=True))
        lines += [f"Where the seed-mean test curves cross ({AXES[axis]}, within the range both arms cover): "
                  f"{where}.", ""]
    return lines


def equal_compute_verdict(frame: pd.DataFrame) -> str:
    """One sentence: which arm leads at each budget, and by how much over the runner-up."""
    parts = []
    for fraction, g in frame.groupby("fraction", sort=True):
        g = g.dropna(subset=["mean"]).sort_values(["mean", "source"], ascending=[False, True])
        if g.empty:
            continue
        lead = g.iloc[0]
        text = f"at {100 * fraction:.0f} % {lead.source} leads ({100 * lead['mean']:.2f} %"
        if len(g) > 1:
            text += f", {100 * (lead['mean'] - g.iloc[1]['mean']):.2f} pp above {g.iloc[1].source}"
        parts.append(text + ")")
    return "**At equal compute**: " + "; ".join(parts) + "." if parts else "**At equal compute**: no data."


# --------------------------------------------------------------------------------------------- diagnostics
def diagnostics_section(diagnostics: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    """Per source: the mean over its complete seeds of each number its trained teachers reported about themselves
    (``Source.diagnostics``), e.g. how far dataset distillation's pixels moved from their initialisation."""
    if diagnostics.empty:
        return []
    frame = complete_only(diagnostics, summary)
    rows = [[source, name, f"{ci.mean:.4g}" + ("" if math.isnan(ci.low) else f" [{ci.low:.4g}, {ci.high:.4g}]"), ci.n]
            for source, name, ci in diagnostic_means(frame)]
    lines = ["## Teacher diagnostics", "",
             "Numbers each trained teacher reports about itself (mean [95 % bootstrap CI] over complete seeds). "
             "`pixel_movement` (dataset distillation) = mean |pixels − their initialisation| / the init's standard "
             "deviation: near 0, the images it teaches with are still mostly its initial noise.", ""]
    lines += md_table(["source", "diagnostic", "value", "seeds"], rows) + [""]
    moved = frame[frame["name"] == "pixel_movement"]
    for source, g in moved.groupby("source", sort=True):
        lines += [f"- **{source}**: its pixels moved {100 * g['value'].mean():.1f} % of their initial standard "
                  "deviation from their initialisation (mean |Δ| / init std, mean over seeds)."]
    return lines + ([""] if len(moved) else [])


# --------------------------------------------------------------------------------------------- sweeps


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


def render_markdown(inputs: ReportInputs, figures: list[str]) -> str:
    """The whole ``report.md``; deterministic given ``inputs`` and the figure file names."""
    lines = header_lines(inputs.meta)
    summary = inputs.summary
    if summary.empty:
        lines += ["No cells in the summary.", ""]
    lines += tuning_section(inputs.tuning)
    long = compute_long(inputs.curves, inputs.summary, inputs.compute)
    for ds in datasets(summary) if not summary.empty else []:
        lines += dataset_section(summary, ds, inputs.meta, inputs.curves, inputs.ceiling)
        lines += equal_compute_section(long, ds)
        lines += held_out_section(inputs.held_out, by_dataset(summary, ds), ds)
    lines += diagnostics_section(inputs.diagnostics, summary)
    sweep = sweep_frame(summary)
    if not sweep.empty:
        lines += sweep_section(sweep, inputs.meta.get("sweep", "sweep"))
    lines += phase_section(inputs.phases)
    if figures:
        lines += ["## Figures", ""] + figure_links(figures) + [""]
    return document(lines)


# --------------------------------------------------------------------------------------------- entry


CURVES_XLABEL, CURVES_TITLE = "outer iteration (meta-training steps)", "Test accuracy during meta-training"
STEPS_XLABEL, STEPS_TITLE = "inner step (learner SGD steps; 0 = at init)", "Test accuracy vs inner step, final teachers"


def _write_figures(out_dir: Path, inputs: ReportInputs) -> list[Path]:
    """curves.png, inner_steps.png (each skipped if its frame is empty), then samples_<source>.png."""
    written = []
    if not inputs.curves.empty:
        fig = band_plot(inputs.curves, inputs.summary, "outer_iter", CURVES_XLABEL, CURVES_TITLE)
        written.append(save_figure(fig, out_dir / "curves.png"))
    long = compute_long(inputs.curves, inputs.summary, inputs.compute)
    if not long.empty:
        axes = {ds: compute_axis(g) for ds, g in long.groupby("dataset_resolved", sort=True)}
        fig = compute_curves_figure(long, axes, AXES)
        written.append(save_figure(fig, out_dir / "compute_curves.png"))
    if not inputs.steps.empty:
        fig = band_plot(inputs.steps, inputs.summary, "inner_step", STEPS_XLABEL, STEPS_TITLE)
        written.append(save_figure(fig, out_dir / "inner_steps.png"))
    sweep = sweep_frame(inputs.summary)
    if not sweep.empty:
        written.append(save_figure(sweep_figure(sweep, inputs.meta.get("sweep", "sweep")), out_dir / "sweep.png"))
    if not inputs.tuning.empty and (inputs.tuning["trials"] > 0).any():  # (the tuning stage's trials)
        written.append(save_figure(tuning_trials_figure(inputs.tuning), out_dir / "tuning.png"))
    names = sample_file_names(inputs.samples)
    for source in sorted(inputs.samples):
        path = out_dir / names[str(source)]
        written.append(samples_figure(source, inputs.samples[source], inputs.sample_steps.get(source), path))
    return written


def write_report(out_dir: Path, inputs: ReportInputs) -> list[Path]:
    """Write summary.csv, steps.csv, curves.csv, the figures and report.md into ``out_dir``.

    Returns the paths written (CSVs, figures, then report.md). A figure whose data frame is empty is skipped.
    Written atomically (:func:`tgbench.reporting.files.write_atomically`): everything goes first into a
    staging directory next to ``out_dir`` and is then moved into place file by file, report.md last, so a report
    that fails half-way leaves the previous one untouched. Other files in ``out_dir`` (a run log, an older
    report's figures) are left alone.
    """
    return write_atomically(Path(out_dir), lambda staging: _write_report_files(staging, inputs))


TUNING_CSV_COLUMNS = ["arm", "space", "trials", "outer_iterations_per_trial", "chosen", "best_val_acc",
                      "tuning_seconds"]


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
        # tuning.csv keeps the columns it had before the full-horizon stage (reports of older stores re-render
        # byte-identically); the budget, pruning and per-trial columns go to tuning_budget.csv
        frames.append(("tuning", inputs.tuning[[c for c in TUNING_CSV_COLUMNS if c in inputs.tuning]]))
        frames.append(("tuning_budget", inputs.tuning.drop(columns=[c for c in TUNING_CSV_COLUMNS if c != "arm"],
                                                           errors="ignore")))
    if not inputs.phases.empty:
        frames.append(("phases", inputs.phases))
    long = compute_long(inputs.curves, inputs.summary, inputs.compute)
    if not long.empty:
        frames.append(("compute_curves", long))
        frames.append(("equal_compute", pd.concat(
            [equal_compute_frame(g, compute_axis(g)).assign(dataset_resolved=ds, axis=compute_axis(g))
             for ds, g in long.groupby("dataset_resolved", sort=True)], ignore_index=True)))
    if not inputs.ceiling.empty:
        frames.append(("ceiling", inputs.ceiling))
    if not inputs.diagnostics.empty:
        frames.append(("diagnostics", inputs.diagnostics))
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

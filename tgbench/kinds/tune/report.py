"""The tune report: ``report.md``, ``trials.csv``, ``summary.csv``, ``importances.csv`` and the loss box plot, from
the frames ``tgbench.kinds.tune`` computes from its Optuna studies (paper Fig. 2: the spread of final losses)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tgbench import stats
from tgbench.reporting.figures import save_figure, tune_loss_box_plot
from tgbench.reporting.files import write_atomically
from tgbench.reporting.markdown import document, figure_links, md_table

BOX_PLOT = "final_loss_boxplot.png"


@dataclass(frozen=True)
class TuneReportInputs:
    """What the tune report is made of.

    * ``trials``: one row per finished trial of every arm: ``arm, trial, status, value`` (the final validation
      loss; a diverged trial's capped value), ``param:<key>`` per tuned setting, accuracies, timings,
      ``dataset_resolved, revision``;
    * ``summary``: one row per arm: ``trials, diverged, pruned, median, q1, q3, iqr, best, median_non_diverged``;
    * ``importances``: long ``arm, param, importance`` (Optuna fANOVA; empty when too few trials);
    * ``divergence_cap``: the value a diverged trial counts at, at most (``tune.divergence_cap``);
    * ``meta``: the provenance (``Provenance.as_meta()``) and the kind's ``dataset``, ``protocol``,
      ``search space`` and ``store`` lines.
    """

    trials: pd.DataFrame
    summary: pd.DataFrame
    importances: pd.DataFrame
    divergence_cap: float
    meta: dict[str, Any]


def tune_header_lines(meta: dict[str, Any]) -> list[str]:
    """Title and provenance of a tune report, in the order and with the names tune reports have always used (not
    ``markdown.header_lines``: plain revision, ``created``, the overrides as one code span)."""
    overrides = meta.get("overrides") or ()
    return [f"# tgbench tune report: {meta['suite']}", "",
            f"- **profile**: {meta['profile']}",
            f"- **revision**: {meta['revision']}",
            f"- **command**: `{meta['command']}`",
            *([f"- **overrides**: `{' '.join(f'--set {o}' for o in overrides)}`"] if overrides else []),
            f"- **machine**: {meta['machine']}",
            f"- **dataset**: {meta['dataset']}",
            f"- **created**: {meta['created']}",
            f"- **protocol**: {meta['protocol']}",
            f"- **search space**: {meta['search space']}",
            f"- **store**: {meta['store']}",
            ""]


def render_markdown(inputs: TuneReportInputs) -> str:
    """The whole ``report.md``; deterministic given ``inputs``."""
    trials, summary, imp, cap = inputs.trials, inputs.summary, inputs.importances, inputs.divergence_cap
    lines = tune_header_lines(inputs.meta)
    lines += ["## Final validation loss over all tuning trials (paper Fig. 2)", "",
              "Objective: validation loss of fresh learners after the last inner step, trained on the trial's "
              f"final teacher. Diverged trials count at min(last finite validation loss, {cap:g}).",
              ""]
    rows = [[r.arm, r.trials, r.diverged, f"{r.median:.4f}", f"{r.q1:.4f} – {r.q3:.4f} ({r.iqr:.4f})",
             f"{r.best:.4f}", "–" if math.isnan(r.median_non_diverged) else f"{r.median_non_diverged:.4f}"]
            for r in summary.itertuples()]
    lines += md_table(["arm", "trials", "diverged", "median", "IQR (q1 – q3)", "best", "median (non-diverged)"],
                      rows) + [""]
    if len(summary) == 2:
        a, b = summary["arm"]
        va = trials.loc[trials["arm"] == a, "value"]
        vb = trials.loc[trials["arm"] == b, "value"]
        lines += [f"Mann-Whitney U (two-sided) on the final losses of `{a}` vs `{b}`: "
                  f"p = {stats.mann_whitney_p(va, vb):.3g}.", ""]
    lines += ["## Parameter importances (Optuna fANOVA, per arm)", ""]
    if imp.empty:
        lines += ["Too few finished trials to estimate importances.", ""]
    else:
        table = imp.pivot(index="param", columns="arm", values="importance").fillna(0.0)
        lines += md_table(["param", *table.columns], [[p, *[f"{v:.3f}" for v in row]]
                                                       for p, row in zip(table.index, table.to_numpy())]) + [""]
    lines += ["## Figures", "", *figure_links([BOX_PLOT]), ""]
    return document(lines)


def write_report(out_dir: Path, inputs: TuneReportInputs) -> list[Path]:
    """Write trials.csv, summary.csv, importances.csv, the box plot and report.md into ``out_dir``, atomically
    (``tgbench.reporting.files``: a failure half-way leaves the previous report)."""
    return write_atomically(Path(out_dir), lambda staging: _write_report_files(staging, inputs))


def _write_report_files(out_dir: Path, inputs: TuneReportInputs) -> list[Path]:
    written = []
    for name, frame in (("trials", inputs.trials), ("summary", inputs.summary), ("importances", inputs.importances)):
        frame.to_csv(out_dir / f"{name}.csv", index=False)
        written.append(out_dir / f"{name}.csv")
    written.append(save_figure(tune_loss_box_plot(inputs.trials, inputs.divergence_cap), out_dir / BOX_PLOT))
    md = out_dir / "report.md"
    md.write_text(render_markdown(inputs), encoding="utf-8")
    return written + [md]

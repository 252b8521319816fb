"""The NAS proxy-quality report: ``report.md``, its CSVs and figures, from the frames ``tgbench.kinds.nas_proxy``
computes (architectures with ground truth and every proxy's score, rank metrics per proxy, random search)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tgbench.reporting.figures import nas_cost_figure, nas_scatter_figure, nas_search_figure, save_figure
from tgbench.reporting.files import write_atomically
from tgbench.reporting.markdown import (PERCENT_BARE, RANK_STATISTIC, document, figure_links, fmt_ci, fmt_seconds,
                                        header_lines, md_table)

# the metrics frame's rank metrics (each with ``_low``/``_high`` columns), in table order, with their headers;
# ``tgbench.kinds.nas_proxy.analysis.METRICS`` computes exactly these (a test keeps the two in step)
METRIC_HEADERS = {
    "spearman": "Spearman ρ",
    "spearman_top50": "top-50 % Spearman ρ",
    "kendall": "Kendall τ",
    "top10_precision": "top-10 % precision",
}


@dataclass(frozen=True)
class NasReportInputs:
    """What the NAS report is made of.

    * ``architectures``: one row per scored architecture: ``arch_id, description``, its ground truth (``val_acc,
      test_acc`` mean over seeds, ``gt_seeds, gt_seconds, gt_cpu_seconds``) and ``score:<proxy>`` per proxy;
    * ``ground_truth``: one row per (architecture, seed) trained on real data (``seconds, cpu_seconds`` ...);
    * ``metrics``: one row per proxy: ``proxy, family, n``, every metric of :data:`METRIC_HEADERS` with its
      ``_low``/``_high`` bootstrap bounds, ``seconds_per_arch, cpu_seconds_per_arch, setup_seconds, total_seconds``;
    * ``search``: one row per (proxy, budget) of random search, the reference arms
      (``tgbench.reporting.frames.ORACLE``, ``RANDOM``) included: ``mean, low, high`` of the pick's ground truth,
      ``repeats, search_seconds``;
    * ``target``: the ground-truth column proxies are judged against (``test_acc`` or ``val_acc``);
    * ``meta``: the provenance (``Provenance.as_meta()``) and the kind's facts, rendered by ``header_lines``;
      ``bootstrap resamples`` is quoted in the text.
    """

    architectures: pd.DataFrame
    ground_truth: pd.DataFrame
    metrics: pd.DataFrame
    search: pd.DataFrame
    target: str
    meta: dict[str, Any]


def ground_truth_cost(ground_truth: pd.DataFrame) -> tuple[float, float]:
    """(wall, CPU) seconds of one ground-truth training, mean over architectures and seeds."""
    return float(ground_truth["seconds"].mean()), float(ground_truth["cpu_seconds"].mean())


def render_markdown(inputs: NasReportInputs, figures: list[str]) -> str:
    """The whole ``report.md``; deterministic given ``inputs`` and the figure file names."""
    meta, metrics, search, target = inputs.meta, inputs.metrics, inputs.search, inputs.target
    archs = inputs.architectures
    gt_wall, gt_cpu = ground_truth_cost(inputs.ground_truth)
    lines = header_lines(meta)
    n = len(archs)
    lines += ["## Proxy quality", "",
              f"Rank agreement of each proxy's score with the ground-truth {target.replace('_', ' ')} over the "
              f"{n} scored architectures (mean over {int(archs['gt_seeds'].min())}+ seeds of real-data training). "
              "Brackets: 95 % percentile bootstrap CIs over architectures (scipy.stats.bootstrap, paired, "
              f"{meta.get('bootstrap resamples', 1000)} resamples, seed 0). Top-50 % ρ: Spearman over the half of "
              "the architectures the proxy scores highest; top-10 % precision: share of the true top 10 % found in "
              "the proxy's top 10 %. Cost per architecture in CPU seconds (robust to other load on the machine) and "
              "wall seconds, measured on the machine above; setup = one-time wall cost (meta-training the "
              "teacher); total = setup + wall cost of every architecture.", ""]
    header = ["proxy", "family", *METRIC_HEADERS.values(), "CPU s / arch", "wall s / arch", "setup s",
              f"total s ({n} archs)"]
    body = [[r.proxy, r.family] + [fmt_ci(r[m], r[f"{m}_low"], r[f"{m}_high"], RANK_STATISTIC) for m in METRIC_HEADERS]
            + [fmt_seconds(r.cpu_seconds_per_arch), fmt_seconds(r.seconds_per_arch), fmt_seconds(r.setup_seconds),
               fmt_seconds(r.total_seconds)]
            for _, r in metrics.iterrows()]
    lines += md_table(header, body)
    lines += ["", f"Ground-truth cost: {fmt_seconds(gt_cpu)} CPU s ({fmt_seconds(gt_wall)} wall s) per "
              "architecture and seed (mean).", ""]
    lines += ["## Random-search NAS", "",
              f"Best architecture out of N random candidates picked by each proxy: its ground-truth "
              f"{target.replace('_', ' ')} (%), mean [95 % bootstrap CI] over repeats (the same candidate draws "
              "for every proxy). Oracle = picked by the ground truth itself; random = no proxy.", ""]
    budgets = sorted(search["budget"].unique())
    body = []
    for label, g in search.groupby("proxy", sort=False):
        by_n = g.set_index("budget")
        body.append([label] + [fmt_ci(by_n.loc[b, "mean"], by_n.loc[b, "low"], by_n.loc[b, "high"], PERCENT_BARE)
                               for b in budgets])
    lines += md_table(["proxy"] + [f"N = {b}" for b in budgets], body)
    lines += ["", "## Figures", ""] + figure_links(figures) + [""]
    return document(lines)


def write_report(out_dir: Path, inputs: NasReportInputs) -> list[Path]:
    """Write architectures.csv, ground_truth.csv, metrics.csv, random_search.csv, the figures and report.md
    into ``out_dir``, atomically (``tgbench.reporting.files``: a failure half-way leaves the previous report)."""
    return write_atomically(Path(out_dir), lambda staging: _write_report_files(staging, inputs))


def _write_report_files(out_dir: Path, inputs: NasReportInputs) -> list[Path]:
    written = []
    for name, frame in (("architectures", inputs.architectures), ("ground_truth", inputs.ground_truth),
                        ("metrics", inputs.metrics), ("random_search", inputs.search)):
        frame.to_csv(out_dir / f"{name}.csv", index=False)
        written.append(out_dir / f"{name}.csv")
    _, gt_cpu = ground_truth_cost(inputs.ground_truth)
    figures = [save_figure(nas_scatter_figure(inputs.architectures, inputs.metrics, inputs.target),
                           out_dir / "scatter.png"),
               save_figure(nas_cost_figure(inputs.metrics, inputs.search, gt_cpu, inputs.target), out_dir / "cost.png"),
               save_figure(nas_search_figure(inputs.search, inputs.target), out_dir / "random_search.png")]
    md = out_dir / "report.md"
    md.write_text(render_markdown(inputs, [p.name for p in figures]), encoding="utf-8")
    return written + figures + [md]

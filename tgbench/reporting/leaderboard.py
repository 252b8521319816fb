"""The leaderboard's files: ``LEADERBOARD.md``, ``LEADERBOARD.csv``, one accuracy-vs-compute PNG per table and the
web page ``LEADERBOARD_site/index.html`` (``tgbench.reporting.site``), from the frame ``tgbench.leaderboard``
computes (one row per arm, ranked within its table of comparable runs)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from tgbench.errors import BadInput
from tgbench.reporting.figures import pareto_figure, save_figure
from tgbench.reporting.files import write_atomically
from tgbench.reporting.markdown import PERCENT, document, fmt_ci, fmt_gflops, md_table
from tgbench.reporting.site import write_page

# the leaderboard frame (and CSV): rows of one table are consecutive, in rank order
COLUMNS = ["table", "dataset", "profile", "rank", "suite", "source", "method", "variant", "config_hash",
           "test_acc_mean", "test_acc_ci_low", "test_acc_ci_high", "seeds_complete", "diverged", "meta_train_seconds",
           "meta_train_flops", "pareto", "finished", "revision", "device", "protocol", "report"]
# ``report``: the arm's run report (report.md) relative to the leaderboard's folder; empty where none was found

HEADER = ["rank", "source", "suite", "variant", "test acc, last inner step (mean % [95 % CI])", "seeds",
          "meta-train time (s/seed)", "meta-train compute (GFLOP/seed)", "Pareto", "measured", "revision", "device"]

INTRO = ("Few-step teaching: a freshly initialised learner trains for the protocol's inner steps on each source's "
         "data; accuracy is its test accuracy after the last step, mean over complete seeds with a 95 % percentile "
         "bootstrap CI (1000 resamples). Only runs under the same protocol share a table. Compute = matmul/conv "
         "FLOPs of meta-training per seed (`torch.utils.flop_counter`, forward + backward + double backward, "
         "evaluation excluded). ★ = on the accuracy-vs-compute Pareto front.")

# (label in the list, key of the provenance mapping), in the order the leaderboard has always listed them
PROVENANCE_LINES = (("command", "command"), ("store", "store"), ("machine", "machine"), ("torch", "torch"),
                    ("leaderboard revision", "revision"), ("created", "created"))
# the page lists them too, and (a page rendered from a CSV, tgbench leaderboard --from-csv) the command that did
PAGE_PROVENANCE = (*PROVENANCE_LINES, ("page rendered by", "page"))


def tables(frame: pd.DataFrame) -> list[pd.DataFrame]:
    """The frame's tables in order: each run of consecutive rows with the same ``table`` key."""
    if frame.empty:
        return []
    starts = (frame["table"] != frame["table"].shift()).cumsum()
    return [rows for _, rows in frame.groupby(starts, sort=True)]


def table_dataset(rows: pd.DataFrame) -> str:
    """A table's dataset as its heading prints it: ``None`` for a protocol that names none (an old record
    without ``dataset_resolved``; the frame holds it as NaN, the heading always said None)."""
    value = rows.iloc[0]["dataset"]
    return "None" if pd.isna(value) else str(value)


def table_title(rows: pd.DataFrame) -> str:
    first = rows.iloc[0]
    return f"{table_dataset(rows)} · {first['profile']} · {first['table']}"


def table_lines(rows: pd.DataFrame, figure: str | None) -> list[str]:
    """One table's section: heading, protocol, ranked rows, the Pareto front cheapest first, the figure link."""
    body = []
    for r in rows.itertuples():
        seeds = f"{r.seeds_complete}" + (f" (+{r.diverged} diverged)" if r.diverged else "")
        body.append([r.rank, r.source, r.suite, r.variant,
                     fmt_ci(r.test_acc_mean, r.test_acc_ci_low, r.test_acc_ci_high, PERCENT), seeds,
                     "n/a" if math.isnan(r.meta_train_seconds) else f"{r.meta_train_seconds:.1f}",
                     fmt_gflops(r.meta_train_flops), "★" if r.pareto else "", r.finished, r.revision,
                     "n/a" if pd.isna(r.device) else r.device])   # (a row kept from a CSV before devices)
    first = rows.iloc[0]
    lines = [f"## {table_dataset(rows)} · profile `{first['profile']}` · protocol `{first['table']}`", "",
             f"Protocol: {first['protocol']}.", "", *md_table(HEADER, body), ""]
    front = sorted((r for r in rows.itertuples() if r.pareto), key=lambda r: r.meta_train_flops)
    if front:
        lines += ["Cost-aware view — the Pareto front, cheapest first (each step buys accuracy with compute): "
                  + " → ".join(f"{r.suite}/{r.source} ({100 * r.test_acc_mean:.2f} % for "
                               f"{fmt_gflops(r.meta_train_flops)} GFLOP)" for r in front) + ".", ""]
    if figure:
        lines += [f"Accuracy vs meta-training compute, Pareto front in red: ![pareto]({figure})", ""]
    return lines


def render_markdown(frame: pd.DataFrame, meta: Mapping[str, Any], figures: list[str | None]) -> str:
    """The whole ``LEADERBOARD.md``: ``figures`` holds each table's figure path (relative), None where it has none."""
    lines = ["# tgbench leaderboard", "", INTRO, ""]
    lines += [f"- {label}: `{meta[key]}`" for label, key in PROVENANCE_LINES] + [""]
    blocks = tables(frame)
    if not blocks:
        lines += ["No finished few-step cells in the store.", ""]
    for rows, figure in zip(blocks, figures):
        lines += table_lines(rows, figure)
    return document(lines)


def site_dir(out: Path) -> Path:
    """The web page's folder of the leaderboard whose Markdown is ``out``: ``<stem>_site`` beside it."""
    return Path(out).parent / f"{Path(out).stem}_site"


def write_report(out: Path, frame: pd.DataFrame, meta: Mapping[str, Any]) -> list[Path]:
    """``out`` (Markdown), ``out`` with ``.csv`` (the frame), ``<stem>_figures/pareto_<table>.png`` and the page
    ``<stem>_site/index.html`` with its copies of the figures, written atomically (``tgbench.reporting.files``;
    staged inside ``out``'s folder, which holds other reports). ``meta``: the provenance
    (``Provenance.as_meta()``) and ``store``. Returns the figures, the CSV, the page's files, then the Markdown."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        (out.parent / f"{out.stem}_figures").mkdir(exist_ok=True)
    except OSError as exc:
        raise BadInput(f"--out: cannot write to {out.parent}: {exc.strerror}") from None
    return write_atomically(out.parent, lambda staging: _write_files(staging / out.name, frame, meta),
                            stage_inside=True)


def _write_files(md: Path, frame: pd.DataFrame, meta: Mapping[str, Any]) -> list[Path]:
    fig_dir = md.parent / f"{md.stem}_figures"
    fig_dir.mkdir()
    figures = draw_figures(frame, fig_dir)
    csv = md.with_suffix(".csv")
    # (the report links are derived from the files beside the leaderboard, not data: the page shows them, the CSV
    # keeps the columns it had, so leaderboards of older stores re-render byte-identically)
    frame.drop(columns=["report"], errors="ignore").to_csv(csv, index=False)
    page = write_site(site_dir(md), frame, figures, meta)
    links = [None if f is None else f"{fig_dir.name}/{f.name}" for f in figures]
    md.write_text(render_markdown(frame, meta, links), encoding="utf-8")
    return [*(f for f in figures if f is not None), csv, *page, md]


def draw_figures(frame: pd.DataFrame, folder: Path) -> list[Path | None]:
    """Each table's Pareto figure as ``folder/pareto_<table>.png``; None for a table with none to draw."""
    figures: list[Path | None] = []
    for rows in tables(frame):
        fig = pareto_figure(rows, table_title(rows))
        figures.append(None if fig is None else save_figure(fig, folder / f"pareto_{rows.iloc[0]['table']}.png"))
    return figures


def write_site(folder: Path, frame: pd.DataFrame, figures: list[Path | None], meta: Mapping[str, Any]) -> list[Path]:
    """The web page of the frame into ``folder`` (``tgbench.reporting.site``), ``figures`` each table's Pareto
    PNG (None: none), with the Markdown's intro and provenance lines."""
    return write_page(folder, frame, tables(frame), figures, meta, (INTRO, PAGE_PROVENANCE))


def write_site_only(out: Path, frame: pd.DataFrame, meta: Mapping[str, Any]) -> Path:
    """Only the page (``site_dir(out)``: index.html and its figures, drawn again from the frame), atomically, for a
    leaderboard whose Markdown ``out`` is already written. Returns the page."""
    folder = site_dir(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"--out: cannot write to {folder}: {exc.strerror}") from None

    return write_atomically(folder, lambda staging: write_site(staging, frame, draw_figures(frame, staging), meta))[-1]


def provenance_of_markdown(text: str) -> dict[str, str]:
    """The provenance mapping back from a ``LEADERBOARD.md`` (its ``- label: `value``` lines,
    :data:`PROVENANCE_LINES`); a line it lacks is left out."""
    keys = dict(PROVENANCE_LINES)
    meta = {}
    for line in text.splitlines():
        label, sep, value = line.removeprefix("- ").partition(": ")
        if line.startswith("- ") and sep and label in keys and value.startswith("`") and value.endswith("`"):
            meta.setdefault(keys[label], value[1:-1])
    return meta

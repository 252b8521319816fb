"""The leaderboard as a static web page: ``<stem>_site/index.html`` plus its Pareto figures, next to
``LEADERBOARD.md``, rendered from the same frame (``tgbench.reporting.leaderboard.COLUMNS``).

The page is one self-contained file: its CSS and JavaScript are inline, its images are relative links to PNGs in
its own folder, so it opens from disk (``file://``) with no server and no network, and the folder can be copied or
published as it is. Without JavaScript it still shows every table, ranked; with it, each table sorts by a click on
a column header (again: the other direction) and two selects hide the rows of other datasets / profiles.

Every text that comes from a user (suite, source and profile names, variants, revisions, the command line) is
escaped with ``html.escape`` on its way into the page, so a label like ``<script>`` shows as text. Links are
URL-quoted relative paths.
"""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote

import pandas as pd

from tgbench.reporting.markdown import PERCENT, fmt_ci, fmt_gflops

PAGE_NAME = "index.html"

# (header, how the JavaScript sorts it: "number" or "text", the header's tooltip) of the table's columns, in order;
# short headers keep the table narrow enough for the figure beside it, the tooltips say what the Markdown's say
PAGE_COLUMNS = (("rank", "number", "rank by mean test accuracy within this protocol"),
                ("source", "text", "the arm (its label in the suite); hover a name for its config hash"),
                ("suite", "text", "the suite it ran in"), ("method", "text", "the registered method"),
                ("variant", "text", "its parameters and tuned values"),
                ("test acc %", "number", "test accuracy after the last inner step: mean % [95 % bootstrap CI] over "
                                         "complete seeds"),
                ("seeds", "number", "complete seeds (+ diverged ones, counted, not averaged)"),
                ("s/seed", "number", "meta-training wall time per seed (s)"),
                ("GFLOP/seed", "number", "meta-training compute per seed: matmul/conv FLOPs of forward, backward and "
                                         "double backward (torch.utils.flop_counter), evaluation excluded"),
                ("Pareto", "number", "★: on the accuracy-vs-compute Pareto front"),
                ("measured", "text", "date the last seed finished"), ("revision", "text", "tgbench revision(s)"),
                ("device", "text", "where its seeds ran"), ("report", "text", "the run's report, where found"))

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5em auto;
       max-width: 1900px; padding: 0 1.5em; color: #1d1d1f; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: .3em; }
h2 { font-size: 1.2em; margin: 1.8em 0 .3em; }
.intro, .protocol { color: #444; max-width: 75em; }
dl.provenance { display: grid; grid-template-columns: max-content 1fr; gap: .1em 1em; font-size: .85em;
                color: #555; margin: .8em 0; }
dl.provenance dt { font-weight: 600; }
dl.provenance dd { margin: 0; font-family: ui-monospace, Menlo, Consolas, monospace; overflow-wrap: anywhere; }
#filters { position: sticky; top: 0; background: #f5f5f7; border: 1px solid #ddd; border-radius: 6px;
           padding: .5em .8em; display: flex; gap: 1.5em; align-items: center; flex-wrap: wrap; z-index: 1; }
#filters label { font-weight: 600; }
#filters select { margin-left: .4em; font: inherit; }
#shown { color: #555; }
/* the figure goes under its table at its own size: beside a 14-column table it would shrink to a thumbnail */
.board .table-wrap { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; font-size: .9em; }
th, td { border-bottom: 1px solid #e3e3e3; padding: .35em .6em; text-align: left; vertical-align: top; }
th { background: #fafafa; white-space: nowrap; }
th button { all: unset; cursor: pointer; font-weight: 600; }
th button:focus-visible { outline: 2px solid #0a66c2; }
th[aria-sort="ascending"] button::after { content: " \\25B2"; font-size: .75em; }
th[aria-sort="descending"] button::after { content: " \\25BC"; font-size: .75em; }
td.nowrap { white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.variant { font-size: .82em; color: #555; min-width: 14em; max-width: 24em; }
td.pareto { color: #c62828; text-align: center; }
tr.front td:first-child { box-shadow: inset 3px 0 #c62828; }
tbody tr:hover { background: #f0f6ff; }
figure { max-width: 650px; margin: 1em 0 0; }
figure img { max-width: 100%; border: 1px solid #e3e3e3; }
figcaption { font-size: .85em; color: #555; }
code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: .92em; }
"""

# Sorting and filtering; cells carry their sort key in data-value (numbers as numbers, missing as ""), rows their
# dataset and profile in data-dataset / data-profile. Missing values sort last in either direction.
SCRIPT = """
(function () {
  function key(cell, type) {
    var v = cell.getAttribute('data-value');
    if (type === 'number') { return v === '' || v === null ? null : parseFloat(v); }
    return v === null ? cell.textContent.trim().toLowerCase() : v.toLowerCase();
  }
  function sortBy(th) {
    var table = th.closest('table'), body = table.tBodies[0];
    var column = Array.prototype.indexOf.call(th.parentNode.children, th);
    var type = th.getAttribute('data-type');
    var ascending = th.getAttribute('aria-sort') !== 'ascending';
    Array.prototype.forEach.call(th.parentNode.children, function (h) { h.setAttribute('aria-sort', 'none'); });
    th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[column], type), y = key(b.cells[column], type);
      if (x === null || y === null) { return (x === null) - (y === null); }
      var order = x < y ? -1 : x > y ? 1 : 0;
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  document.querySelectorAll('th[data-type] button').forEach(function (button) {
    button.addEventListener('click', function () { sortBy(button.closest('th')); });
  });
  var dataset = document.getElementById('filter-dataset'), profile = document.getElementById('filter-profile');
  function filter() {
    var shown = 0, total = 0;
    document.querySelectorAll('section.protocol-table').forEach(function (section) {
      var visible = 0;
      section.querySelectorAll('tbody tr').forEach(function (row) {
        var keep = (!dataset.value || row.getAttribute('data-dataset') === dataset.value) &&
                   (!profile.value || row.getAttribute('data-profile') === profile.value);
        row.hidden = !keep; total += 1; if (keep) { visible += 1; }
      });
      section.hidden = visible === 0; shown += visible;
    });
    document.getElementById('shown').textContent = shown + ' of ' + total + ' rows shown';
  }
  dataset.addEventListener('change', filter);
  profile.addEventListener('change', filter);
  filter();
})();
"""


def esc(value: Any) -> str:
    """``value`` as HTML text or attribute value: every user-provided string passes through here."""
    return html.escape("" if _missing(value) else str(value), quote=True)


def prose(text: str) -> str:
    """Escaped text whose Markdown code spans (`...`) become ``<code>`` (the intro is shared with the Markdown)."""
    parts = str(text).split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: no code spans
        return esc(text)
    return "".join(f"<code>{esc(p)}</code>" if i % 2 else esc(p) for i, p in enumerate(parts))


def href(path: str) -> str:
    """A relative path as an attribute value: URL-quoted (spaces, ``#``, ``?`` in folder names), then escaped."""
    return esc(quote(path, safe="/"))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number(value: Any) -> str:
    """A sort key for ``data-value``: the number, or "" for a missing one (sorted last)."""
    return "" if _missing(value) else repr(float(value))


def _cell(text: str, value: str | None = None, css: str | None = None) -> str:
    attrs = (f' class="{css}"' if css else "") + ("" if value is None else f' data-value="{value}"')
    return f"<td{attrs}>{text}</td>"


def row_html(r: Any, page_to_reports: str) -> str:
    """One ``<tr>`` of a frame row (a pandas itertuple); ``page_to_reports``: the page's folder relative to the
    folder the frame's ``report`` paths are relative to (``"../"``)."""
    seeds = f"{r.seeds_complete}" + (f" (+{r.diverged} diverged)" if r.diverged else "")
    seconds = math.nan if _missing(r.meta_train_seconds) else float(r.meta_train_seconds)
    report = ("n/a" if _missing(r.report) or not r.report
              else f'<a href="{href(page_to_reports + str(r.report))}">report</a>')
    cells = [
        _cell(esc(r.rank), str(int(r.rank)), "num"),
        f'<td title="config hash {esc(r.config_hash)}" data-value="{esc(r.source)}">{esc(r.source)}</td>',
        _cell(esc(r.suite)), _cell(esc(r.method)), _cell(esc(r.variant), css="variant"),
        _cell(esc(fmt_ci(r.test_acc_mean, r.test_acc_ci_low, r.test_acc_ci_high, PERCENT)),
              _number(r.test_acc_mean), "num"),
        _cell(esc(seeds), _number(r.seeds_complete), "num"),
        _cell("n/a" if math.isnan(seconds) else f"{seconds:.1f}", _number(seconds), "num"),
        _cell(esc(fmt_gflops(r.meta_train_flops)), _number(r.meta_train_flops), "num"),
        _cell("★" if r.pareto else "", "1" if r.pareto else "0", "pareto"),
        _cell(esc(r.finished), css="nowrap"), _cell(f"<code>{esc(r.revision)}</code>", esc(r.revision), "nowrap"),
        _cell(esc(r.device if not _missing(r.device) else "n/a"), css="nowrap"), _cell(report, esc(r.report)),
    ]
    css = ' class="front"' if r.pareto else ""
    return (f'<tr{css} data-dataset="{esc(r.dataset)}" data-profile="{esc(r.profile)}">' + "".join(cells)
            + "</tr>")


def table_html(rows: pd.DataFrame, figure: str | None, page_to_reports: str) -> str:
    """One protocol's section: heading, protocol, the sortable table and its Pareto figure under it."""
    first = rows.iloc[0]
    dataset = "None" if _missing(first["dataset"]) else str(first["dataset"])
    head = "".join(f'<th data-type="{kind}" aria-sort="{"ascending" if name == "rank" else "none"}" scope="col" '
                   f'title="{esc(tip)}"><button type="button">{esc(name)}</button></th>'
                   for name, kind, tip in PAGE_COLUMNS)
    body = "\n".join(row_html(r, page_to_reports) for r in rows.itertuples())
    figure_html = (f'<figure><img src="{href(figure)}" alt="accuracy vs meta-training compute, {esc(dataset)} '
                   f'{esc(first["profile"])}"><figcaption>Accuracy vs meta-training compute; the Pareto front in '
                   "red.</figcaption></figure>" if figure else "")
    return (f'<section class="protocol-table" id="table-{esc(first["table"])}">\n'
            f"<h2>{esc(dataset)} · profile <code>{esc(first['profile'])}</code> · protocol "
            f"<code>{esc(first['table'])}</code></h2>\n"
            f'<p class="protocol">Protocol: {esc(first["protocol"])}.</p>\n'
            f'<div class="board"><div class="table-wrap"><table class="sortable">\n<thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{body}\n</tbody></table></div>\n{figure_html}</div>\n</section>")


def _select(ident: str, label: str, values: list[str]) -> str:
    options = "".join(f'<option value="{esc(v)}">{esc(v)}</option>' for v in values)
    return (f'<label for="{ident}">{esc(label)}</label><select id="{ident}"><option value="">all</option>'
            f"{options}</select>")


def render_page(frame: pd.DataFrame, tables: list[pd.DataFrame], figures: list[str | None],
                meta: Mapping[str, Any], intro: str, provenance: tuple[tuple[str, str], ...]) -> str:
    """The whole ``index.html``: ``tables`` the frame's tables in order, ``figures`` each one's figure path relative
    to the page (None: no figure), ``meta`` the provenance listed as ``provenance`` (label, key) pairs. The frame's
    ``report`` column holds paths relative to the page's parent folder."""
    datasets = sorted({"None" if _missing(d) else str(d) for d in frame["dataset"]})
    profiles = sorted({str(p) for p in frame["profile"]})
    prov = "".join(f"<dt>{esc(label)}</dt><dd>{esc(meta.get(key, ''))}</dd>" for label, key in provenance
                   if key in meta)
    sections = "\n".join(table_html(rows, fig, "../") for rows, fig in zip(tables, figures))
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>tgbench leaderboard</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
        "<h1>tgbench leaderboard</h1>", f'<p class="intro">{prose(intro)}</p>',
        f'<dl class="provenance">{prov}</dl>',
        f'<form id="filters" onsubmit="return false">{_select("filter-dataset", "dataset", datasets)}'
        f'{_select("filter-profile", "profile", profiles)}<span id="shown">{len(frame)} rows</span></form>',
        sections if sections else "<p>No finished few-step cells in the store.</p>",
        f"<script>{SCRIPT}</script>", "</body>", "</html>", ""])


def write_page(site_dir: Path, frame: pd.DataFrame, tables: list[pd.DataFrame], figures: list[Path | None],
               meta: Mapping[str, Any], text: tuple[str, tuple[tuple[str, str], ...]]) -> list[Path]:
    """Write ``site_dir/index.html`` and a copy of each table's figure into ``site_dir`` (a staging folder: the
    caller moves it into place). ``text``: the intro paragraph and the provenance (label, key) pairs. Returns the
    figures, then the page."""
    site_dir.mkdir(parents=True, exist_ok=True)
    written, links = [], []
    for fig in figures:
        if fig is None:
            links.append(None)
            continue
        copy = site_dir / fig.name
        if copy.resolve() != fig.resolve():  # (a figure drawn into the page's folder stays where it is)
            copy.write_bytes(fig.read_bytes())
        written.append(copy)
        links.append(copy.name)
    page = site_dir / PAGE_NAME
    page.write_text(render_page(frame, tables, links, meta, *text), encoding="utf-8")
    return [*written, page]

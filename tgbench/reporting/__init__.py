"""What every report tgbench writes is rendered with: the shared Markdown, figure, frame and file helpers, and the
leaderboard's pages (which are no kind's).

The split of work: a suite kind (``tgbench.kinds.<kind>``, one folder each) and the leaderboard
(``tgbench.leaderboard``) read the store, compute pandas data frames (cells, trials, metrics, rankings) and
assemble the provenance facts (``tgbench.provenance.report_provenance``); a kind's own ``report`` module
(``tgbench.kinds.<kind>.report``) and this package turn those frames and that mapping into files — Markdown, CSV,
PNG — and nothing more. Nothing here or in a kind's report reads the store, trains, or imports torch
(``tests/test_architecture.py`` checks it), so a report is a function of the frames it is handed and can be
rendered, tested or restyled without running anything.

* ``markdown``: tables (``md_table``, cell escaping), code spans, number formatting with the one interval
  formatter (``fmt_ci`` and its presets), the provenance header (``header_lines``), figure links;
* ``figures``: ``save_figure`` and every matplotlib figure of every report (accuracy bands, sample grids, the
  sweep, the NAS scatter/cost/search plots, the tune box plot, the leaderboard's Pareto plot);
* ``frames``: what the handed-over frames mean where both tables and figures need it (which cells count, the
  dataset of a row, the reference arms of the NAS search table);
* ``files``: writing a report directory atomically (staging directory, then moved into place);
* ``leaderboard`` and ``site``: the leaderboard's Markdown, CSV, figures and web page. Each kind's report is
  ``tgbench.kinds.<kind>.report.write_report(out, inputs)``.

This ``__init__`` imports nothing, so importing one report module does not pull in the others.
"""

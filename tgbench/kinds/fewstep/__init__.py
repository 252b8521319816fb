"""The ``fewstep`` suite kind, one folder: every arm (source entry) meta-trained for ``evaluation.seeds`` seeds,
each cell then scored by fresh learners on its teacher's lessons, one report per suite.

* ``run``: running and resuming the suite (the tuning stage, then every unfinished cell) and reading its cells
  back from the store into the report's frames;
* ``analysis``: what the report's numbers are (per-arm aggregates, pairwise comparisons and p-values, convergence
  flags, the equal-compute table and crossings, the sweep, the data ceiling), from those frames;
* ``report``: ``report.md``, its CSVs and figures, formatted from the frames and the analysis.

Its section (``tuning:``, ``sweep:`` ...), identity (``tgbench.identity``) and records (``tgbench.records``) stay
below every kind: the engine, the store and the leaderboard read them too.
"""
from tgbench.kinds import SuiteKind
from tgbench.kinds.fewstep.run import accepted_hashes, no_cells_hint, report_fewstep, run_fewstep

FEWSTEP = SuiteKind(run=run_fewstep, report=report_fewstep,
                    summary="arms x seeds: meta-train, score fresh learners, one report",
                    current_cells=accepted_hashes, no_cells_hint=no_cells_hint)

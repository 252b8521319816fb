"""The ``tune`` suite kind, one folder: an Optuna study per arm over its ``tune.space``, the spread of the final
validation losses of every trial (hyperparameter sensitivity, the GTN paper's Fig. 2).

* ``run``: the ``tune:`` section, running and resuming each arm's study, and reading the studies back into the
  report's frames (trials, per-arm summary, fANOVA importances);
* ``report``: ``report.md``, its CSVs and the loss box plot, formatted from those frames.
"""
from tgbench.kinds import SuiteKind
from tgbench.kinds.tune.run import TuneConfig, check_tune, report_tune_suite, run_tune_suite

TUNE = SuiteKind(run=run_tune_suite, report=report_tune_suite, validate=check_tune, section="tune",
                 section_model=TuneConfig, summary="an Optuna study per arm: the spread of final losses (sensitivity)")

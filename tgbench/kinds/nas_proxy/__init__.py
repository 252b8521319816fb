"""The ``nas_proxy`` suite kind, one folder: how well each proxy ranks architectures against their real-data
ground truth.

* ``run``: the ``nas:`` section, the search space, ground truth, teachers and proxy scores (each cached in the
  store), and the entry points ``tgbench run`` / ``tgbench report`` dispatch to;
* ``analysis``: the rank metrics of every proxy and random search with it, from the stored scores;
* ``report``: ``report.md``, its CSVs and figures, formatted from those frames.
"""
from tgbench.kinds import SuiteKind
from tgbench.kinds.nas_proxy.run import NasConfig, check_nas, report_nas_suite, run_nas_suite, scored_architectures

NAS_PROXY = SuiteKind(run=run_nas_suite, report=report_nas_suite, validate=check_nas, section="nas",
                      section_model=NasConfig,
                      summary="proxies rank architectures: Spearman etc. against real-data ground truth")

__all__ = ["NAS_PROXY", "scored_architectures"]   # (the golden-hash script reads the scored architectures here)

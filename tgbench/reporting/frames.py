"""What the frames handed to the reports mean, where a table and a figure both need it.

Few-step frames (``tgbench.kinds.fewstep.report.ReportInputs``): a cell counts in means, bands and p-values only
when complete; a row without a resolved dataset belongs to :data:`UNKNOWN_DATASET`. NAS frames: the random-search
table has two reference arms beside the proxies (:data:`ORACLE`, :data:`RANDOM`), and "top" means the best
``tgbench.stats.TOP_FRACTION`` of the architectures. ``tgbench.kinds.nas_proxy.analysis`` builds its tables with
these names.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from tgbench.records import Status

UNKNOWN_DATASET = "(unknown dataset)"

ORACLE, RANDOM = "oracle (ground truth)", "random pick"   # the NAS search table's reference arms


def dataset_labels(frame: pd.DataFrame) -> pd.Series:
    """The resolved dataset of every row as a string, :data:`UNKNOWN_DATASET` where it is missing."""
    return frame["dataset_resolved"].fillna(UNKNOWN_DATASET).astype(str)


def dataset_of(summary: pd.DataFrame) -> dict[str, str]:
    """Source -> the resolved dataset of its cells (the summary's last row of each source wins)."""
    if summary.empty:
        return {}
    return {str(s): d for s, d in zip(summary["source"], dataset_labels(summary))}


def complete_only(long: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Drop (source, seed) pairs whose cell is not complete; pairs the summary does not know are kept."""
    if long.empty or summary.empty:
        return long
    bad = summary.loc[summary["status"] != Status.COMPLETE.value, ["source", "seed"]]
    bad_keys = set(zip(bad["source"].astype(str), bad["seed"]))
    keep = [(str(s), d) not in bad_keys for s, d in zip(long["source"], long["seed"])]
    return long[np.asarray(keep, dtype=bool)]

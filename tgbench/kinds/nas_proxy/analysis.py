"""The NAS proxy-quality report's numbers: how well each proxy's scores rank the scored architectures against
their ground truth (``METRICS``: Spearman, top-50 % Spearman, Kendall, top-10 % precision, each with a paired
bootstrap CI over architectures), and random-search NAS with each proxy, the oracle and a random pick. The rank
statistics themselves are :mod:`tgbench.stats`'; ``report`` formats what this computes."""
from __future__ import annotations

import numpy as np
import pandas as pd

from tgbench import stats
from tgbench.identity import arch_id
from tgbench.nn import LearnerSpec
from tgbench.records import NasProxyScores
from tgbench.reporting.frames import ORACLE, RANDOM


METRICS = {
    "spearman": lambda s, t: stats.spearman(s, t)[0],
    "spearman_top50": stats.top_half_spearman,
    "kendall": lambda s, t: stats.kendall(s, t)[0],
    "top10_precision": stats.top_precision,
}


def proxy_metrics(score, truth, resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    """Every metric of ``METRICS`` with its 95 % bootstrap CI: keys ``<metric>``, ``<metric>_low/_high``."""
    out = {}
    for name, metric in METRICS.items():
        out[name] = float(metric(score, truth))
        out[f"{name}_low"], out[f"{name}_high"] = stats.paired_bootstrap_ci(metric, score, truth, resamples, seed)
    return out


def random_search(score, truth, budgets: list[int], repeats: int, seed: int = 0) -> dict[int, np.ndarray]:
    """Random-search NAS with a proxy (the paper's Table 1 logic): for each budget N and repeat, draw N distinct
    candidates, keep the one the proxy scores highest, and record its ground truth. Returns N -> (repeats,)
    array. Pass ``score = truth`` for the oracle; a constant score picks the first drawn (a random pick)."""
    score, truth = np.asarray(score, float), np.asarray(truth, float)
    rng = np.random.default_rng(seed)
    out = {}
    for n in budgets:
        picks = np.empty(repeats)
        for r in range(repeats):
            cand = rng.choice(len(score), size=n, replace=False)
            picks[r] = truth[cand[np.argmax(score[cand])]]
        out[n] = picks
    return out


def architecture_table(specs: list[LearnerSpec], truth: pd.DataFrame,
                       records: list[NasProxyScores]) -> pd.DataFrame:
    """One row per scored architecture: id, description, ground truth (mean over seeds), every proxy's score."""
    gt = truth.groupby("arch_id").agg(val_acc=("val_acc", "mean"), test_acc=("test_acc", "mean"),
                                      gt_seeds=("seed", "count"), gt_seconds=("seconds", "mean"),
                                      gt_cpu_seconds=("cpu_seconds", "mean"))
    rows = []
    for spec in specs:
        aid = arch_id(spec)
        row = {"arch_id": aid, "description": spec.describe(), **gt.loc[aid].to_dict()}
        row.update({f"score:{r.label}": r.scores.get(aid) for r in records})
        rows.append(row)
    return pd.DataFrame(rows)


def metrics_table(archs: pd.DataFrame, records: list[NasProxyScores], target: str, resamples: int) -> pd.DataFrame:
    rows = []
    for r in records:
        score = archs[f"score:{r.label}"].to_numpy(float)
        rows.append({"proxy": r.label, "family": r.family, "n": len(score),
                     **proxy_metrics(score, archs[target].to_numpy(float), resamples),
                     "seconds_per_arch": float(np.mean(list(r.seconds.values()))),
                     "cpu_seconds_per_arch": float(np.mean(list(r.cpu_seconds.values()))),
                     "setup_seconds": r.setup_seconds,
                     "total_seconds": r.setup_seconds + float(sum(r.seconds.values()))})
    return pd.DataFrame(rows)


def search_table(archs: pd.DataFrame, records: list[NasProxyScores], target: str, budgets: list[int],
                 repeats: int) -> pd.DataFrame:
    """Random search with every proxy, the oracle and a random pick: one row per (proxy, budget), with the
    ground truth of the pick (mean and 95 % bootstrap CI over repeats) and the search's cost: the proxy's setup
    (wall s) + N x its CPU s per architecture; the oracle pays full ground-truth training of all N."""
    truth = archs[target].to_numpy(float)
    gt_per_arch = float((archs["gt_cpu_seconds"] * archs["gt_seeds"]).mean())
    arms = [(r.label, archs[f"score:{r.label}"].to_numpy(float), r.setup_seconds,
             float(np.mean(list(r.cpu_seconds.values())))) for r in records]
    arms += [(ORACLE, truth, 0.0, gt_per_arch), (RANDOM, np.zeros_like(truth), 0.0, 0.0)]
    rows = []
    for label, score, setup, per_arch in arms:
        for n, picks in random_search(score, truth, budgets, repeats).items():
            ci = stats.mean_ci(picks)
            rows.append({"proxy": label, "budget": n, "mean": ci.mean, "low": ci.low, "high": ci.high,
                         "repeats": ci.n, "search_seconds": setup + n * per_arch})
    return pd.DataFrame(rows)

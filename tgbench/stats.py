"""Thin, documented wrappers over :mod:`scipy.stats` for the report.

No statistic is computed by hand here: every interval, p-value and correlation comes from scipy. The
wrappers only fix the conventions the harness relies on:

* NaNs are dropped (pairwise for correlations) before anything is computed;
* too little data gives ``nan`` instead of an exception or a scipy warning;
* results are plain Python floats, and anything random is seeded, so a report is reproducible.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from itertools import combinations
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

#: Bootstrap method used by :func:`mean_ci` and :func:`mean_ci_columns` (see :func:`mean_ci` for why).
BOOTSTRAP_METHOD = "percentile"

_NAN = float("nan")


@dataclass(frozen=True)
class MeanCI:
    """A sample mean with a confidence interval ``[low, high]`` and the number of values ``n`` behind it."""

    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        if math.isnan(self.mean):
            return "nan (n=0)"
        if math.isnan(self.low) or math.isnan(self.high):
            return f"{self.mean:.4g} [n/a] (n={self.n})"
        return f"{self.mean:.4g} [{self.low:.4g}, {self.high:.4g}] (n={self.n})"



def _scipy_stats():
    """``scipy.stats``, imported on first use: it is ~0.5 s of a run's start, and a one-seed report (the quick
    start's) computes no interval or test."""
    from scipy import stats

    return stats

def _clean(values: Iterable[float]) -> np.ndarray:
    """1-D float array of ``values`` with NaNs removed."""
    arr = np.asarray(list(values) if not hasattr(values, "__array__") else values, dtype=float).ravel()
    return arr[~np.isnan(arr)]


def mean_ci(values: Iterable[float], confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0) -> MeanCI:
    """Mean of ``values`` with a seeded bootstrap confidence interval (NaNs dropped).

    The interval is ``scipy.stats.bootstrap(..., n_resamples=1000, method="percentile")``: 1000 resamples, as
    in the GTN paper's 95 % bootstrapped confidence intervals, with ``rng=np.random.default_rng(seed)`` so
    the same input always gives the same interval.

    Why percentile rather than scipy's default BCa: the harness typically has 3-10 seeds per cell. BCa's
    acceleration is a jackknife estimate that is itself very noisy at such ``n``, and BCa returns NaN (with a
    ``DegenerateDataWarning``) whenever the resampled means are degenerate, which happens routinely with few,
    often tied accuracies. The percentile interval is always defined, lies inside the range of the data,
    and is what plotting libraries (e.g. seaborn's ``errorbar=("ci", 95)``) draw, so the bands in the figures
    and the numbers in the tables agree. Like every bootstrap interval, it is somewhat too narrow for very
    small ``n`` (it ignores the t correction); read 3-seed intervals as indicative.

    Edge cases: ``n == 0`` gives all-NaN; ``n == 1`` gives the mean with ``low = high = nan`` (no spread to
    resample); all values equal gives the degenerate interval ``(mean, mean)`` without calling scipy.
    """
    arr = _clean(values)
    n = int(arr.size)
    if n == 0:
        return MeanCI(_NAN, _NAN, _NAN, 0)
    mean = float(np.mean(arr))
    if n == 1:
        return MeanCI(mean, _NAN, _NAN, 1)
    if np.all(arr == arr[0]):
        return MeanCI(float(arr[0]), float(arr[0]), float(arr[0]), n)
    res = _scipy_stats().bootstrap(
        (arr,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method=BOOTSTRAP_METHOD,
        rng=np.random.default_rng(seed),
    )
    ci = res.confidence_interval
    return MeanCI(mean, float(ci.low), float(ci.high), n)


def mean_ci_columns(
    matrix: np.ndarray, confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column-wise :func:`mean_ci` of a ``(samples, points)`` matrix: ``(mean, low, high)`` arrays.

    Used for the figure bands (one point per outer iteration or inner step, samples = seeds). Columns without
    NaNs and with spread are bootstrapped in ONE vectorised ``scipy.stats.bootstrap(axis=0)`` call (same
    method, resample count and seed as :func:`mean_ci`); the remaining columns go through :func:`mean_ci`
    one at a time, so the edge-case conventions are identical.
    """
    mat = np.asarray(matrix, dtype=float)
    if mat.ndim != 2:
        raise ValueError(f"mean_ci_columns expects a 2-D (samples, points) array, got shape {mat.shape}")
    n_pts = mat.shape[1]
    mean, low, high = (np.full(n_pts, np.nan) for _ in range(3))
    fast = ~np.isnan(mat).any(axis=0) & (np.ptp(mat, axis=0) > 0) if mat.shape[0] >= 2 else np.zeros(n_pts, bool)
    if fast.any():
        sub = mat[:, fast]
        res = _scipy_stats().bootstrap(
            (sub,),
            np.mean,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method=BOOTSTRAP_METHOD,
            axis=0,
            rng=np.random.default_rng(seed),
        )
        mean[fast] = sub.mean(axis=0)
        low[fast] = res.confidence_interval.low
        high[fast] = res.confidence_interval.high
    for j in np.flatnonzero(~fast):
        ci = mean_ci(mat[:, j], confidence, n_resamples, seed)
        mean[j], low[j], high[j] = ci.mean, ci.low, ci.high
    return mean, low, high


def welch_p(a: Iterable[float], b: Iterable[float]) -> float:
    """Two-sided Welch t-test p-value, ``scipy.stats.ttest_ind(a, b, equal_var=False).pvalue``.

    NaNs are dropped; ``nan`` if either sample has fewer than 2 values, or if both have zero variance
    (the t statistic is undefined).
    """
    x, y = _clean(a), _clean(b)
    if x.size < 2 or y.size < 2:
        return _NAN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(_scipy_stats().ttest_ind(x, y, equal_var=False).pvalue)


def mann_whitney_p(a: Iterable[float], b: Iterable[float]) -> float:
    """Two-sided Mann-Whitney U p-value, ``scipy.stats.mannwhitneyu(a, b, alternative="two-sided").pvalue``.

    NaNs are dropped; ``nan`` if either sample is empty. scipy picks the exact or asymptotic method.
    """
    x, y = _clean(a), _clean(b)
    if x.size == 0 or y.size == 0:
        return _NAN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(_scipy_stats().mannwhitneyu(x, y, alternative="two-sided").pvalue)


def _paired(x: Iterable[float], y: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
    xa = np.asarray(list(x) if not hasattr(x, "__array__") else x, dtype=float).ravel()
    ya = np.asarray(list(y) if not hasattr(y, "__array__") else y, dtype=float).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length, got {xa.size} and {ya.size}")
    keep = ~(np.isnan(xa) | np.isnan(ya))
    return xa[keep], ya[keep]


def _correlation(func, x, y) -> tuple[float, float]:
    xa, ya = _paired(x, y)
    if xa.size < 2 or np.all(xa == xa[0]) or np.all(ya == ya[0]):
        return _NAN, _NAN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-n / tie warnings; the p-value is still scipy's
        res = func(xa, ya)
    return float(res.statistic), float(res.pvalue)


def spearman(x: Iterable[float], y: Iterable[float]) -> tuple[float, float]:
    """``(rho, p)`` from ``scipy.stats.spearmanr``; pairs with a NaN are dropped.

    ``(nan, nan)`` with fewer than 2 pairs or a constant input.
    """
    return _correlation(_scipy_stats().spearmanr, x, y)


def kendall(x: Iterable[float], y: Iterable[float]) -> tuple[float, float]:
    """``(tau, p)`` from ``scipy.stats.kendalltau`` (tau-b); pairs with a NaN are dropped.

    ``(nan, nan)`` with fewer than 2 pairs or a constant input.
    """
    return _correlation(_scipy_stats().kendalltau, x, y)


#: "Top" in :func:`top_precision`: the best 10 % (the NAS literature's top-10 % precision).
TOP_FRACTION = 0.10


def top_half_spearman(score, truth) -> float:
    """Spearman rho over the ceil(n/2) items with the highest ``score`` (the GTN paper's top-50 % rank
    correlation of a NAS proxy with the ground truth)."""
    score, truth = np.asarray(score, float), np.asarray(truth, float)
    keep = np.argsort(-score, kind="stable")[: math.ceil(len(score) / 2)]
    return spearman(score[keep], truth[keep])[0]


def top_precision(score, truth, fraction: float = TOP_FRACTION) -> float:
    """|top-k by ``score``  ∩  top-k by ``truth``| / k with k = max(1, round(fraction * n)); ties broken by
    position (a NAS proxy's top-10 % precision)."""
    score, truth = np.asarray(score, float), np.asarray(truth, float)
    k = max(1, round(fraction * len(score)))
    top_proxy = set(np.argsort(-score, kind="stable")[:k])
    top_true = set(np.argsort(-truth, kind="stable")[:k])
    return len(top_proxy & top_true) / k


def paired_bootstrap_ci(metric, score, truth, resamples: int = 1000, seed: int = 0,
                        confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of ``metric(score, truth)`` over items (pairs resampled together, e.g. a proxy's
    score and an architecture's ground truth),
    ``scipy.stats.bootstrap(paired=True, method="percentile")``, seeded. (nan, nan) below 3 items or
    when resamples are degenerate (e.g. every resample of a tiny set constant)."""
    score, truth = np.asarray(score, float), np.asarray(truth, float)
    if len(score) < 3:
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = _scipy_stats().bootstrap((score, truth), metric, paired=True, vectorized=False, n_resamples=resamples,
                           confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


_TESTS = {"welch": welch_p, "mannwhitney": mann_whitney_p, "mann_whitney": mann_whitney_p}


def pairwise_p_values(
    df: pd.DataFrame,
    group_col: str,
    value_col: str,
    test: str = "welch",
    order: Sequence | None = None,
) -> pd.DataFrame:
    """Square ``groups x groups`` matrix of two-sided p-values between the groups of ``df[group_col]``.

    ``test`` is ``"welch"`` (:func:`welch_p`) or ``"mannwhitney"`` (:func:`mann_whitney_p`). Groups appear in
    ``order`` if given (groups absent from ``df`` get NaN rows), else in order of first appearance. The
    diagonal is NaN; the matrix is symmetric. No multiple-comparison correction is applied.
    """
    try:
        fn = _TESTS[test]
    except KeyError:
        raise ValueError(f"unknown test {test!r}; choose one of {sorted(set(_TESTS) - {'mann_whitney'})}") from None
    groups = list(order) if order is not None else list(pd.unique(df[group_col]))
    values = {g: df.loc[df[group_col] == g, value_col].to_numpy(dtype=float) for g in groups}
    out = pd.DataFrame(np.nan, index=pd.Index(groups, name=group_col), columns=pd.Index(groups, name=group_col))
    for i, j in combinations(range(len(groups)), 2):
        p = fn(values[groups[i]], values[groups[j]])
        out.iat[i, j] = out.iat[j, i] = p
    return out


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (step-down), in the input order; NaNs stay NaN and are not counted.

    With the m defined p-values sorted ascending, ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``
    (Holm 1979). Rejecting ``adj < alpha`` controls the family-wise error rate at ``alpha`` under any
    dependence between the tests. Written out because scipy offers only FDR control
    (``scipy.stats.false_discovery_control``)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    defined = np.flatnonzero(~np.isnan(p))
    m = defined.size
    running = 0.0
    for rank, index in enumerate(defined[np.argsort(p[defined], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[index]))
        out[index] = running
    return [float(v) for v in out]


def difference_ci(a: Iterable[float], b: Iterable[float], confidence: float = 0.95, n_resamples: int = 1000,
                  seed: int = 0) -> MeanCI:
    """``mean(a) - mean(b)`` (the effect size) with a seeded percentile bootstrap CI resampling each group
    independently (``scipy.stats.bootstrap`` over two samples); NaN bounds when a side has < 2 values."""
    x, y = _clean(a), _clean(b)
    if x.size == 0 or y.size == 0:
        return MeanCI(_NAN, _NAN, _NAN, 0)
    diff = float(np.mean(x) - np.mean(y))
    n = int(min(x.size, y.size))
    if x.size < 2 or y.size < 2:
        return MeanCI(diff, _NAN, _NAN, n)
    if np.all(x == x[0]) and np.all(y == y[0]):
        return MeanCI(diff, diff, diff, n)
    res = _scipy_stats().bootstrap((x, y), lambda u, v, axis=-1: np.mean(u, axis=axis) - np.mean(v, axis=axis),
                        n_resamples=n_resamples, confidence_level=confidence, method=BOOTSTRAP_METHOD,
                        rng=np.random.default_rng(seed))
    return MeanCI(diff, float(res.confidence_interval.low), float(res.confidence_interval.high), n)


def late_gain(iterations: Sequence[float], values: Sequence[float], tail: float = 0.2,
              confidence: float = 0.9) -> MeanCI | None:
    """What a (seed-averaged) validation curve gained over its last ``tail`` of iterations: the least-squares line
    through every check in the window (from the last check at or before ``(1 - tail)`` of the final iteration to
    the final one), its slope times the window's length, with a ``confidence`` t-interval (``scipy.stats.
    linregress``'s standard error); ``n`` is the number of checks in the window.

    Why a fitted line and not the difference of the window's two ends: each check is the accuracy of a few fresh
    learners, whose noise (~0.2-0.4 pp per seed at the cpu profile, measured on fashion_generator_size's curves)
    is as large as the gains that matter; the difference of two checks carries the noise of both, a line through
    all of them averages it. With only the two ends in the window the gain is their difference and the interval
    n/a. None when the curve has no check inside the window to compare against."""
    it, v = np.asarray(iterations, dtype=float), np.asarray(values, dtype=float)
    keep = np.isfinite(it) & np.isfinite(v)
    it, v = it[keep], v[keep]
    if it.size < 2:
        return None
    order = np.argsort(it, kind="stable")
    it, v = it[order], v[order]
    before = np.flatnonzero(it <= (1 - tail) * it[-1])
    if before.size == 0 or before[-1] == it.size - 1:
        return None
    it, v = it[before[-1]:], v[before[-1]:]
    span = it[-1] - it[0]
    if it.size == 2:
        return MeanCI(float(v[-1] - v[0]), _NAN, _NAN, 2)
    fit = _scipy_stats().linregress(it, v)
    half = _scipy_stats().t.ppf(0.5 + confidence / 2, it.size - 2) * fit.stderr * span
    gain = float(fit.slope * span)
    return MeanCI(gain, gain - half, gain + half, int(it.size))


#: A late gain above this (0.2 percentage points of accuracy) counts as still rising (:func:`still_rising`).
RISING_TOLERANCE = 0.002


def still_rising(iterations: Sequence[float], values: Sequence[float], tail: float = 0.2,
                 tolerance: float = RISING_TOLERANCE) -> bool:
    """Whether a (seed-averaged) validation curve was still rising over its last ``tail`` of iterations: its
    :func:`late_gain` is above ``tolerance`` (0.2 percentage points of accuracy). An arm flagged so was stopped
    before it converged, and its rank may change with a longer budget. False when the curve has no check inside
    the window to compare against."""
    gain = late_gain(iterations, values, tail)
    return gain is not None and gain.mean > tolerance


def share_near_best(values: Sequence[float], margin: float) -> float:
    """How flat an optimum is: the share of ``values`` (higher is better, e.g. the validation accuracy of every
    tuning trial run to its full horizon) within ``margin`` of the best of them. A non-finite value (a diverged
    trial) counts, as not near; NaN for no finite value at all. 1.0: every trial is as good as the pick, so the
    pick hardly matters; 1/n: only the pick itself is."""
    v = np.asarray(values, dtype=float)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return _NAN
    return float(np.sum(v >= finite.max() - margin - 1e-12) / v.size)  # (1e-12: 0.72 - 0.01 is 0.7099999...)


# ------------------------------------------------------------------------------------------ curves on a compute axis
# A curve is (xs, ys): a metric (accuracy) at increasing amounts of compute, piecewise linear between its points.
Curve = tuple[Sequence[float], Sequence[float]]


def _sorted_curve(curve: Curve) -> tuple[np.ndarray, np.ndarray]:
    """The curve's finite points, by x (a repeated x keeps its last value: what was reached with that compute)."""
    xs, ys = np.asarray(curve[0], dtype=float), np.asarray(curve[1], dtype=float)
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    last = np.append(xs[1:] != xs[:-1], True) if xs.size else np.zeros(0, bool)
    return xs[last], ys[last]


def interpolate_at(curve: Curve, x: float) -> tuple[float, bool]:
    """``(value, reached)``: the curve's value at ``x``, linear between its points (``numpy.interp``); a curve
    that ends before ``x`` gives its last value and ``reached = False``; ``x`` before its first point gives the
    first value. ``(nan, False)`` for a curve without a finite point."""
    xs, ys = _sorted_curve(curve)
    if xs.size == 0:
        return _NAN, False
    return float(np.interp(x, xs, ys)), bool(x <= xs[-1])


def curves_on_grid(curves: Sequence[Curve], grid: Sequence[float]) -> np.ndarray:
    """``(curves, points)`` matrix: each curve interpolated at the grid points inside its own range, NaN outside
    it (no extrapolation)."""
    grid = np.asarray(grid, dtype=float)
    out = np.full((len(curves), grid.size), np.nan)
    for i, curve in enumerate(curves):
        xs, ys = _sorted_curve(curve)
        if xs.size:
            inside = (grid >= xs[0]) & (grid <= xs[-1])
            out[i, inside] = np.interp(grid[inside], xs, ys)
    return out


def common_grid(curves: Sequence[Curve]) -> np.ndarray:
    """Every x of every curve inside the range all of them cover (the latest start to the earliest end), sorted:
    the points where a mean over curves is a mean over all of them."""
    sorted_curves = [_sorted_curve(c) for c in curves]
    sorted_curves = [(xs, ys) for xs, ys in sorted_curves if xs.size]
    if not sorted_curves:
        return np.array([])
    start, end = max(xs[0] for xs, _ in sorted_curves), min(xs[-1] for xs, _ in sorted_curves)
    grid = np.unique(np.concatenate([xs for xs, _ in sorted_curves]))
    return grid[(grid >= start) & (grid <= end)]


def mean_curve(curves: Sequence[Curve]) -> tuple[np.ndarray, np.ndarray]:
    """``(grid, mean)``: the pointwise mean of the curves (e.g. one per seed) on :func:`common_grid`."""
    grid = common_grid(curves)
    if grid.size == 0:
        return grid, grid
    return grid, curves_on_grid(curves, grid).mean(axis=0)


def value_at_budget(curves: Sequence[Curve], budget: float) -> tuple[MeanCI, bool]:
    """``(mean_ci of the curves' values at budget, reached)``: each curve (one per seed) read at ``budget`` by
    :func:`interpolate_at` (a curve that ended earlier contributes its last value), the mean over them with its
    bootstrap CI; ``reached`` is False when any curve ended before ``budget``."""
    read = [interpolate_at(c, budget) for c in curves]
    return mean_ci([v for v, _ in read]), bool(read) and all(r for _, r in read)


def crossings(a: Curve, b: Curve) -> list[float]:
    """The x positions where curve ``a`` and curve ``b`` cross (``a - b`` changes sign), inside the range both
    cover, both linear between the union of their points; a crossing between two points is the root of the
    linear difference, one where the difference touches 0 and changes sign is that point (a touch without a
    change of sign is no crossing). Sorted; [] when one curve stays above the other."""
    grid = common_grid([a, b])
    if grid.size < 2:
        return []
    diff = curves_on_grid([a], grid)[0] - curves_on_grid([b], grid)[0]
    sign = np.sign(diff)
    nonzero = np.flatnonzero(sign)
    found = []
    for i, j in zip(nonzero[:-1], nonzero[1:]):   # consecutive points where one curve is strictly above
        if sign[i] == sign[j]:
            continue
        if j == i + 1:   # between two grid points: the root of the linear difference
            found.append(float(grid[i] + (grid[j] - grid[i]) * diff[i] / (diff[i] - diff[j])))
        else:            # equal from grid[i+1] to grid[j-1], opposite orders on either side: where they meet
            found.append(float(grid[i + 1]))
    return found

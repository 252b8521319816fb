"""Tests for tgbench.stats against values computed independently of the wrapped scipy calls."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sst

from tgbench import stats
from tgbench.stats import MeanCI


# ----------------------------------------------------------------------------------------- mean_ci


def test_mean_ci_covers_true_mean_at_about_nominal_rate():
    # 200 normal samples of n=30; percentile bootstrap coverage is ~93-94 % here. With 200 repetitions the
    # binomial s.d. is ~1.7 %, so [0.87, 0.99] is > 3 s.d. from the expected rate on both sides.
    rng = np.random.default_rng(12345)
    true_mean, reps = 5.0, 200
    hits = 0
    for i in range(reps):
        ci = stats.mean_ci(rng.normal(true_mean, 2.0, size=30), seed=i)
        hits += ci.low <= true_mean <= ci.high
    assert 0.87 <= hits / reps <= 0.99


def test_mean_ci_width_shrinks_like_one_over_sqrt_n():
    rng = np.random.default_rng(0)
    w_small = np.mean([(c.high - c.low) for c in (stats.mean_ci(rng.normal(size=25), seed=s) for s in range(20))])
    w_large = np.mean([(c.high - c.low) for c in (stats.mean_ci(rng.normal(size=400), seed=s) for s in range(20))])
    assert w_small / w_large == pytest.approx(4.0, rel=0.2)  # sqrt(400 / 25)


def test_mean_ci_identical_values_is_degenerate_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ci = stats.mean_ci([0.1, 0.1, 0.1, 0.1])
    assert ci == MeanCI(0.1, 0.1, 0.1, 4)


def test_mean_ci_single_value_has_mean_but_no_interval():
    ci = stats.mean_ci([0.75])
    assert ci.mean == 0.75 and ci.n == 1
    assert math.isnan(ci.low) and math.isnan(ci.high)


def test_mean_ci_empty_and_all_nan_are_all_nan():
    for values in ([], [float("nan"), float("nan")]):
        ci = stats.mean_ci(values)
        assert ci.n == 0
        assert all(math.isnan(v) for v in (ci.mean, ci.low, ci.high))


def test_mean_ci_drops_nans():
    with_nan = stats.mean_ci([0.2, float("nan"), 0.4, 0.9])
    assert with_nan == stats.mean_ci([0.2, 0.4, 0.9])
    assert with_nan.n == 3
    assert with_nan.mean == pytest.approx(0.5)


def test_mean_ci_is_deterministic_under_seed():
    x = np.random.default_rng(3).normal(size=12)
    assert stats.mean_ci(x, seed=7) == stats.mean_ci(x, seed=7)
    assert stats.mean_ci(x, seed=7) != stats.mean_ci(x, seed=8)


def test_mean_ci_is_the_seeded_percentile_bootstrap_with_1000_resamples():
    # On skewed data percentile, BCa and basic intervals differ a lot, so this pins the method, the
    # resample count and the seeding (rng=default_rng(seed)) that the docstring promises.
    x = np.array([0.1, 0.1, 0.12, 0.15, 0.2, 0.3, 0.5, 0.9, 2.5, 6.0])
    ci = stats.mean_ci(x, seed=4)

    def scipy_ci(method, n=1000):
        return sst.bootstrap((x,), np.mean, n_resamples=n, method=method, rng=np.random.default_rng(4)).confidence_interval

    ref = scipy_ci("percentile")
    assert (ci.low, ci.high) == (ref.low, ref.high)
    assert ci.mean == pytest.approx(x.mean())
    for other in (scipy_ci("BCa"), scipy_ci("basic"), scipy_ci("percentile", n=9999)):
        assert (ci.low, ci.high) != (other.low, other.high)
    # and it is a sensible interval: close to the large-resample percentile interval
    big = scipy_ci("percentile", n=20000)
    assert ci.low == pytest.approx(big.low, rel=0.15) and ci.high == pytest.approx(big.high, rel=0.15)


def test_mean_ci_confidence_level_changes_width():
    x = np.random.default_rng(5).normal(size=20)
    wide, narrow = stats.mean_ci(x, confidence=0.99), stats.mean_ci(x, confidence=0.5)
    assert (wide.high - wide.low) > 2 * (narrow.high - narrow.low)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=12))
def test_mean_ci_interval_lies_within_data_range(values):
    ci = stats.mean_ci(values, n_resamples=200)
    assert ci.n == len(values)
    eps = 1e-12
    assert min(values) - eps <= ci.low <= ci.high <= max(values) + eps
    assert min(values) - eps <= ci.mean <= max(values) + eps


def test_mean_ci_str_shows_interval():
    assert str(MeanCI(0.5, 0.4, 0.6, 3)) == "0.5 [0.4, 0.6] (n=3)"
    assert "n/a" in str(MeanCI(0.5, float("nan"), float("nan"), 1))


def test_mean_ci_columns_matches_mean_ci_per_column():
    rng = np.random.default_rng(2)
    mat = rng.normal(size=(4, 6))
    mat[:, 2] = 0.3  # degenerate column
    mat[1, 4] = np.nan  # column with a missing seed
    mean, low, high = stats.mean_ci_columns(mat)
    for j in range(mat.shape[1]):
        ci = stats.mean_ci(mat[:, j])
        np.testing.assert_allclose([mean[j], low[j], high[j]], [ci.mean, ci.low, ci.high], rtol=1e-12)


def test_mean_ci_columns_single_row_has_no_band():
    mean, low, high = stats.mean_ci_columns(np.array([[0.1, 0.2, 0.3]]))
    np.testing.assert_allclose(mean, [0.1, 0.2, 0.3])
    assert np.isnan(low).all() and np.isnan(high).all()


# ----------------------------------------------------------------------------------------- tests


def _welch_by_hand(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    t = (a.mean() - b.mean()) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    return 2 * sst.t.sf(abs(t), df)


def test_welch_p_matches_welch_formula():
    a = [0.91, 0.93, 0.92, 0.95, 0.90]
    b = [0.85, 0.97, 0.80, 0.88, 0.92, 0.79]
    expected = _welch_by_hand(a, b)
    assert 0.01 < expected < 0.5  # a non-trivial example
    assert stats.welch_p(a, b) == pytest.approx(expected, rel=1e-10)
    assert stats.welch_p(b, a) == pytest.approx(expected, rel=1e-10)


def test_welch_p_drops_nans_and_needs_two_values_per_side():
    assert stats.welch_p([1.0, 2.0, np.nan, 3.0], [2.0, 4.0, 7.0]) == pytest.approx(
        _welch_by_hand([1, 2, 3], [2, 4, 7])
    )
    assert math.isnan(stats.welch_p([1.0], [1.0, 2.0, 3.0]))
    assert math.isnan(stats.welch_p([1.0, 2.0], [np.nan, 3.0]))
    assert math.isnan(stats.welch_p([], []))


def test_mann_whitney_p_exact_small_example():
    # Fully separated samples of sizes 3 and 3: exact two-sided p = 2 / C(6, 3) = 0.1.
    assert stats.mann_whitney_p([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)
    assert stats.mann_whitney_p([4, 5, 6], [1, 2, 3]) == pytest.approx(0.1)
    assert math.isnan(stats.mann_whitney_p([], [1, 2]))


def test_spearman_perfect_monotone_and_reversed():
    x = np.arange(8, dtype=float)
    rho, p = stats.spearman(x, x**3)  # monotone but not linear
    assert rho == pytest.approx(1.0) and p < 0.01
    rho, _ = stats.spearman(x, -np.exp(x))
    assert rho == pytest.approx(-1.0)


def test_kendall_perfect_monotone_and_reversed():
    x = [3, 1, 4, 5, 9, 2, 6]
    tau, p = stats.kendall(x, [v**2 for v in x])
    assert tau == pytest.approx(1.0) and p < 0.01
    tau, _ = stats.kendall(x, [-v for v in x])
    assert tau == pytest.approx(-1.0)


def test_correlations_partial_and_degenerate():
    # one discordant swap out of C(5, 2) = 10 pairs: tau = (9 - 1) / 10
    tau, _ = stats.kendall([1, 2, 3, 4, 5], [1, 2, 3, 5, 4])
    assert tau == pytest.approx(0.8)
    rho, _ = stats.spearman([1, 2, 3, 4, 5], [1, 2, 3, 5, 4])
    assert rho == pytest.approx(1 - 6 * 2 / (5 * 24))  # 1 - 6 sum d^2 / (n (n^2 - 1))
    assert all(math.isnan(v) for v in stats.spearman([1, 2, 3], [5, 5, 5]))
    assert all(math.isnan(v) for v in stats.kendall([1.0], [2.0]))
    # NaN pairs dropped, not propagated
    assert stats.spearman([1, 2, np.nan, 4], [1, 2, 0, 4])[0] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        stats.spearman([1, 2, 3], [1, 2])


# ----------------------------------------------------------------------------------------- pairwise


def _groups_frame():
    rng = np.random.default_rng(1)
    rows = [(g, v) for g, mu in (("gtn", 0.97), ("real", 0.90), ("dd", 0.93)) for v in rng.normal(mu, 0.01, 4)]
    rows.append(("single", 0.5))
    return pd.DataFrame(rows, columns=["source", "acc"])


def test_pairwise_p_values_square_symmetric_nan_diagonal():
    df = _groups_frame()
    m = stats.pairwise_p_values(df, "source", "acc")
    assert list(m.index) == list(m.columns) == ["gtn", "real", "dd", "single"]
    assert np.isnan(np.diag(m.to_numpy())).all()
    np.testing.assert_array_equal(m.to_numpy(), m.to_numpy().T)
    a, b = df.loc[df.source == "gtn", "acc"], df.loc[df.source == "dd", "acc"]
    assert m.loc["gtn", "dd"] == pytest.approx(_welch_by_hand(a, b))
    assert m.loc["real", "single"] != m.loc["real", "single"]  # nan: one value only


def test_pairwise_p_values_order_and_mann_whitney():
    df = _groups_frame()
    m = stats.pairwise_p_values(df, "source", "acc", test="mannwhitney", order=["dd", "gtn", "absent"])
    assert list(m.index) == ["dd", "gtn", "absent"]
    a, b = df.loc[df.source == "gtn", "acc"], df.loc[df.source == "dd", "acc"]
    assert m.loc["dd", "gtn"] == pytest.approx(sst.mannwhitneyu(a, b).pvalue)
    assert np.isnan(m.loc["absent"].to_numpy()).all()
    with pytest.raises(ValueError, match="unknown test"):
        stats.pairwise_p_values(df, "source", "acc", test="anova")


# ---------------------------------------------------------------------- Holm, effect sizes, convergence
def _holm_by_definition(p: list[float]) -> list[float]:
    """Holm's adjusted p-values from the definition: for each test, the max over every test ranked at or
    below it of min(1, (m - rank) * p)."""
    m = len(p)
    ranked = sorted(range(m), key=lambda i: (p[i], i))
    rank = {i: r for r, i in enumerate(ranked)}
    return [max(min(1.0, (m - rank[j]) * p[j]) for j in range(m) if rank[j] <= rank[i]) for i in range(m)]


@pytest.mark.parametrize("seed", range(5))
def test_holm_matches_its_definition(seed):
    p = list(np.random.default_rng(seed).uniform(0, 0.2, size=7))
    assert stats.holm(p) == pytest.approx(_holm_by_definition(p))
    assert all(a >= b for a, b in zip(stats.holm(p), p))   # never smaller than the raw p-value


def test_holm_leaves_nan_out_of_the_family():
    adjusted = stats.holm([0.01, float("nan"), 0.02])
    assert math.isnan(adjusted[1])
    assert adjusted[0] == pytest.approx(_holm_by_definition([0.01, 0.02])[0])
    assert adjusted[2] == pytest.approx(_holm_by_definition([0.01, 0.02])[1])


def test_difference_ci_brackets_a_clear_shift_and_not_zero():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.9, 0.01, 8), rng.normal(0.8, 0.01, 8)
    ci = stats.difference_ci(a, b)
    assert ci.mean == pytest.approx(a.mean() - b.mean())
    assert 0 < ci.low < ci.mean < ci.high
    overlapping = stats.difference_ci(rng.normal(0.8, 0.05, 6), rng.normal(0.8, 0.05, 6))
    assert overlapping.low < 0 < overlapping.high
    assert math.isnan(stats.difference_ci([0.9], [0.8, 0.7]).low)


def test_still_rising_looks_at_the_last_fifth_of_the_curve():
    iters = [0, 50, 100, 150, 200]
    assert stats.still_rising(iters, [0.1, 0.5, 0.8, 0.85, 0.86])       # 0.85 at 150 (<= 160) -> 0.86
    assert not stats.still_rising(iters, [0.1, 0.5, 0.8, 0.86, 0.861])  # gained less than the tolerance
    assert not stats.still_rising(iters, [0.1, 0.5, 0.8, 0.9, 0.85])    # fell
    assert stats.still_rising([0, 200], [0.1, 0.9])                     # only the start to compare with


def test_late_gain_is_a_line_through_every_check_of_the_window_not_its_two_ends():
    iters = np.arange(0, 1001, 50)                 # the window is 800..1000: five checks
    flat = np.full(iters.size, 0.85)
    flat[-5:] = [0.851, 0.853, 0.848, 0.852, 0.8535]   # noise; the ends alone differ by 0.25 pp (> the tolerance)
    gain = stats.late_gain(iters, flat)
    assert gain.n == 5 and gain.mean == pytest.approx(0.0016) and gain.low < 0 < gain.high
    assert not stats.still_rising(iters, flat)
    line = 0.8 + 1e-4 * iters                      # exactly 2 pp per 200 iterations
    gain = stats.late_gain(iters, line)
    assert gain.mean == pytest.approx(0.02) and gain.low == pytest.approx(0.02) and gain.high == pytest.approx(0.02)
    assert stats.still_rising(iters, line)
    assert stats.late_gain([0, 100], [0.5, 0.6]).n == 2 and math.isnan(stats.late_gain([0, 100], [0.5, 0.6]).low)
    assert stats.late_gain([100], [0.5]) is None and stats.late_gain([0, 50, 100], [0.1, 0.2, float("nan")]).n == 2

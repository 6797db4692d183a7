"""usaid.statistics against direct computations: scipy called on the per-image values, an exact Wilcoxon p-value
worked out by hand, a bootstrap written out with NumPy, and the metric's direction."""
import math

import numpy as np
import pytest
from scipy import stats

from usaid.statistics import paired_comparison


def test_the_interval_and_p_value_are_scipys_on_the_differences():
    rng = np.random.default_rng(1)
    baseline = rng.normal(32, 1.5, 24)  # a Kodak24-sized set of PSNRs
    other = baseline + rng.normal(0.08, 0.1, 24)
    result = paired_comparison(baseline, other)
    differences = other - baseline
    direct = stats.bootstrap((differences,), np.mean, n_resamples=10000, method='BCa',
                             rng=np.random.default_rng(0)).confidence_interval
    assert (result.low, result.high) == pytest.approx((direct.low, direct.high))
    assert result.p_value == pytest.approx(stats.wilcoxon(other, baseline).pvalue)
    assert result.mean_difference == pytest.approx(differences.mean()) and result.images == 24


def test_the_interval_agrees_with_a_plain_percentile_bootstrap():
    rng = np.random.default_rng(2)
    differences = rng.normal(0.1, 0.3, 68)
    result = paired_comparison(np.zeros(68), differences)
    means = differences[rng.integers(0, 68, (20000, 68))].mean(axis=1)  # resampling written out
    low, high = np.percentile(means, [2.5, 97.5])
    standard_error = differences.std(ddof=1) / math.sqrt(68)
    assert result.low == pytest.approx(low, abs=0.15 * standard_error)
    assert result.high == pytest.approx(high, abs=0.15 * standard_error)


def test_the_exact_wilcoxon_p_value_of_ten_improvements():
    # ten positive differences of distinct sizes: the rank sum of the negatives is 0, which 1 of the 2^10 sign
    # patterns reach on each side, so the exact two-sided p-value is 2 / 1024
    result = paired_comparison(np.zeros(10), np.arange(1, 11) / 100)
    assert result.p_value == pytest.approx(2 / 1024)
    assert result.verdict == 'better'


def test_better_follows_the_metrics_direction():
    lower = paired_comparison([3.6, 3.7, 3.5, 3.8, 3.6, 3.9], [3.3, 3.2, 3.3, 3.4, 3.1, 3.5], higher_is_better=False)
    assert paired_comparison([3.6, 3.7, 3.5], [3.3, 3.2, 3.3], higher_is_better=False).verdict.startswith('too few')
    assert lower.mean_difference < 0 and lower.high < 0 and lower.verdict == 'better'  # NIQE went down
    higher = paired_comparison([32.1, 31.5, 33.0, 30.2, 31.1, 32.6], [32.0, 31.4, 32.9, 30.1, 31.0, 32.4])
    assert higher.high < 0 and higher.verdict == 'worse'
    mixed = paired_comparison([1, 2, 3, 4, 5, 6], [1.1, 1.9, 3.1, 3.9, 5.1, 5.9])
    assert mixed.low < 0 < mixed.high and mixed.verdict == 'no clear difference'


def test_degenerate_inputs_give_stated_values_not_errors():
    same = paired_comparison([1, 2, 3], [1, 2, 3])
    assert (same.mean_difference, same.low, same.high) == (0, 0, 0) and math.isnan(same.p_value)
    assert same.cells() == ('+0.000 [+0.000, +0.000]', 'n/a')
    assert paired_comparison([1, math.nan, 3], [2, 5, 4]).images == 2  # an image with an undefined score is left out
    empty = paired_comparison([], [])
    assert empty.images == 0 and math.isnan(empty.mean_difference) and empty.verdict.startswith('too few images')
    with pytest.raises(ValueError, match='one value per image for both'):
        paired_comparison([1, 2, 3], [1, 2])

"""Paired comparisons of two methods scored on the same images: is a difference more than noise?

For each image the difference ``other - baseline`` of a metric is taken; :func:`paired_comparison` gives their mean, a
bootstrap 95 % confidence interval of that mean (scipy's ``bootstrap``, BCa, seeded, with the number of resamples
stated), and the two-sided Wilcoxon signed-rank p-value (scipy's ``wilcoxon``). Whether the other method is better
takes the metric's direction into account (NIQE: lower is better), and needs at least :data:`MIN_IMAGES` images.
"""
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

RESAMPLES = 10000
CONFIDENCE = 0.95
SEED = 0
# Below 6 images no verdict is given: the Wilcoxon test's smallest two-sided p-value is 2 / 2^n (0.0625 for 5 images,
# 0.03125 for 6), so it cannot reach 0.05, and a bootstrap interval of so few values is too narrow to trust.
MIN_IMAGES = 6


@dataclass(frozen=True)
class PairedComparison:
    """``other - baseline`` over the images both were scored on."""
    images: int
    mean_difference: float
    low: float  # the confidence interval of the mean difference
    high: float
    p_value: float  # Wilcoxon signed-rank, two-sided; NaN when every difference is zero or fewer than 2 images
    higher_is_better: bool
    resamples: int = RESAMPLES
    confidence: float = CONFIDENCE

    @property
    def verdict(self):
        """``better``, ``worse`` (the interval excludes 0 on that side), ``no clear difference``, or ``too few images``
        (fewer than :data:`MIN_IMAGES`)."""
        if self.images < MIN_IMAGES:
            return f'too few images (under {MIN_IMAGES})'
        if self.low > 0 or self.high < 0:
            improves = (self.low > 0) == self.higher_is_better
            return 'better' if improves else 'worse'
        return 'no clear difference'

    def cells(self, digits=3):
        """The table's cells: the mean difference with its interval, and the p-value."""
        interval = f'{self.mean_difference:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]'
        return interval, ('n/a' if math.isnan(self.p_value) else f'{self.p_value:.2g}')


def paired_comparison(baseline, other, higher_is_better=True, resamples=RESAMPLES, seed=SEED):
    """Compare per-image scores ``other`` with ``baseline`` (the same images in the same order).

    Args:
        baseline (Sequence[float]): The baseline method's score per image.
        other (Sequence[float]): The other method's score per image.
        higher_is_better (bool): The metric's direction (PSNR, SSIM, accuracy: True; NIQE: False).
        resamples (int): Bootstrap resamples.
        seed (int): Seed of the bootstrap's generator, so that a table is reproduced exactly.
    """
    baseline, other = np.asarray(baseline, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if baseline.shape != other.shape or baseline.ndim != 1:
        raise ValueError(f'paired scores: {baseline.shape} baseline and {other.shape} other values; expected one '
                         'value per image for both, the same images.')
    finite = np.isfinite(baseline) & np.isfinite(other)
    differences = other[finite] - baseline[finite]
    count = differences.size
    if count == 0:
        return PairedComparison(0, math.nan, math.nan, math.nan, math.nan, higher_is_better, resamples)
    mean = float(differences.mean())
    if count < 2 or np.all(differences == differences[0]):  # no spread: the interval is the value itself
        low = high = mean
    else:
        interval = stats.bootstrap((differences,), np.mean, n_resamples=resamples, confidence_level=CONFIDENCE,
                                   method='BCa', rng=np.random.default_rng(seed)).confidence_interval
        low, high = float(interval.low), float(interval.high)
    p_value = math.nan
    if count >= 2 and np.any(differences != 0):
        p_value = float(stats.wilcoxon(differences).pvalue)
    return PairedComparison(count, mean, low, high, p_value, higher_is_better, resamples)


def paired_fields(result):
    """A :class:`PairedComparison` as the columns of a CSV row."""
    return {'images': result.images, 'mean_difference': result.mean_difference, 'ci_low': result.low,
            'ci_high': result.high, 'confidence': result.confidence, 'resamples': result.resamples,
            'wilcoxon_p': result.p_value, 'verdict': result.verdict}

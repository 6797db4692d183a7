"""The training noise's level and distribution, by statistical tests with a stated false-alarm rate.

REFERENCE section 2: AWGN added to [0, 1] images, not clipped; sigma fixed, or per image ~ U[low, high] (0-255 scale).
Samples come through the dataset's public ``__getitem__`` with sample numbers, as BasicSR's training loop asks for
them. Each test has a false-alarm rate of at most ALPHA (Bonferroni over its tests) for a correct implementation; the
seeds are fixed, so the outcome is deterministic.
"""
import random

import cv2
import numpy as np
import pytest
from scipy import stats

from usaid.data import GaussianNoiseDataset

ALPHA = 1e-6


@pytest.fixture(scope='module')
def saturated_folder(tmp_path_factory):
    """Two 40x40 images, each with black and white areas (where clipping would show) and a grey ramp."""
    root = tmp_path_factory.mktemp('noise')
    ramp = np.tile(np.linspace(0, 255, 40), (40, 1))
    for i in range(2):
        img = np.stack([ramp, ramp.T, 255 - ramp], axis=-1)
        img[:10] = 0
        img[-10:] = 255
        cv2.imwrite(str(root / f'img{i}.png'), np.roll(img, 7 * i, axis=1).round().astype(np.uint8))
    return root


def samples(root, count, **opt):
    random.seed(20)  # the dataset's base seed, so that the samples are fixed
    data = GaussianNoiseDataset({'name': 'noise', 'type': 'GaussianNoiseDataset', 'dataroot_gt': str(root),
                                 'io_backend': {'type': 'disk'}, 'phase': 'train', 'gt_size': 32, **opt})
    # indices past len() carry the sample number (from 1), as ResumableSampler yields them
    return [data[len(data) * (1 + n // len(data)) + n % len(data)] for n in range(count)]


def chi_square_variance_p(noise, sigma):
    """Two-sided p-value of 'noise ~ N(0, sigma^2) i.i.d.' by its sum of squares (chi-square with noise.size dof)."""
    statistic = float(np.sum((noise.astype(np.float64) / sigma) ** 2))
    cdf = stats.chi2.cdf(statistic, noise.size)
    return 2 * min(cdf, 1 - cdf)


def test_fixed_sigma_level_and_gaussian_shape_unclipped(saturated_folder):
    batch = samples(saturated_folder, 200, sigma_type='fixed', sigma=25)
    assert all(s['sigma'] == 25 for s in batch)
    noise = np.concatenate([(s['lq'] - s['gt']).numpy().ravel() for s in batch]).astype(np.float64)
    gt = np.concatenate([s['gt'].numpy().ravel() for s in batch])
    assert (gt == 0).mean() > 0.1 and (gt == 1).mean() > 0.1  # the test covers saturated pixels
    # three tests, each at ALPHA / 3: the level (sum of squares), the shape (Kolmogorov-Smirnov against N(0, 1))
    assert chi_square_variance_p(noise, 25 / 255.) > ALPHA / 3
    assert stats.kstest(noise / (25 / 255.), 'norm').pvalue > ALPHA / 3
    # not clipped: about half of the noise on black pixels is negative (a binomial test at the same rate)
    on_black = noise[gt == 0]
    assert stats.binomtest(int((on_black < 0).sum()), on_black.size, 0.5).pvalue > ALPHA / 3
    lq = np.concatenate([s['lq'].numpy().ravel() for s in batch])
    assert lq.min() < -0.2 and lq.max() > 1.2


def test_uniform_sigma_is_uniform_and_each_noise_has_its_sigma(saturated_folder):
    batch = samples(saturated_folder, 1000, sigma_type='uniform', sigma=[0, 55])
    sigmas = np.array([s['sigma'] for s in batch])
    # the drawn levels: Kolmogorov-Smirnov against U[0, 55] at ALPHA / 3
    assert stats.kstest(sigmas, stats.uniform(0, 55).cdf).pvalue > ALPHA / 3
    # each sample's noise has its own level: chi-square per sample, Bonferroni over the samples at ALPHA / 3 in all.
    # Levels under 1 are left out: float32 rounding of lq = gt + noise is no longer negligible there.
    tested = [(s['lq'] - s['gt']).numpy() for s in batch if s['sigma'] >= 1]
    levels = [s['sigma'] / 255. for s in batch if s['sigma'] >= 1]
    worst = min(chi_square_variance_p(noise, level) for noise, level in zip(tested, levels))
    assert worst > ALPHA / 3 / len(tested)
    # and the pooled standardised noise is N(0, 1), unclipped (Kolmogorov-Smirnov)
    pooled = np.concatenate([noise.ravel() / level for noise, level in zip(tested, levels)])
    assert stats.kstest(pooled, 'norm').pvalue > ALPHA / 3

"""The metric size rules agree with BasicSR's metrics themselves: a size is refused exactly when the metric fails or
returns NaN on it; and the option check refuses such metrics before a run."""
import math
import warnings

import cv2
import numpy as np
import pytest
from basicsr.metrics import calculate_niqe, calculate_psnr, calculate_ssim

from tests.conftest import smooth_image, tiny_options
from usaid.errors import OptionError
from usaid.metric_sizes import size_problem
from usaid.options import check_options


def scores(metric_type, height, width, crop_border):
    """What BasicSR's metric gives on a photo-like pair of that size: a finite number, or None (NaN or an error)."""
    rng = np.random.default_rng(height * 1000 + width)
    img, img2 = smooth_image(rng, height, width), smooth_image(rng, height, width)
    function = {'calculate_niqe': lambda: calculate_niqe(img, crop_border),
                'calculate_ssim': lambda: calculate_ssim(img, img2, crop_border),
                'calculate_psnr': lambda: calculate_psnr(img, img2, crop_border)}[metric_type]
    try:
        with warnings.catch_warnings(), np.errstate(all='ignore'):
            warnings.simplefilter('ignore')
            value = float(function())
    except Exception:  # LinAlgError, cv2.error, ...
        return None
    return value if math.isfinite(value) else None


@pytest.mark.parametrize('metric_type, height, width, crop_border', [
    ('calculate_niqe', 191, 191, 0), ('calculate_niqe', 192, 96, 0), ('calculate_niqe', 96, 192, 0),
    ('calculate_niqe', 150, 400, 0), ('calculate_niqe', 200, 200, 4), ('calculate_niqe', 192, 192, 0),
    ('calculate_ssim', 10, 40, 0), ('calculate_ssim', 11, 11, 0), ('calculate_ssim', 32, 32, 11),
    ('calculate_ssim', 32, 32, 10), ('calculate_psnr', 4, 4, 2), ('calculate_psnr', 5, 5, 2),
])
def test_a_size_is_refused_exactly_when_basicsr_cannot_score_it(metric_type, height, width, crop_border):
    refused = size_problem({'type': metric_type, 'crop_border': crop_border}, height, width) is not None
    assert refused == (scores(metric_type, height, width, crop_border) is None)


def test_the_option_check_refuses_metrics_the_validation_images_are_too_small_for(image_folder):
    opt = tiny_options(image_folder)  # 32x32 validation images
    opt['val']['metrics'].update(niqe={'type': 'calculate_niqe', 'crop_border': 0},
                                 ssim={'type': 'calculate_ssim', 'crop_border': 11})
    with pytest.raises(OptionError) as error:
        check_options(opt, 'small.yml', is_train=True)
    problems = str(error.value)
    assert 'val:metrics:niqe: calculate_niqe needs at least two 96x96 blocks' in problems
    assert 'val:metrics:ssim: calculate_ssim needs at least 11x11 (its Gaussian window); found 32x32, 10x10 after ' \
           'crop_border 11' in problems
    assert '2 of the 2 images of datasets:val are too small' in problems
    assert 'val:metrics:psnr' not in problems
    for i in range(2):  # large enough for NIQE: accepted
        cv2.imwrite(str(image_folder / 'val' / f'img{i}.png'), smooth_image(np.random.default_rng(i), 200, 120))
    opt['val']['metrics']['ssim']['crop_border'] = 0
    check_options(opt, 'large.yml', is_train=True)


def test_the_refusal_names_the_first_image_too_small_and_counts_them(image_folder):
    """Two of four validation images too small: the first of them (in the dataset's order) is named, both counted."""
    for i in range(2):
        cv2.imwrite(str(image_folder / 'val' / f'img{i}.png'), smooth_image(np.random.default_rng(i), 200, 120))
    small = image_folder / 'val' / 'img8.png'
    cv2.imwrite(str(small), smooth_image(np.random.default_rng(8), 90, 120))
    cv2.imwrite(str(image_folder / 'val' / 'img9.png'), smooth_image(np.random.default_rng(9), 80, 120))
    opt = tiny_options(image_folder)
    opt['val']['metrics'] = {'niqe': {'type': 'calculate_niqe', 'crop_border': 0}}
    with pytest.raises(OptionError) as error:
        check_options(opt, 'one_small.yml', is_train=True)
    [problem] = error.value.problems
    assert problem.startswith('val:metrics:niqe: calculate_niqe needs at least two 96x96 blocks')
    assert f'({small}); 2 of the 4 images of datasets:val are too small' in problem

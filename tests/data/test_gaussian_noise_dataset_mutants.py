"""Tests written for mutants of the training crop in usaid/data/gaussian_noise_dataset.py that survived `make mutation`
(docs/testing.md#mutation-testing): every position of the image can be cropped, an image exactly gt_size in a side
is taken whole in that side, and an image that became smaller than gt_size in either side is refused by name; the
flips and rotations follow use_hflip and use_rot; sigma is accepted at the ends of its range."""
import random
import re

import cv2
import numpy as np
import pytest

from usaid.data import GaussianNoiseDataset
from usaid.data.gaussian_noise_dataset import check_sigma


def training_set(folder, gt_size, **opt):
    return GaussianNoiseDataset({
        'name': 'crops', 'type': 'GaussianNoiseDataset', 'dataroot_gt': str(folder), 'io_backend': {'type': 'disk'},
        'phase': 'train', 'gt_size': gt_size, 'use_hflip': False, 'use_rot': False, 'sigma_type': 'fixed',
        'sigma': 0, 'cache_bytes': 0, **opt})


def write(folder, height, width):
    """An image whose pixel (y, x) holds y in its blue channel and x in its green one (so a crop shows its place)."""
    folder.mkdir(exist_ok=True)
    y, x = np.mgrid[:height, :width]
    cv2.imwrite(str(folder / 'img.png'), np.stack([y, x, np.zeros_like(y)], axis=-1).astype(np.uint8))
    return folder


def corner(sample):
    """(top, left) of a crop of :func:`write`'s image; the tensor is RGB, so blue is channel 2."""
    return round(sample['gt'][2, 0, 0].item() * 255), round(sample['gt'][1, 0, 0].item() * 255)


def test_every_top_left_position_is_cropped(tmp_path):
    """gt_size 30 from 32 x 33: tops 0-2 and lefts 0-3, each drawn (uniform: 200 draws miss one with p < 1e-20)."""
    data = training_set(write(tmp_path / 'a', 32, 33), 30)
    random.seed(0)
    corners = [corner(data[0]) for _ in range(200)]
    assert {top for top, _ in corners} == {0, 1, 2} and {left for _, left in corners} == {0, 1, 2, 3}


@pytest.mark.parametrize('height, width', [(30, 40), (40, 30), (30, 30)])
def test_a_side_of_exactly_gt_size_is_taken_whole(tmp_path, height, width):
    sample = training_set(write(tmp_path / 'a', height, width), 30)[0]
    assert sample['gt'].shape == (3, 30, 30)
    assert corner(sample)[0 if height == 30 else 1] == 0


@pytest.mark.parametrize('height, width', [(29, 40), (40, 29), (29, 29)])
def test_an_image_that_became_smaller_than_gt_size_in_either_side_is_named(tmp_path, height, width):
    data = training_set(write(tmp_path / 'a', 40, 40), 30)  # checked here: the sizes fit
    folder = write(tmp_path / 'a', height, width)  # replaced during the run (decoded for each patch: no cache)
    with pytest.raises(ValueError) as error:
        data[0]
    assert str(error.value) == f'{folder / "img.png"}: {height}x{width} is smaller than gt_size 30.'


def orientation(gt):
    """How a crop of :func:`write`'s image lies: the steps of y (blue) and x (green) down and across, as signs."""
    y, x = gt[2], gt[1]
    steps = (y[1, 0] - y[0, 0], y[0, 1] - y[0, 0], x[1, 0] - x[0, 0], x[0, 1] - x[0, 0])
    return tuple(int(np.sign(float(s))) for s in steps)


def expected_orientations(hflip, rotation):
    """BasicSR's ``augment``: a horizontal flip with ``use_hflip``; a vertical flip and/or a transpose (its rotations)
    with ``use_rot``; each drawn with probability 1/2. Applied here to the (y, x) planes with NumPy."""
    y, x = np.mgrid[:4, :4].astype(float)
    found = set()
    for h in (False, True) if hflip else (False,):
        for v in (False, True) if rotation else (False,):
            for t in (False, True) if rotation else (False,):
                planes = np.stack([x, x, y])  # channels as the tensor's: R (unused), G = x, B = y
                planes = planes[:, :, ::-1] if h else planes
                planes = planes[:, ::-1, :] if v else planes
                planes = planes.transpose(0, 2, 1) if t else planes
                found.add(orientation(planes))
    return found


@pytest.mark.parametrize('use_hflip, use_rot', [(True, False), (False, True), (True, True), (False, False)])
def test_the_crops_are_flipped_and_rotated_as_the_options_say(tmp_path, use_hflip, use_rot):
    data = training_set(write(tmp_path / 'a', 40, 40), 30, use_hflip=use_hflip, use_rot=use_rot)
    random.seed(0)
    seen = {orientation(data[0]['gt'].numpy()) for _ in range(200)}  # 8 kinds at most: one missed with p < 1e-10
    assert seen == expected_orientations(use_hflip, use_rot)
    assert len(seen) == (2 if use_hflip else 1) * (4 if use_rot else 1)


@pytest.mark.parametrize('sigma_type, sigma, expected', [
    ('fixed', 255, 255.0), ('fixed', 0, 0.0), ('uniform', [25, 25], [25.0, 25.0]), ('uniform', [0, 255], [0.0, 255.0]),
    ('choice', [15, 25, 50], [15.0, 25.0, 50.0]), ('choice', [50, 15], [50.0, 15.0]), ('choice', [30], [30.0])])
def test_sigma_at_the_ends_of_its_range_and_any_choice_list_is_accepted(sigma_type, sigma, expected):
    """REFERENCE: sigma on the 0-255 scale; uniform draws from [low, high] (low == high is a fixed level), choice from
    any non-empty list."""
    assert check_sigma(sigma_type, sigma) == expected


@pytest.mark.parametrize('sigma_type, sigma', [('fixed', 255.5), ('fixed', -0.1), ('uniform', [30, 20]),
                                               ('uniform', [10, 20, 30]), ('choice', []), ('choice', [10, 256])])
def test_sigma_outside_its_range_is_refused(sigma_type, sigma):
    with pytest.raises(ValueError, match=f'^sigma: found {re.escape(repr(sigma))}, which does not fit sigma_type '):
        check_sigma(sigma_type, sigma)


def test_an_unknown_sigma_type_lists_the_three():
    with pytest.raises(ValueError) as error:
        check_sigma('gaussian', 25)
    assert str(error.value) == "sigma_type: found 'gaussian'; expected one of fixed, uniform, choice"

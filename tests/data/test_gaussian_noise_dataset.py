import logging
import re
from os import path as osp

import cv2
import numpy as np
import pytest
import torch
from basicsr.utils.lmdb_util import make_lmdb_from_imgs

from tests.conftest import KODAK24, smooth_image
from usaid.data import GaussianNoiseDataset


def dataset(root, **opt):
    base = {'name': 'test', 'type': 'GaussianNoiseDataset', 'dataroot_gt': str(root), 'io_backend': {'type': 'disk'},
            'phase': 'val', 'sigma_type': 'fixed', 'sigma': 25}
    return GaussianNoiseDataset({**base, **opt})


def test_validation_noise_is_the_literature_protocol(image_folder):
    sample = dataset(image_folder / 'val')[1]
    rgb = cv2.imread(str(image_folder / 'val' / 'img1.png'))[..., ::-1].astype(np.float32) / 255.
    np.random.seed(0)
    expected = rgb + np.random.normal(0, 25 / 255., rgb.shape)
    assert torch.equal(sample['gt'], torch.from_numpy(rgb.copy()).permute(2, 0, 1))
    assert np.allclose(sample['lq'].permute(1, 2, 0).numpy(), expected, atol=1e-6)
    assert sample['lq'].max() > 1 or sample['lq'].min() < 0  # not clipped
    assert sample['sigma'] == 25 and sample['lq_path'] == sample['gt_path']


@pytest.mark.skipif(not KODAK24.exists(), reason='Kodak24 not found')
def test_protocol_on_a_kodak_image_and_global_state_untouched():
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    sample = dataset(KODAK24, sigma=15, noise_seed=0)[0]
    assert np.array_equal(np.random.get_state()[1], state)
    rgb = cv2.imread(sample['gt_path'])[..., ::-1].astype(np.float32) / 255.
    np.random.seed(0)
    noisy = rgb + np.random.normal(0, 15 / 255., rgb.shape)
    assert np.abs(sample['lq'].permute(1, 2, 0).numpy() - noisy).max() < 1e-6


def test_training_samples(image_folder):
    train = dataset(image_folder / 'train', phase='train', gt_size=32, use_hflip=True, use_rot=True,
                    sigma_type='choice', sigma=[10, 30])
    sample = train[0]
    assert sample['lq'].shape == sample['gt'].shape == (3, 32, 32)
    assert sample['sigma'] in (10., 30.)
    measured = (sample['lq'] - sample['gt']).std().item() * 255
    assert abs(measured - sample['sigma']) < 0.25 * sample['sigma']


def test_uniform_sigma_covers_the_range(image_folder):
    train = dataset(image_folder / 'train', phase='train', gt_size=16, sigma_type='uniform', sigma=[0, 55])
    sigmas = [train[i % 4]['sigma'] for i in range(200)]
    assert 0 <= min(sigmas) < 5 and 50 < max(sigmas) <= 55


@pytest.mark.parametrize('sigma_type, sigma', [('fixed', [1, 2]), ('uniform', 25), ('uniform', [30, 10]),
                                               ('choice', []), ('gauss', 25), ('fixed', '25')])
def test_sigma_that_does_not_fit_sigma_type_is_refused(image_folder, sigma_type, sigma):
    with pytest.raises(ValueError, match='sigma'):
        dataset(image_folder / 'val', sigma_type=sigma_type, sigma=sigma)


def test_meta_info_file_with_filename_template(image_folder, tmp_path):
    (tmp_path / 'list.txt').write_text('img2\nimg0\n')
    listed = dataset(image_folder / 'train', meta_info_file=str(tmp_path / 'list.txt'), filename_tmpl='{}.png')
    assert [p.split('/')[-1] for p in listed.paths] == ['img2.png', 'img0.png']


def test_lmdb_gives_the_same_samples_as_the_folder(image_folder, tmp_path):
    names = sorted(p.name for p in (image_folder / 'val').iterdir())
    make_lmdb_from_imgs(str(image_folder / 'val'), str(tmp_path / 'val.lmdb'), names, [n[:-4] for n in names])
    from_folder = dataset(image_folder / 'val')
    from_lmdb = dataset(tmp_path / 'val.lmdb', io_backend={'type': 'lmdb'})
    assert len(from_lmdb) == len(from_folder) == 2
    for a, b in zip(from_folder, from_lmdb):
        assert torch.equal(a['gt'], b['gt']) and torch.equal(a['lq'], b['lq'])


def test_sixteen_bit_images_keep_their_precision(tmp_path):
    img16 = (np.random.default_rng(0).random((20, 20, 3)) * 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / 'deep.png'), img16)
    gt = dataset(tmp_path)[0]['gt']
    assert torch.allclose(gt, torch.from_numpy(img16[..., ::-1] / 65535.).permute(2, 0, 1).float(), atol=1e-7)


def test_gray_input_channels(image_folder):
    sample = dataset(image_folder / 'val', in_ch=1)[0]
    assert sample['lq'].shape == sample['gt'].shape == (1, 32, 32)
    gray = cv2.imread(sample['gt_path'], cv2.IMREAD_GRAYSCALE)[..., None].astype(np.float32) / 255.  # OpenCV's gray
    np.random.seed(0)
    noisy = gray + np.random.normal(0, 25 / 255., gray.shape)  # the protocol's noise on the H x W x 1 array
    assert torch.equal(sample['gt'], torch.from_numpy(gray).permute(2, 0, 1))
    assert np.allclose(sample['lq'].permute(1, 2, 0).numpy(), noisy, atol=1e-6)


# ---- bad images: an error for validation and test, a counted warning and the file skipped for training --------

def write_images(folder, count=3, size=(40, 40)):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(count):
        cv2.imwrite(str(folder / f'good{i}.png'), smooth_image(rng, *size))
    return folder


def truncated_png(path):
    content = cv2.imencode('.png', smooth_image(np.random.default_rng(2), 40, 40))[1].tobytes()
    path.write_bytes(content[:len(content) // 2])


def corrupt_inside_png(path):
    """A PNG whose header and end marker are intact but whose pixel data is garbage: only decoding finds out."""
    content = bytearray(cv2.imencode('.png', smooth_image(np.random.default_rng(3), 40, 40))[1].tobytes())
    middle = len(content) // 2
    content[middle:middle + 64] = bytes(64)
    path.write_bytes(bytes(content))


@pytest.mark.parametrize('make_bad, problem', [
    (lambda p: p.write_bytes(b'not a png'), 'is not an image file that can be read'),
    (truncated_png, 'is truncated (a PNG file without its end marker)'),
])
def test_unreadable_images_stop_validation_and_are_skipped_in_training(tmp_path, caplog, make_bad, problem):
    folder = write_images(tmp_path / 'images')
    make_bad(folder / 'bad.png')
    with pytest.raises(ValueError, match=re.escape(f'dataroot_gt: 1 of 4 images cannot be used: {folder / "bad.png"} '
                                                   f'{problem}; expected every image of a validation or test set')):
        dataset(folder)
    with caplog.at_level(logging.WARNING, logger='basicsr'):
        train = dataset(folder, phase='train', gt_size=32)
    assert len(train) == 3 and str(folder / 'bad.png') not in train.paths
    assert f'skipping 1 of 4 training images that cannot be used: {folder / "bad.png"} {problem}' in caplog.text


def test_truncated_jpeg_is_found_from_its_end_marker(tmp_path):
    folder = write_images(tmp_path / 'images')
    content = cv2.imencode('.jpg', smooth_image(np.random.default_rng(4), 40, 40))[1].tobytes()
    (folder / 'cut.jpg').write_bytes(content[:-100])
    with pytest.raises(ValueError, match='cut.jpg is truncated \\(a JPEG file without its end marker\\)'):
        dataset(folder)


def test_a_listed_path_that_cannot_be_read_is_named(tmp_path):
    folder = write_images(tmp_path / 'images')
    (folder / 'folder.png').mkdir()  # exists, but is no file (permissions are no test when running as root)
    (tmp_path / 'list.txt').write_text('good0.png\nfolder.png\n')
    with pytest.raises(ValueError, match=re.escape(f'{folder / "folder.png"} cannot be read (Is a directory)')):
        dataset(folder, meta_info_file=str(tmp_path / 'list.txt'))


def test_image_corrupt_past_its_header_is_replaced_in_training_and_refused_in_validation(tmp_path, caplog):
    folder = write_images(tmp_path / 'images', count=2)
    corrupt_inside_png(folder / 'good0.png')
    with pytest.raises(ValueError, match=f'{folder / "good0.png"}: cannot be decoded as an image'):
        dataset(folder)[0]
    train = dataset(folder, phase='train', gt_size=32, sigma_type='fixed', sigma=0)
    with caplog.at_level(logging.WARNING, logger='basicsr'):
        samples = [train[0], train[0]]
    assert all(s['gt_path'] == str(folder / 'good1.png') for s in samples)  # the next image instead
    assert caplog.text.count('good0.png: cannot be decoded') == 1 and '1 image(s) skipped so far' in caplog.text


def test_gray_and_rgba_images_are_used_as_rgb_with_a_counted_warning(tmp_path, caplog):
    folder = write_images(tmp_path / 'images', count=1)
    rgb = smooth_image(np.random.default_rng(5), 40, 40)
    gray = cv2.cvtColor(rgb, cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(folder / 'gray.png'), gray)
    cv2.imwrite(str(folder / 'rgba.png'), np.dstack([rgb, np.full((40, 40), 7, np.uint8)]))
    with caplog.at_level(logging.WARNING, logger='basicsr'):
        val = dataset(folder)
    assert '1 of 3 images are gray (used with the channel repeated to RGB)' in caplog.text
    assert '1 of 3 images are with an alpha channel (alpha dropped)' in caplog.text
    samples = {osp.basename(s['gt_path']): s['gt'] for s in val}
    assert samples['gray.png'].shape == (3, 40, 40) and torch.equal(samples['gray.png'][0], samples['gray.png'][2])
    assert torch.equal(samples['gray.png'][0], torch.from_numpy(gray / 255.).float())
    assert torch.equal(samples['rgba.png'], torch.from_numpy(rgb[..., ::-1] / 255.).float().permute(2, 0, 1))


def test_images_smaller_than_the_crop_are_named_with_their_size(tmp_path):
    folder = write_images(tmp_path / 'images')
    cv2.imwrite(str(folder / 'small.png'), smooth_image(np.random.default_rng(6), 20, 50))
    small = folder / 'small.png'
    with pytest.raises(ValueError, match=re.escape(f'gt_size: 32 is larger than 1 of the 4 images: {small} '
                                                   '(20x50)')):
        dataset(folder, phase='train', gt_size=32)
    assert len(dataset(folder)) == 4  # validation does not crop


def test_empty_folders_and_folders_without_images(tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='holds no images \\(it is empty\\); expected image files'):
        dataset(tmp_path / 'empty')
    (tmp_path / 'notes').mkdir()
    (tmp_path / 'notes' / 'readme.txt').write_text('x')
    with pytest.raises(ValueError, match='holds no images \\(only 1 file\\(s\\) of kinds .txt\\)'):
        dataset(tmp_path / 'notes')


def test_lmdb_keys_and_meta_info_that_disagree(image_folder, tmp_path, caplog):
    lmdb_path = tmp_path / 'train.lmdb'
    make_lmdb_from_imgs(str(image_folder / 'train'), str(lmdb_path), ['img0.png', 'img1.png', 'img2.png'],
                        ['img0', 'img1', 'img2'])
    meta_info = lmdb_path / 'meta_info.txt'
    lines = meta_info.read_text().splitlines()
    meta_info.write_text('\n'.join(lines[:2]) + '\n')  # img2 is stored but no longer listed
    with caplog.at_level(logging.WARNING, logger='basicsr'):
        assert len(dataset(lmdb_path, io_backend={'type': 'lmdb'})) == 2
    assert '1 image(s) stored in the LMDB' in caplog.text and 'not listed in its meta_info.txt' in caplog.text
    meta_info.write_text('\n'.join(lines + ['img9.png (56,64,3) 1']) + '\n')  # listed, never stored
    with pytest.raises(ValueError, match='1 key\\(s\\) of .*meta_info.txt are not in the LMDB: img9'):
        dataset(lmdb_path, io_backend={'type': 'lmdb'})


def test_iterating_a_dataset_visits_each_image_once(image_folder):
    assert len(list(dataset(image_folder / 'val'))) == 2
    train = dataset(image_folder / 'train', phase='train', gt_size=16)
    assert len(list(train)) == 4
    with pytest.raises(IndexError):
        dataset(image_folder / 'val')[2]


def test_validation_needs_one_fixed_sigma(image_folder):
    with pytest.raises(ValueError, match='validation and test need sigma_type fixed'):
        dataset(image_folder / 'val', sigma_type='uniform', sigma=[0, 55])

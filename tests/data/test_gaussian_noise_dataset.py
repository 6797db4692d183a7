import cv2
import numpy as np
import pytest
import torch
from basicsr.utils.lmdb_util import make_lmdb_from_imgs

from tests.conftest import KODAK24
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
    assert sample['lq'].shape == (1, 32, 32)


def test_errors_name_what_is_wrong(image_folder, tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='no images found in dataroot_gt'):
        dataset(tmp_path / 'empty')
    with pytest.raises(ValueError, match='smaller than gt_size 64'):
        dataset(image_folder / 'val', phase='train', gt_size=64)[0]
    (tmp_path / 'broken').mkdir()
    (tmp_path / 'broken' / 'bad.png').write_bytes(b'not a png')
    with pytest.raises(ValueError, match='bad.png: cannot be decoded'):
        dataset(tmp_path / 'broken')[0]


def test_iterating_a_dataset_visits_each_image_once(image_folder):
    assert len(list(dataset(image_folder / 'val'))) == 2
    train = dataset(image_folder / 'train', phase='train', gt_size=16)
    assert len(list(train)) == 4
    with pytest.raises(IndexError):
        dataset(image_folder / 'val')[2]


def test_validation_needs_one_fixed_sigma(image_folder):
    with pytest.raises(ValueError, match='validation and test need sigma_type fixed'):
        dataset(image_folder / 'val', sigma_type='uniform', sigma=[0, 55])

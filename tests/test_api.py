"""usaid.load_denoiser and usaid.denoise: NumPy in and out, the tool's results, the README's example as written."""
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import usaid
from tests.conftest import CHECKPOINTS, REPO, cli
from usaid.data.data_util import add_protocol_noise

pytestmark = pytest.mark.skipif(not CHECKPOINTS.is_dir(), reason='needs ../shared/seed/checkpoints')
KODAK = REPO.parent / 'shared' / 'testsets' / 'Kodak24'


@pytest.fixture
def net():
    return usaid.load_denoiser(str(CHECKPOINTS / 'USAID.pth'), device='cpu')


def kodak_crop(size=96):
    bgr = cv2.imread(str(sorted(KODAK.glob('*.png'))[0]))
    return np.ascontiguousarray(bgr[:size, :size, ::-1])  # RGB


def psnr(a, b, peak):
    return 10 * np.log10(peak ** 2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def test_the_loaded_denoiser_is_in_eval_mode_on_the_device_asked_for(net):
    assert not net.training and net.device == torch.device('cpu')
    assert usaid.api.best_device().type == ('cuda' if torch.cuda.is_available() else 'cpu')


def test_uint8_uint16_and_float_images_come_back_as_they_went_in_and_agree(net):
    clean = kodak_crop()
    noisy = np.clip(add_protocol_noise(clean / 255.0, 25, 0), 0, 1)
    as_uint8 = (noisy * 255).round().astype(np.uint8)
    out8 = usaid.denoise(as_uint8, net)
    assert out8.dtype == np.uint8 and out8.shape == clean.shape
    assert psnr(out8, clean, 255) > psnr(as_uint8, clean, 255) + 6
    out16 = usaid.denoise((noisy * 65535).round().astype(np.uint16), net)
    assert out16.dtype == np.uint16 and abs(psnr(out16 / 257.0, clean, 255) - psnr(out8, clean, 255)) < 0.1
    outf = usaid.denoise(noisy.astype(np.float32), net)
    assert outf.dtype == np.float32 and 0 <= outf.min() and outf.max() <= 1
    assert np.abs(outf * 255 - out8).max() <= 1


def test_tiles_give_the_untiled_result_and_gray_and_rgba_keep_their_layout(net):
    noisy = (np.clip(add_protocol_noise(kodak_crop(80) / 255.0, 25, 0), 0, 1) * 255).round().astype(np.uint8)
    assert np.abs(usaid.denoise(noisy, net, tile=32).astype(int) - usaid.denoise(noisy, net, tile=0)).max() <= 1
    gray = cv2.cvtColor(noisy, cv2.COLOR_RGB2GRAY)
    assert usaid.denoise(gray, net).shape == gray.shape
    rgba = np.dstack([noisy, np.full(noisy.shape[:2], 7, np.uint8)])
    out = usaid.denoise(rgba, net)
    assert out.shape == rgba.shape and (out[..., 3] == 7).all()


def test_the_api_matches_usaid_denoise_on_a_file(net, tmp_path):
    noisy = (np.clip(add_protocol_noise(kodak_crop() / 255.0, 25, 0), 0, 1) * 255).round().astype(np.uint8)
    cv2.imwrite(str(tmp_path / 'noisy.png'), noisy[..., ::-1])
    result = cli('usaid-denoise', tmp_path / 'noisy.png', tmp_path / 'out.png', '-w', CHECKPOINTS / 'USAID.pth',
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    tool = cv2.imread(str(tmp_path / 'out.png'))[..., ::-1]
    assert np.abs(tool.astype(int) - usaid.denoise(noisy, net)).max() <= 1


NAN_PIXEL = np.zeros((8, 8, 3), np.float32)
NAN_PIXEL[2, 2, 0] = np.nan


@pytest.mark.parametrize('image, expected', [(np.zeros((8, 8, 3), np.int32), 'int32 values'),
                                             (np.zeros((8, 8, 2), np.uint8), 'shape (8, 8, 2)'),
                                             (np.zeros((0, 0, 3), np.uint8), 'shape (0, 0, 3)'),
                                             (NAN_PIXEL, 'image: 1 values are NaN or infinite')])
def test_other_arrays_are_refused_naming_what_is_expected(net, image, expected):
    with pytest.raises(ValueError, match=re.escape(expected)):
        usaid.denoise(image, net)


@pytest.mark.parametrize('arguments, expected', [({'model': None}, 'model: found NoneType'),
                                                 ({'model': torch.nn.Identity()}, 'model: found Identity'),
                                                 ({'tile': 16.0}, 'tile: found 16.0'),
                                                 ({'overlap': '8'}, "overlap: found '8'"),
                                                 ({'tile': True}, 'tile: found True')])
def test_other_arguments_are_refused_naming_what_is_expected(net, arguments, expected):
    with pytest.raises(ValueError, match=re.escape(expected)):
        usaid.denoise(np.zeros((8, 8, 3), np.uint8), **{'model': net, **arguments})


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch):  # a script of its own, as a user runs it
    """The README's Python example, with the released U-SAID's name resolved from a pre-seeded hub cache."""
    readme = (REPO / 'README.md').read_text()
    example = re.search(r'```python\n(.*?)```', readme, re.S).group(1)
    hub = tmp_path / 'torch' / 'hub' / 'checkpoints'
    hub.mkdir(parents=True)
    (hub / 'USAID.pth').write_bytes((CHECKPOINTS / 'USAID.pth').read_bytes())
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    cv2.imwrite(str(tmp_path / 'photo.png'), cv2.imread(str(sorted(KODAK.glob('*.png'))[0]))[:64, :64])
    (tmp_path / 'example.py').write_text(example)
    result = subprocess.run([sys.executable, 'example.py'], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert cv2.imread(str(tmp_path / 'photo_denoised.png')).shape == (64, 64, 3)

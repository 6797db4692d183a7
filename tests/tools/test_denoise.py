import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import yaml

from tests.conftest import CHECKPOINTS, KODAK24, console_script, run, smooth_image
from usaid.archs import USAID
from usaid.tools.denoise import denoise

needs_released = pytest.mark.skipif(not ((CHECKPOINTS / 'USAID.pth').exists() and KODAK24.exists()),
                                    reason='released checkpoints or Kodak24 not found')


def kodak_crop(tmp_path, size=(150, 200)):
    img = cv2.imread(str(sorted(KODAK24.iterdir())[0]))[:size[0], :size[1]]
    cv2.imwrite(str(tmp_path / 'clean.png'), img)
    return tmp_path / 'clean.png'


def psnr(a, b):
    return 10 * np.log10(255 ** 2 / np.mean((a.astype(np.float64) - b) ** 2))


@needs_released
def test_tiled_output_matches_untiled_and_noise_is_reported(tmp_path):
    clean = kodak_crop(tmp_path)
    denoise_cmd = [console_script('usaid-denoise'), str(clean), '-w', str(CHECKPOINTS / 'USAID.pth'),
                   '--add-noise', '25', '--seed', '0']
    whole = run(denoise_cmd + [str(tmp_path / 'whole.png'), '--tile', '0', '--side-by-side'], cwd=tmp_path)
    run(denoise_cmd + [str(tmp_path / 'tiled.png'), '--tile', '64', '--tile-overlap', '24'], cwd=tmp_path)
    reference, untiled, tiled = (cv2.imread(str(tmp_path / n)) for n in ('clean.png', 'whole.png', 'tiled.png'))
    assert abs(psnr(untiled, reference) - psnr(tiled, reference)) < 0.01
    assert np.abs(untiled.astype(int) - tiled).max() <= 1
    noisy_psnr, denoised_psnr = map(float, re.search(r'noisy ([\d.]+) dB.*denoised ([\d.]+) dB', whole.stdout).groups())
    assert denoised_psnr > noisy_psnr + 5
    assert denoised_psnr == pytest.approx(psnr(untiled, reference), abs=0.01)
    assert cv2.imread(str(tmp_path / 'whole_side_by_side.png')).shape == (150, 400, 3)


def test_tiles_without_enough_overlap_differ_and_with_it_agree():
    torch.manual_seed(0)
    net = USAID(num_feat=8, num_layers=6).eval()  # receptive radius 6
    for bn in net.modules():  # a strong residual, so that a missing context shows
        if isinstance(bn, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(bn.weight)
    image = torch.rand(1, 3, 70, 90)
    whole = denoise(net, image)
    assert torch.allclose(denoise(net, image, tile=32, overlap=6), whole, atol=1e-6)
    assert not torch.allclose(denoise(net, image, tile=32, overlap=2), whole, atol=1e-4)


@pytest.fixture
def tiny_weights(tmp_path):
    torch.manual_seed(0)
    net = USAID(num_feat=8, num_layers=3)
    torch.save({'params': net.state_dict()}, tmp_path / 'tiny.pth')
    with open(tmp_path / 'tiny.yml', 'w') as f:
        yaml.safe_dump({'network_g': {'type': 'USAID', 'num_feat': 8, 'num_layers': 3}}, f)
    return ['-w', str(tmp_path / 'tiny.pth'), '-opt', str(tmp_path / 'tiny.yml')]


def test_bit_depth_gray_and_alpha_are_kept_over_a_folder(tmp_path, tiny_weights):
    rng = np.random.default_rng(0)
    photos = tmp_path / 'photos'
    photos.mkdir()
    rgb = smooth_image(rng, 40, 50)
    cv2.imwrite(str(photos / 'eight.png'), rgb)
    cv2.imwrite(str(photos / 'sixteen.png'), rgb.astype(np.uint16) * 257)
    cv2.imwrite(str(photos / 'gray.png'), rgb[..., 0])
    alpha = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    cv2.imwrite(str(photos / 'rgba.png'), np.dstack([rgb, alpha]))
    cv2.imwrite(str(photos / 'photo.jpg'), rgb)
    result = run([console_script('usaid-denoise'), str(photos), str(tmp_path / 'out')] + tiny_weights, cwd=tmp_path)
    assert '5 image(s) denoised on cpu' in result.stdout
    read = {n: cv2.imread(str(tmp_path / 'out' / f'{n}.png'), cv2.IMREAD_UNCHANGED)
            for n in ('eight', 'sixteen', 'gray', 'rgba', 'photo')}
    assert read['eight'].dtype == np.uint8 and read['eight'].shape == (40, 50, 3)
    assert read['sixteen'].dtype == np.uint16 and len(np.unique(read['sixteen'] % 257)) > 1  # real 16-bit values
    assert read['gray'].shape == (40, 50)
    assert read['rgba'].shape == (40, 50, 4) and np.array_equal(read['rgba'][..., 3], alpha)
    assert read['photo'].shape == (40, 50, 3)


def test_unreadable_input_is_one_clear_error(tmp_path, tiny_weights):
    (tmp_path / 'broken.png').write_bytes(b'not an image')
    result = subprocess.run([console_script('usaid-denoise'), str(tmp_path / 'broken.png'), str(tmp_path / 'o.png')]
                            + tiny_weights, capture_output=True, text=True)
    assert result.returncode == 1 and 'broken.png: cannot be read as an image' in result.stderr
    assert 'Traceback' not in result.stderr and not (tmp_path / 'o.png').exists()


PEAK_RSS = ('import resource, sys; from usaid.tools.denoise import main; main(sys.argv[1:]); '
            'print("peak_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)')


def test_memory_stays_bounded_on_a_4000_by_3000_photo(tmp_path, tiny_weights):
    big = np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / 'big.png'), big)

    def peak_mib(tile):
        out = run([sys.executable, '-c', PEAK_RSS, str(tmp_path / 'big.png'), str(tmp_path / f'big_{tile}.png'),
                   '--tile', str(tile)] + tiny_weights, cwd=tmp_path).stdout
        return int(out.split('peak_kib')[1]) / 1024

    tiled, untiled = peak_mib(512), peak_mib(0)
    assert cv2.imread(str(tmp_path / 'big_512.png')).shape == (3000, 4000, 3)
    # the untiled run holds full-size activations; the tiled one only the image, the result and one tile's
    assert untiled - tiled > 500, (tiled, untiled)
    assert tiled < 2048, tiled  # O(image): the 8-bit input, its float copy, the result and its 8-bit copy

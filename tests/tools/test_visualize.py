"""usaid-visualize: one figure, panels of the expected size, metrics equal to BasicSR's on the same outputs."""
import cv2
import numpy as np
import torch
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils import tensor2img

from tests.conftest import smooth_image, write_options
from usaid.archs import USAID
from usaid.data.gaussian_noise_dataset import add_protocol_noise
from usaid.tools.visualize import DPI, PANEL_INCHES, main, visualize

TINY = {'type': 'USAID', 'num_feat': 8, 'num_layers': 3}
USA = {'backbone': 'resnet18', 'pretrained': 'none'}


def tiny_checkpoints(tmp_path):
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = tmp_path / f'model{seed}.pth'
        torch.save({'params': USAID(num_feat=8, num_layers=3).state_dict()}, path)
        paths.append(str(path))
    return paths


def test_figure_rows_and_metrics(tmp_path):
    clean = smooth_image(np.random.default_rng(0), 72, 96)
    cv2.imwrite(str(tmp_path / 'photo.png'), clean)
    weights = tiny_checkpoints(tmp_path)
    rows = visualize(str(tmp_path / 'photo.png'), weights, ['a', 'b'], str(tmp_path / 'fig.png'), add_noise=25,
                     network_opt=TINY, usa_opt=USA)
    assert [row['name'] for row in rows] == ['noisy input', 'clean', 'a', 'b']
    figure = cv2.imread(str(tmp_path / 'fig.png'))
    assert figure.shape[:2] == (int(4 * PANEL_INCHES * DPI), int(4 * PANEL_INCHES * DPI))  # 4 rows of 4 panels

    rgb = clean[..., ::-1] / 255.
    noisy = torch.from_numpy(add_protocol_noise(rgb, 25, 0).astype(np.float32)).permute(2, 0, 1)[None]
    reference = tensor2img(torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float(), rgb2bgr=False)
    for row, weight in zip(rows[2:], weights):
        net = USAID(num_feat=8, num_layers=3).eval()
        net.load_state_dict(torch.load(weight, weights_only=True)['params'])
        with torch.no_grad():
            expected = tensor2img(net(noisy), rgb2bgr=False)
        assert np.abs(row['image'].astype(int) - expected).max() <= 1  # BN folding rounds differently
        assert row['psnr'] == calculate_psnr(row['image'], reference, crop_border=0)
        assert row['ssim'] == calculate_ssim(row['image'], reference, crop_border=0)
        assert abs(row['psnr'] - calculate_psnr(expected, reference, crop_border=0)) < 0.01
    for row in rows:
        assert row['labels'].shape == (72, 96) and row['labels'].max() < 21
        assert row['uncertainty'].shape == (72, 96) and 0 <= row['uncertainty'].min() <= row['uncertainty'].max() <= 1
    assert 'psnr' not in rows[1]


def test_command_line_without_a_clean_reference(tmp_path, capsys):
    cv2.imwrite(str(tmp_path / 'noisy.png'), smooth_image(np.random.default_rng(1), 40, 40))
    opt = write_options({'network_g': TINY}, tmp_path / 'net.yml')
    main([str(tmp_path / 'noisy.png'), '-w', *tiny_checkpoints(tmp_path), '-opt', str(opt), '-o',
          str(tmp_path / 'fig.png'), '--usa-backbone', 'resnet18', '--usa-pretrained', 'none', '--crop', '4', '4', '16'])
    figure = cv2.imread(str(tmp_path / 'fig.png'))
    assert figure.shape[:2] == (int(3 * PANEL_INCHES * DPI), int(4 * PANEL_INCHES * DPI))  # input and two models
    out = capsys.readouterr().out
    assert 'dB' not in out and out.count('mean uncertainty') == 3 and 'fig.png' in out

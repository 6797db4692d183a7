"""usaid-visualize: one figure, panels of the expected size, metrics equal to BasicSR's on the same outputs."""
import cv2
import numpy as np
import pytest
import torch
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils import tensor2img

from tests.conftest import smooth_image, write_options
from usaid.archs import USAID
from usaid.data.data_util import add_protocol_noise
from usaid.inference import InferenceNetwork
from usaid.tools import visualize as visualize_tool
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
          str(tmp_path / 'fig.png'), '--usa-backbone', 'resnet18', '--usa-pretrained', 'none',
          '--crop', '4', '4', '16'])
    figure = cv2.imread(str(tmp_path / 'fig.png'))
    assert figure.shape[:2] == (int(3 * PANEL_INCHES * DPI), int(4 * PANEL_INCHES * DPI))  # input and two models
    out = capsys.readouterr().out
    assert 'dB' not in out and out.count('mean uncertainty') == 3 and 'fig.png' in out


def visualize_refused(argv, expected):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert str(stop.value.code) == f'usaid-visualize: {expected}'


@pytest.fixture
def one_image(tmp_path):
    cv2.imwrite(str(tmp_path / 'photo.png'), smooth_image(np.random.default_rng(1), 40, 56))
    return [str(tmp_path / 'photo.png'), '-w', *tiny_checkpoints(tmp_path), '-opt',
            str(write_options({'network_g': TINY}, tmp_path / 'net.yml')), '--usa-backbone', 'resnet18',
            '--usa-pretrained', 'none']


OUTSIDE = 'the window ({}) is not inside the image'


@pytest.mark.parametrize('crop, problem', [((30, 4, 16), OUTSIDE.format('rows 30 to 45, columns 4 to 19')),
                                           ((4, 50, 8), OUTSIDE.format('rows 4 to 11, columns 50 to 57')),
                                           ((-1, 0, 8), OUTSIDE.format('rows -1 to 6, columns 0 to 7')),
                                           ((4, 4, 0), 'a window of size 0 holds no pixel'),
                                           ((4, 4, -3), 'a window of size -3 holds no pixel')])
def test_a_crop_outside_the_image_is_refused_with_the_image_size(tmp_path, one_image, crop, problem):
    top, left, size = crop
    visualize_refused(one_image + ['--crop', str(top), str(left), str(size), '-o', str(tmp_path / 'fig.png')],
                      f'--crop {top} {left} {size}: {problem}; the image is 40 x 56 pixels (height x width): expected '
                      'SIZE >= 1, 0 <= TOP <= 40 - SIZE and 0 <= LEFT <= 56 - SIZE.')
    assert not (tmp_path / 'fig.png').exists()


def test_a_figure_path_that_would_replace_an_input_or_cannot_be_written_is_refused(tmp_path, one_image):
    visualize_refused(one_image + ['-o', one_image[0]], f'--output {one_image[0]}: is the input {one_image[0]}, which '
                      'the figure would replace; expected another file name.')
    visualize_refused(one_image + ['-o', one_image[2]], f'--output {one_image[2]}: is the input {one_image[2]}, which '
                      'the figure would replace; expected another file name.')
    with pytest.raises(SystemExit, match=r"--output .*fig.xyz: matplotlib does not write xyz; expected a name ending "
                                         r"with one of .*\.png"):
        main(one_image + ['-o', str(tmp_path / 'fig.xyz')])
    visualize_refused(one_image + ['-o', f'{one_image[0]}/fig.png'], f'--output {one_image[0]}/fig.png: cannot be '
                      f'made, because {one_image[0]} is a file, not a folder; expected a path under a folder.')
    visualize_refused(one_image + ['--add-noise', 'nan'], '--add-noise nan: expected a noise level from 0 to 255 '
                      '(0-255 scale), e.g. 25.')


def test_the_inference_switches_reach_the_networks(tmp_path, one_image, monkeypatch):
    made = []

    def recording(net, **options):
        made.append(options)
        return InferenceNetwork(net, **options)

    monkeypatch.setattr(visualize_tool, 'InferenceNetwork', recording)
    main(one_image + ['-o', str(tmp_path / 'fig.png'), '--no-fold-bn', '--no-channels-last'])
    assert made == 2 * [{'fold_bn': False, 'conv_algo': 'auto', 'channels_last': False, 'precision': 'fp32'}]

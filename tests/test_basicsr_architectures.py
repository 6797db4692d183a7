"""Every architecture in BasicSR's registry, at a tiny size: a restorer at scale 1 is trained by USAIDModel with and
without the USA loss, validated, tested by usaid-test, compared by usaid-compare, run by usaid-denoise, shown by
usaid-visualize and evaluated by usaid-segeval, and InferenceNetwork computes exactly what it computes; any other
architecture is refused by the option check, before anything runs. The list comes from the registry at collection
time, so an architecture registered later (by BasicSR or another plugin) is covered by the same test."""
import csv
import inspect
import sys

import cv2
import numpy as np
import pytest
import torch
from basicsr.archs import build_network
from basicsr.metrics import calculate_psnr
from basicsr.utils.registry import ARCH_REGISTRY
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import usaid  # noqa: F401  (registers U-SAID, so the registry is complete)
from tests.conftest import smooth_image, tiny_options, write_options
from tests.models.test_usaid_model import batch, build
from usaid.errors import OptionError
from usaid.inference import InferenceNetwork
from usaid.options import check_options

# Tiny values for constructor arguments, by name; an architecture takes the ones its signature has. Data range keys
# are set for [0, 1] data (README: "BasicSR's architectures on [0, 1] data").
TINY = {
    'num_in_ch': 3, 'num_out_ch': 3, 'in_channels': 3, 'out_channels': 3, 'in_chans': 3, 'num_feat': 8,
    'mid_channels': 16, 'num_block': 1, 'num_blocks': 1, 'num_group': 1, 'num_conv': 2, 'num_layers': 3,
    'num_channel': 8, 'num_grow_ch': 8, 'squeeze_factor': 4, 'embed_dim': 12, 'depths': [1], 'num_heads': [2],
    'window_size': 4, 'img_size': 16, 'with_idt': False, 'act_type': 'prelu', 'upscale': 1, 'scale': 1,
    'img_range': 1.0, 'backbone': 'resnet18', 'pretrained': 'none',
}
# The restorers the issue names must be among those that pass: the test must not pass by refusing everything.
MUST_RESTORE = {'USAID', 'EDSR', 'RCAN', 'SwinIR', 'RIDNet', 'RRDBNet', 'ECBSR', 'SRVGGNetCompact_basicsr'}
ARCHITECTURES = sorted(ARCH_REGISTRY._obj_map)  # BasicSR's Registry has no public listing


def tiny_network(name):
    parameters = inspect.signature(ARCH_REGISTRY.get(name)).parameters
    return {'type': name, **{key: value for key, value in TINY.items() if key in parameters}}


@pytest.fixture
def data(tmp_path):
    """Training crops, validation images of an odd size (padding for networks that need multiples), a label set."""
    rng = np.random.default_rng(0)
    for folder, count, (height, width) in (('train', 2, (40, 40)), ('val', 1, (37, 45)), ('seg', 1, (36, 44))):
        (tmp_path / folder).mkdir()
        for i in range(count):
            cv2.imwrite(str(tmp_path / folder / f'img{i}.png'), smooth_image(rng, height, width))
    (tmp_path / 'labels').mkdir()
    label = np.zeros((36, 44), np.uint8)
    label[:, 22:] = 15
    Image.fromarray(label).save(tmp_path / 'labels' / 'img0.png')
    return tmp_path


def matrix_options(root, name, network_g):
    opt = tiny_options(root, name=name, total_iter=2, gt_size=32)
    opt['network_g'] = network_g
    opt['datasets']['val']['dataroot_gt'] = str(root / 'val')
    opt['val']['metrics']['ssim'] = {'type': 'calculate_ssim', 'crop_border': 0}
    return opt


@pytest.mark.parametrize('name', ARCHITECTURES)
def test_every_registered_architecture_runs_everywhere_or_is_refused_before_training(name, data, monkeypatch,
                                                                                    capsys):
    network_g = tiny_network(name)
    opt = matrix_options(data, f'm_{name}', network_g)
    try:
        check_options(opt, f'{name}.yml', is_train=True)
    except OptionError as error:
        assert name not in MUST_RESTORE, str(error)
        assert 'network_g' in str(error) and 'expected' in str(error)
        return

    # InferenceNetwork computes what the plain eval-mode network computes, here on sizes it takes as they are
    torch.manual_seed(0)
    net = build_network(dict(network_g)).eval()
    image = torch.rand(2, 3, 40, 48)
    with torch.inference_mode():
        expected = net(image)
        for options in ({}, {'fold_bn': False, 'conv_algo': 'direct', 'channels_last': False}):
            assert torch.allclose(InferenceNetwork(net, **options)(image), expected, rtol=1e-3, atol=1e-4)

    # USAIDModel without the USA loss: one step changes the weights
    mse_only = matrix_options(data, f'mse_{name}', network_g)
    del mse_only['train']['usa_opt']
    model = build(mse_only, data / 'mse_models')
    before = [p.detach().clone() for p in model.net_g.parameters()]
    model.feed_data(batch(data))
    model.optimize_parameters(1)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.net_g.parameters()))

    # with the USA loss, through usaid-train: trains, validates (PSNR, SSIM), saves
    monkeypatch.chdir(data)
    option_file = write_options(opt, data / 'train.yml')
    from usaid import train
    monkeypatch.setattr(sys, 'argv', ['usaid-train', '-opt', str(option_file)])
    train.main()
    experiment = data / 'experiments' / opt['name']
    weights = experiment / 'models' / 'net_g_latest.pth'
    assert weights.exists() and (experiment / 'models' / 'net_g_2.pth').exists()
    events = EventAccumulator(str(data / 'tb_logger' / opt['name'])).Reload().Tags()['scalars']
    assert {'losses/l_usa', 'metrics/tiny_val/psnr', 'metrics/tiny_val/ssim'} <= set(events), events

    # usaid-test: the trained network on the validation set, metrics per image
    tested = {'name': f't_{name}', 'model_type': 'USAIDModel', 'num_gpu': 0,
              'datasets': {'test_1': dict(opt['datasets']['val'], name='odd')}, 'network_g': network_g,
              'path': {'pretrain_network_g': str(weights), 'param_key_g': 'params_ema'},
              'val': {'save_img': True, 'metrics': opt['val']['metrics']}}
    from usaid import test
    monkeypatch.setattr(sys, 'argv', ['usaid-test', '-opt', str(write_options(tested, data / 'test.yml'))])
    test.main()
    with open(data / 'results' / tested['name'] / 'odd.csv') as f:
        row = next(csv.DictReader(f))
    saved = cv2.imread(str(next((data / 'results' / tested['name'] / 'visualization' / 'odd').iterdir())))
    assert saved.shape == (37, 45, 3)  # cropped back if the network needed a padded size
    # the CSV's metrics are those of the image it saved
    assert float(row['psnr']) == pytest.approx(calculate_psnr(saved, cv2.imread(str(data / 'val/img0.png')), 0))
    assert -1 <= float(row['ssim']) <= 1

    model_file = write_options({'network_g': network_g, 'path': {'pretrain_network_g': str(weights)}},
                               data / 'model.yml')
    # usaid-denoise on an image of a size the network may not take as it is
    from usaid.tools import compare, denoise, segeval, visualize
    denoise.main([str(data / 'val' / 'img0.png'), str(data / 'denoised.png'), '-w', str(weights), '-opt',
                  str(model_file), '--add-noise', '25'])
    assert cv2.imread(str(data / 'denoised.png')).shape == (37, 45, 3)
    # usaid-compare from the experiment folder
    compare.main(['-m', f'{name}={experiment}', '-d', str(data / 'val'), '-s', '25', '-o', str(data / 'compare'),
                  '--niqe', 'off'])
    with open(data / 'compare' / 'compare.csv') as f:
        assert any(name in ','.join(r.values()) for r in csv.DictReader(f))
    # usaid-visualize with the USA maps
    visualize.main([str(data / 'val' / 'img0.png'), '-w', str(weights), '-opt', str(model_file), '--add-noise', '25',
                    '--usa-backbone', 'resnet18', '--usa-pretrained', 'none', '-o', str(data / 'figure.png')])
    assert (data / 'figure.png').stat().st_size > 0
    # usaid-segeval with a small segmentation network
    segeval.main(['--images', str(data / 'seg'), '--labels', str(data / 'labels'), '-w', f'{name}={model_file}',
                  '-s', '25', '--segnet', 'tests.tools.test_segeval:TinySegNet', '-o', str(data / 'segeval')])
    with open(data / 'segeval' / 'segeval.csv') as f:
        assert any(r['method'] == name and float(r['psnr']) > 0 for r in csv.DictReader(f))
    capsys.readouterr()


def test_the_registry_matrix_covers_the_named_restorers():
    assert MUST_RESTORE <= set(ARCHITECTURES)

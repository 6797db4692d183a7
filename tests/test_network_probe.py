"""The option check runs network_g once on a small image: upscalers, non-restorers, networks made for another data
range and training crops the network cannot take are refused before anything runs."""
import pytest
import torch
from torch import nn

from tests.conftest import tiny_options
from usaid.errors import OptionError
from usaid.network_probe import data_range_offset, probe_example, size_multiple
from usaid.options import check_options


def problems_with(image_folder, network_g, **train_overrides):
    opt = tiny_options(image_folder, **train_overrides)
    opt['network_g'] = network_g
    try:
        check_options(opt, 'net.yml', is_train=True)
    except OptionError as error:
        return str(error)
    return ''


@pytest.mark.parametrize('network_g, message', [
    ({'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1},  # upscale 4 by default
     'network_g: EDSR maps a 1x3x41x43 image to 1x3x164x172; expected an image of the same shape (it upscales: set '
     'its scale option'),
    ({'type': 'UNetDiscriminatorSN', 'num_in_ch': 3, 'num_feat': 8},
     'network_g: UNetDiscriminatorSN maps a 1x3x48x48 image to 1x1x48x48; expected an image of the same shape'),
    ({'type': 'MSRResNet', 'upscale': 1, 'num_feat': 8, 'num_block': 1},
     'network_g: MSRResNet cannot be built with these options (AttributeError'),
    ({'type': 'EDVR', 'num_feat': 8, 'num_frame': 3, 'num_extract_block': 1, 'num_reconstruct_block': 1,
      'deformable_groups': 1}, 'network_g: EDVR cannot run on a 1x3x41x43 image'),
    ({'type': 'RIDNet', 'in_channels': 3, 'out_channels': 3, 'mid_channels': 16, 'num_block': 1},  # img_range 255
     'network_g: RIDNet shifts an image in [0, 1] by'),
])
def test_networks_that_do_not_restore_0_1_images_at_scale_1_are_refused(image_folder, network_g, message):
    assert message in problems_with(image_folder, network_g)


def test_the_data_range_hint_names_the_architectures_own_keys(image_folder):
    ridnet = {'type': 'RIDNet', 'in_channels': 3, 'out_channels': 3, 'mid_channels': 16, 'num_block': 1}
    assert '(its range options: img_range, rgb_mean, rgb_std; e.g. img_range: 1)' in problems_with(image_folder, ridnet)
    assert problems_with(image_folder, dict(ridnet, img_range=1.0)) == ''


def test_training_crops_must_be_a_multiple_the_network_takes(image_folder):
    rrdb = {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'scale': 1, 'num_feat': 8, 'num_block': 1,
            'num_grow_ch': 8}  # pixel-unshuffles by 4 at scale 1
    assert ('datasets:train:gt_size: found 30, but RRDBNet with these options takes sizes that are multiples of 4; '
            'expected a multiple of 4') in problems_with(image_folder, rrdb, gt_size=30)
    assert problems_with(image_folder, rrdb, gt_size=32) == ''


def test_the_check_leaves_the_random_generator_as_it_was(image_folder):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    check_options(tiny_options(image_folder), 'ok.yml', is_train=True)  # builds and runs network_g
    assert torch.equal(torch.rand(3), expected)


def test_size_multiple_and_data_range_on_hand_made_networks():
    class NeedsEight(nn.Module):
        def forward(self, x):
            assert x.shape[-2] % 8 == 0 and x.shape[-1] % 8 == 0
            return x

    assert size_multiple(NeedsEight(), probe_example(3)) == 8
    assert size_multiple(nn.Identity(), probe_example(3)) == 1
    shifted = data_range_offset(lambda x: x + 255 * 0.45, probe_example(3))
    assert shifted == pytest.approx(114.75, rel=1e-5)


@pytest.mark.parametrize('batch, gt_size, refused', [(1, 32, True), (1, 16, True), (1, 33, False), (2, 16, False)])
def test_a_usa_batch_with_one_value_per_channel_at_stride_32_is_refused(image_folder, batch, gt_size, refused):
    """The refusal matches what the USA network itself does with such a batch (batch statistics)."""
    opt = tiny_options(image_folder, batch_size_per_gpu=batch, gt_size=gt_size)
    try:
        check_options(opt, 'usa.yml', is_train=True)
        problem = ''
    except OptionError as error:
        problem = str(error)
    assert ('datasets:train:batch_size_per_gpu: found' in problem) == refused, problem
    from usaid.archs import USANet
    net = USANet(backbone='resnet18', pretrained='none')
    try:
        net(torch.rand(batch, 3, gt_size, gt_size))
        fails = False
    except ValueError:
        fails = True
    assert fails == refused


def test_a_checkpoint_that_does_not_fit_is_refused_before_earlier_results_are_archived(image_folder, tmp_path):
    import subprocess
    import sys

    from tests.conftest import write_options
    from usaid.archs import USAID

    torch.save({'params': USAID(num_feat=16, num_layers=5).state_dict()}, tmp_path / 'net.pth')
    opt = tiny_options(image_folder, name='fits')
    test_opt = {'name': 'fits', 'model_type': 'USAIDModel', 'num_gpu': 0,
                'datasets': {'test_1': opt['datasets']['val']}, 'network_g': {'type': 'USAID', 'num_feat': 8,
                                                                             'num_layers': 5},
                'path': {'pretrain_network_g': str(tmp_path / 'net.pth')},
                'val': {'save_img': False, 'metrics': opt['val']['metrics']}}
    earlier = tmp_path / 'results' / 'fits'
    earlier.mkdir(parents=True)
    (earlier / 'table.csv').write_text('earlier results\n')
    option_file = write_options(test_opt, tmp_path / 't.yml')
    result = subprocess.run([sys.executable, '-m', 'usaid.test', '-opt', str(option_file)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    assert 'path:pretrain_network_g:' in result.stderr and 'dncnn.0.weight' in result.stderr
    assert sorted(p.name for p in (tmp_path / 'results').iterdir()) == ['fits']  # nothing archived
    assert (earlier / 'table.csv').read_text() == 'earlier results\n'

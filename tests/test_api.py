"""usaid.load_denoiser and usaid.denoise: NumPy in and out, the tool's results, the README's example as written."""
import json
import re
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest
import torch

import usaid
from tests.conftest import CHECKPOINTS, REPO, cli
from usaid.archs import USAID
from usaid.checkpoint import canonical_state_dict
from usaid.data.data_util import add_protocol_noise
from usaid.errors import CheckpointError
from usaid.released import RELEASED

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
    as_colour = usaid.denoise(np.dstack([gray] * 3), net)  # gray is denoised as three equal channels
    assert np.array_equal(usaid.denoise(gray, net), cv2.cvtColor(as_colour, cv2.COLOR_RGB2GRAY))
    rgba = np.dstack([noisy, np.full(noisy.shape[:2], 7, np.uint8)])
    out = usaid.denoise(rgba, net)
    assert out.shape == rgba.shape and (out[..., 3] == 7).all()
    assert np.array_equal(out[..., :3], usaid.denoise(noisy, net))


def test_the_api_matches_usaid_denoise_on_a_file(net, tmp_path):
    """The tool is a wrapper of the API: the same pixels for 8-bit, 16-bit, gray and RGBA files."""
    noisy = (np.clip(add_protocol_noise(kodak_crop() / 255.0, 25, 0), 0, 1) * 255).round().astype(np.uint8)
    low_byte = (np.arange(noisy.size) % 256).reshape(noisy.shape).astype(np.uint16)
    images = {'rgb': noisy, 'deep': noisy.astype(np.uint16) * 256 + low_byte, 'gray': noisy[..., 1],
              'rgba': np.dstack([noisy, noisy[..., 0]])}
    (tmp_path / 'in').mkdir()
    for name, image in images.items():
        cv2.imwrite(str(tmp_path / 'in' / f'{name}.png'), image if image.ndim == 2 else image[..., [2, 1, 0, 3][
            :image.shape[2]]])
    result = cli('usaid-denoise', tmp_path / 'in', tmp_path / 'out', '-w', CHECKPOINTS / 'USAID.pth', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name, image in images.items():
        tool = cv2.imread(str(tmp_path / 'out' / f'{name}.png'), cv2.IMREAD_UNCHANGED)
        tool = tool if tool.ndim == 2 else tool[..., [2, 1, 0, 3][:tool.shape[2]]]
        assert tool.dtype == image.dtype and np.array_equal(tool, usaid.denoise(image, net)), name


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


@pytest.fixture
def no_cache(tmp_path, monkeypatch):
    """An empty torch hub cache and no network: a released model that is looked up fails with a CheckpointError."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setattr(torch.hub, '_hub_dir', None)  # an earlier set_dir would win over $TORCH_HOME

    def offline(url, destination, progress=True):
        raise OSError('offline')
    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)
    return tmp_path / 'torch' / 'hub' / 'checkpoints'


@pytest.mark.parametrize('arguments, expected', [
    ({'tile': 5}, 'tile 5: expected 0 (the whole image at once) or a tile size >= 16 pixels; a 5-pixel tile reads'),
    ({'tile': -16}, 'tile -16: expected 0 (the whole image at once) or a tile size >= 16 pixels; a negative size'),
    ({'overlap': -1}, 'overlap -1: expected an integer >= 0 (the context read around each tile, in pixels)')])
def test_tile_and_overlap_errors_name_the_python_arguments_not_the_tool_options(net, arguments, expected):
    with pytest.raises(ValueError) as error:
        usaid.denoise(np.zeros((40, 40, 3), np.uint8), net, **arguments)
    assert str(error.value).startswith(expected) and '--' not in str(error.value)


@pytest.mark.parametrize('spec, name', [('USAID', 'usaid'), ('SSaid', 'ssaid'), ('CDnCNN-B', 'cdncnn-b')])
def test_a_released_name_in_other_letter_cases_is_refused_with_the_name_suggested(no_cache, tmp_path, monkeypatch,
                                                                                   spec, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=re.escape(f"{spec}: no such file or folder; did you mean the released model "
                                                   f"'{name}'?")):
        usaid.load_denoiser(spec, device='cpu')
    with pytest.raises(ValueError, match=re.escape('usaid2: no such file or folder; expected a checkpoint')):
        usaid.load_denoiser('usaid2', device='cpu')  # no name is suggested where none is meant


TINY = {'type': 'USAID', 'num_feat': 8, 'num_layers': 6}


def tiny_usaid(seed):
    """A 6-layer USAID whose BatchNorm passes features on at full strength, so that every layer's effect shows."""
    torch.manual_seed(seed)
    net = USAID(**{k: v for k, v in TINY.items() if k != 'type'})
    for bn in net.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(bn.weight)
    return net.eval()


def test_param_key_picks_the_checkpoint_entry_and_is_refused_for_a_released_model(tmp_path, no_cache):
    plain = {'params': tiny_usaid(1), 'params_ema': tiny_usaid(2)}
    torch.save({key: net.state_dict() for key, net in plain.items()}, tmp_path / 'both.pth')
    image = np.random.default_rng(0).random((24, 24, 3)).astype(np.float32)
    with torch.no_grad():  # the plain network's forward, clipped: what each entry computes
        expected = {key: net(torch.from_numpy(image).permute(2, 0, 1)[None])[0].permute(1, 2, 0).clamp(0, 1).numpy()
                    for key, net in plain.items()}
    assert np.abs(expected['params'] - expected['params_ema']).max() > 0.1  # the entries tell apart
    for param_key, key in (('params', 'params'), ('params_ema', 'params_ema'), (None, 'params_ema')):
        net = usaid.load_denoiser(str(tmp_path / 'both.pth'), 'cpu', TINY, param_key=param_key)
        assert np.allclose(usaid.denoise(image, net), expected[key], atol=1e-5), param_key
    with pytest.raises(ValueError, match=re.escape("param_key 'params_ema': usaid is a released model, whose file is "
                                                   'a bare state dict without params or params_ema entries; expected '
                                                   'None (the default).')):
        usaid.load_denoiser('usaid', device='cpu', param_key='params_ema')  # before any download


def impulse_reach(forward, size=61):
    """How far from a changed pixel ``forward``'s output changes: its receptive radius, measured."""
    torch.manual_seed(0)
    image = torch.rand(1, 3, size, size)
    changed = image.clone()
    changed[..., size // 2, size // 2] += 0.5
    with torch.no_grad():
        rows, _ = torch.nonzero((forward(image) - forward(changed)).abs().amax(1)[0] > 0, as_tuple=True)
    return int(rows.max()) - size // 2


@pytest.mark.parametrize('released', [False, True])
def test_an_overlap_below_the_receptive_radius_warns_and_the_defaults_do_not(tmp_path, net, released):
    if released:  # the released U-SAID, 20 layers
        plain = USAID().eval()
        plain.load_state_dict(canonical_state_dict(str(CHECKPOINTS / 'USAID.pth'), allow_bare=True, net=plain))
    else:
        plain = tiny_usaid(0)
        torch.save({'params': plain.state_dict()}, tmp_path / 'tiny.pth')
        net = usaid.load_denoiser(str(tmp_path / 'tiny.pth'), 'cpu', TINY)
    radius = impulse_reach(plain)
    assert radius == (20 if released else 6)
    image = np.random.default_rng(0).random((72, 72, 3)).astype(np.float32)
    whole = usaid.denoise(image, net, tile=0)
    with pytest.warns(UserWarning, match=re.escape(f'overlap {radius - 1}: less than the receptive radius of the '
                                                   f'network ({radius} pixels)')):
        short = usaid.denoise(image, net, tile=32, overlap=radius - 1)
    assert np.abs(short - whole).max() > 1e-4  # the seams it warns of
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert np.abs(usaid.denoise(image, net, tile=32, overlap=radius) - whole).max() < 1e-4
        usaid.denoise(image, net, tile=32)  # the default overlap, 32
        usaid.denoise(image, net, tile=72, overlap=0)  # one tile: no tiling, no seams


def test_network_opt_without_a_type_is_refused_naming_it(tmp_path):
    torch.save({'params': tiny_usaid(0).state_dict()}, tmp_path / 'tiny.pth')
    with pytest.raises(ValueError, match=re.escape("network_opt: found {'num_feat': 8, 'num_layers': 6}; expected "
                                                   "network_g options with the architecture's type, e.g. {'type': "
                                                   "'USAID'")):
        usaid.load_denoiser(str(tmp_path / 'tiny.pth'), 'cpu', {'num_feat': 8, 'num_layers': 6})
    with pytest.raises(ValueError, match=re.escape("network_opt: found ['USAID']; expected network_g options")):
        usaid.load_denoiser(str(tmp_path / 'tiny.pth'), 'cpu', ['USAID'])


def test_a_device_this_machine_lacks_is_refused_naming_it(no_cache, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 0)
    with pytest.raises(ValueError, match=re.escape('device cuda: this machine has no GPU that torch can use')):
        usaid.load_denoiser('usaid', device='cuda')  # before any download
    with pytest.raises(ValueError, match=re.escape("device 'gpu': not a device name; expected auto, cpu, cuda")):
        usaid.load_denoiser('usaid', device='gpu')


def test_a_folder_where_a_released_file_belongs_is_named(no_cache):
    folder = no_cache / RELEASED['usaid'].filename
    folder.mkdir(parents=True)
    with pytest.raises(CheckpointError, match=re.escape(f'usaid: {folder} is a folder, not the model\'s file; '
                                                        'expected the file USAID.pth there')):
        usaid.load_denoiser('usaid', device='cpu')
    assert folder.is_dir()  # someone's folder: left as it is


def test_a_module_in_training_mode_is_run_in_eval_mode_and_left_as_it_was(tmp_path):
    from usaid.denoiser import load_denoiser as load_plain
    plain = load_plain(str(CHECKPOINTS / 'USAID.pth'), param_key=None)
    image = kodak_crop(64)
    with torch.no_grad():
        expected = plain(torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None])
    expected = (expected[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    plain.train()
    buffers = {k: v.clone() for k, v in plain.state_dict().items()}
    found = usaid.denoise(image, plain, tile=0)
    assert np.array_equal(found, expected)  # eval mode: the running statistics, not the batch's
    assert plain.training and all(torch.equal(v, buffers[k]) for k, v in plain.state_dict().items())


def test_images_of_another_scale_than_their_dtype_warn(net):
    image = kodak_crop(32)
    with pytest.warns(UserWarning, match='float values up to [0-9]+; expected'):
        usaid.denoise(image.astype(np.float32), net)
    with pytest.warns(UserWarning, match='uint16 values up to .*, which fit 8 bits'):
        usaid.denoise(image.astype(np.uint16), net)
    noisy = np.clip(image / 255 + np.random.default_rng(0).normal(0, 50 / 255, image.shape), -0.5, 1.9)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # a noisy [0, 1] image, even at sigma 50, is no mistake
        usaid.denoise(noisy.astype(np.float32), net)


def test_paths_are_taken_as_strings_and_overlap_none_is_refused(net):
    assert isinstance(usaid.load_denoiser(CHECKPOINTS / 'USAID.pth', device='cpu'), torch.nn.Module)
    with pytest.raises(ValueError, match='overlap: found None; expected an integer'):
        usaid.denoise(kodak_crop(32), net, overlap=None)


def test_a_network_type_no_registry_holds_is_one_message(tmp_path):
    torch.save({'params': {}}, tmp_path / 'w.pth')
    with pytest.raises(ValueError, match="network_g {'type': 'NoSuchNet'} cannot be built .*NoSuchNet"):
        usaid.load_denoiser(str(tmp_path / 'w.pth'), network_opt={'type': 'NoSuchNet'}, device='cpu')


def test_a_safetensors_whose_metadata_asks_for_a_huge_network_is_refused_before_it_is_built(tmp_path):
    # a hostile file: small stored weights, metadata naming a network of terabytes (num_feat 300000); the shapes are
    # compared on the meta device, so nothing that size is ever allocated
    from safetensors.torch import save_file
    path = tmp_path / 'huge.safetensors'
    weights = USAID(num_feat=8, num_layers=3).state_dict()
    save_file({f'params.{k}': v.contiguous() for k, v in weights.items()}, str(path), metadata={
        'format': 'basicsr', 'param_keys': 'params',
        'network_g': json.dumps({'type': 'USAID', 'num_feat': 300000, 'num_layers': 3})})
    with pytest.raises(CheckpointError, match=r'huge.safetensors: does not fit the network USAID: .*dncnn.0.weight: '
                                              r'checkpoint \(8, 3, 3, 3\), network \(300000, 3, 3, 3\)'):
        usaid.load_denoiser(path)

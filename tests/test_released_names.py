"""The authors' released models by name: fetched into torch's hub cache once, SHA-256 checked, usable wherever
weights are taken. No test downloads: the cache is pre-seeded from ../shared, and a download is a local copy."""
import shutil
import urllib.error

import pytest
import torch

from tests.conftest import CHECKPOINTS, assert_one_message, cli, smooth_image, tiny_options
from tests.conftest import option_problems as problems
from usaid.checkpoint import canonical_state_dict
from usaid.errors import CheckpointError
from usaid.released import RELEASED, is_released_name, released_path

pytestmark = pytest.mark.skipif(not CHECKPOINTS.is_dir(), reason='needs ../shared/seed/checkpoints')


def local_download(monkeypatch, calls):
    """Downloads served from ../shared (the published bytes), counted."""
    def download(url, destination, progress=True):
        calls.append(url)
        shutil.copy(CHECKPOINTS / url.rsplit('/', 1)[1], destination)
    monkeypatch.setattr(torch.hub, 'download_url_to_file', download)


@pytest.mark.parametrize('name', sorted(RELEASED))
def test_a_name_is_downloaded_once_then_read_from_the_cache(hub, monkeypatch, name):
    calls = []
    local_download(monkeypatch, calls)
    path = released_path(name, progress=False)
    assert path == str(hub / RELEASED[name].filename) and calls == [RELEASED[name].url]
    assert released_path(name) == path and len(calls) == 1
    state = canonical_state_dict(path, allow_bare=True)
    assert len(state) == 18 * 5 + 2 and all(not key.startswith('module.') for key in state)


def test_a_wrong_or_truncated_cached_file_is_refused_and_removed(seeded, monkeypatch):
    path = seeded / 'USAID.pth'
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match='has SHA-256 .*not the published 1c8a625c.*it was removed'):
        released_path('usaid')
    assert not path.exists()
    local_download(monkeypatch, [])
    assert released_path('usaid') == str(path)  # the next use downloads it anew


def test_offline_the_message_names_the_url_and_the_file_to_place(hub, monkeypatch):
    def offline(url, destination, progress=True):
        raise urllib.error.URLError('no route to host')
    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)
    with pytest.raises(CheckpointError) as error:
        released_path('ssaid')
    assert f'could not download {RELEASED["ssaid"].url} (no route to host)' in str(error.value)
    assert f'place it at {hub / "SSAID.pth"}' in str(error.value)
    assert not hub.exists() or not any(hub.iterdir())  # no partial file left


def test_a_name_is_the_model_even_beside_a_file_of_that_name(tmp_path, monkeypatch):
    """A stray file called usaid must not replace usaid-denoise's default model: the file is ./usaid."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'ssaid').mkdir()
    (tmp_path / 'usaid').write_text('mine')
    assert is_released_name('usaid') and is_released_name('ssaid')
    assert not is_released_name('./usaid') and not is_released_name('USAID.pth') and not is_released_name('usaid ')


def test_usaid_denoise_needs_no_weights_argument(seeded, tmp_path):
    import cv2
    import numpy as np
    clean = smooth_image(np.random.default_rng(0), 64, 64)
    cv2.imwrite(str(tmp_path / 'photo.png'), clean)
    result = cli('usaid-denoise', tmp_path / 'photo.png', tmp_path / 'out.png', '--add-noise', 25, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = cv2.imread(str(tmp_path / 'out.png'))
    assert out.shape == clean.shape
    mse = np.mean((out.astype(float) - clean.astype(float)) ** 2)
    assert 10 * np.log10(255 ** 2 / mse) > 24  # the noisy input: about 20 dB


def test_an_option_file_takes_a_name_as_pretrain_network_g(seeded, image_folder):
    opt = tiny_options(image_folder)
    opt['network_g'] = {'type': 'USAID'}
    opt['path']['pretrain_network_g'] = 'usaid'
    assert problems(opt) == []
    opt['path']['pretrain_network_g'] = 'usaidd'
    [problem] = problems(opt)
    assert problem.startswith('path:pretrain_network_g: usaidd does not exist; expected ') and 'usaid, ssaid' in problem


def test_a_name_loads_into_the_model_as_the_converted_file(seeded, image_folder, tmp_path):
    from basicsr.models import build_model
    opt = tiny_options(image_folder)
    opt.update(network_g={'type': 'USAID'}, is_train=False, dist=False, rank=0, world_size=1, num_gpu=0)
    opt['path'].update(pretrain_network_g='cdncnn-b', param_key_g='params', visualization=str(tmp_path),
                       results_root=str(tmp_path), log=str(tmp_path))
    model = build_model(opt)
    expected = canonical_state_dict(str(CHECKPOINTS / 'DnCNN.pth'), allow_bare=True, net=model.net_g)
    assert all(torch.equal(value, expected[key]) for key, value in model.net_g.state_dict().items())


def test_a_tool_given_a_bad_cached_file_prints_one_message(seeded, tmp_path):
    import cv2
    import numpy as np
    cv2.imwrite(str(tmp_path / 'photo.png'), smooth_image(np.random.default_rng(0), 32, 32))
    (seeded / 'SSAID.pth').write_bytes(b'not a checkpoint')
    result = cli('usaid-denoise', tmp_path / 'photo.png', tmp_path / 'out.png', '-w', 'ssaid', cwd=tmp_path)
    assert_one_message(result, 'usaid-denoise', 'ssaid: ', 'not the published f9e6745d', 'it was removed')
    assert not (tmp_path / 'out.png').exists() and not (seeded / 'SSAID.pth').exists()


def test_a_download_that_stalls_times_out_with_the_message_and_the_timeout_is_restored(hub, monkeypatch):
    import socket

    from usaid.released import DOWNLOAD_TIMEOUT
    seen = []

    def stalled(url, destination, progress=True):
        seen.append(socket.getdefaulttimeout())
        raise TimeoutError('timed out')
    monkeypatch.setattr(torch.hub, 'download_url_to_file', stalled)
    before = socket.getdefaulttimeout()
    with pytest.raises(CheckpointError, match='could not download .*USAID.pth \\(timed out\\)'):
        released_path('usaid')
    assert seen == [DOWNLOAD_TIMEOUT] and socket.getdefaulttimeout() == before

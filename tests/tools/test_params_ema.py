"""The EMA weights (``params_ema``) are used wherever the docs say so (docs/tools.md): a checkpoint's ``params_ema``
if present, and an experiment folder's when its run kept an EMA (``train: ema_decay`` > 0), by usaid-denoise, the
Python API and usaid-compare. The reference for "the EMA network" is a checkpoint that holds only those weights."""
import cv2
import numpy as np
import pytest
import torch
import yaml

from tests.conftest import smooth_image
from usaid import api
from usaid.archs import USAID
from usaid.comparison import compare
from usaid.tools.denoise import main as denoise_main

TINY = {'type': 'USAID', 'num_feat': 8, 'num_layers': 3}


def weights(seed):
    torch.manual_seed(seed)
    net = USAID(num_feat=8, num_layers=3)
    with torch.no_grad():
        net.dncnn[-1].weight.mul_(20)  # a residual large enough that the two networks' 8-bit outputs differ
    return net.state_dict()


@pytest.fixture
def models(tmp_path):
    """An experiment folder whose checkpoint holds ``params`` (seed 0) and ``params_ema`` (seed 1), and one checkpoint
    with each alone, with an option file naming it."""
    plain, ema = weights(0), weights(1)
    experiment = tmp_path / 'experiments' / 'run'
    (experiment / 'models').mkdir(parents=True)
    with open(experiment / 'run.yml', 'w') as f:
        yaml.safe_dump({'name': 'run', 'network_g': TINY, 'train': {'ema_decay': 0.999}}, f)
    torch.save({'params': plain, 'params_ema': ema}, experiment / 'models' / 'net_g_latest.pth')
    files = {'experiment': str(experiment), 'both': str(experiment / 'models' / 'net_g_latest.pth')}
    for name, state in (('plain', plain), ('ema', ema)):
        torch.save({'params': state}, tmp_path / f'{name}.pth')
        with open(tmp_path / f'{name}.yml', 'w') as f:
            yaml.safe_dump({'network_g': TINY, 'path': {'pretrain_network_g': str(tmp_path / f'{name}.pth')}}, f)
        files[name] = str(tmp_path / f'{name}.yml')
    files['net'] = str(tmp_path / 'net.yml')
    with open(files['net'], 'w') as f:
        yaml.safe_dump({'network_g': TINY}, f)
    folder = tmp_path / 'photos'
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f'p{i}.png'), smooth_image(np.random.default_rng(i), 40, 48))
    files['photos'] = str(folder)
    return files


def test_usaid_denoise_and_the_api_use_params_ema(models, tmp_path):
    photo = models['photos'] + '/p0.png'

    def denoised(*weights_args):
        out = tmp_path / f'out{len(list(tmp_path.glob("out*.png")))}.png'
        denoise_main([photo, str(out), *weights_args])
        return cv2.imread(str(out))

    ema, plain = denoised('-w', models['ema']), denoised('-w', models['plain'])
    assert np.abs(ema.astype(int) - plain).max() > 10  # the two weight sets are told apart
    assert np.array_equal(denoised('-w', models['experiment']), ema)  # the run kept an EMA
    assert np.array_equal(denoised('-w', models['both'], '-opt', models['net']), ema)  # params_ema if present

    image = cv2.imread(photo)[..., ::-1].copy()
    from_api = api.denoise(image, api.load_denoiser(models['experiment'], device='cpu'))
    assert np.array_equal(from_api[..., ::-1], ema)


def test_an_experiment_folder_without_ema_uses_params(models, tmp_path):
    with open(models['experiment'] + '/run.yml', 'w') as f:
        yaml.safe_dump({'name': 'run', 'network_g': TINY, 'train': {'ema_decay': 0}}, f)
    denoise_main([models['photos'] + '/p0.png', str(tmp_path / 'a.png'), '-w', models['experiment']])
    denoise_main([models['photos'] + '/p0.png', str(tmp_path / 'b.png'), '-w', models['plain']])
    assert np.array_equal(cv2.imread(str(tmp_path / 'a.png')), cv2.imread(str(tmp_path / 'b.png')))


def test_usaid_compare_uses_an_experiments_params_ema(models, tmp_path):
    chosen = {name: models[name] for name in ('experiment', 'ema', 'plain')}
    rows, _ = compare(chosen, [models['photos']], [25], str(tmp_path / 'out'), niqe='off', lpips='off')
    values = {name: [(r['metric'], r['value']) for r in rows if r['model'] == name] for name in chosen}
    assert values['experiment'] == values['ema'] != values['plain']

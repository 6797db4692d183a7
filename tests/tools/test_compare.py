"""usaid-compare: BasicSR's test path per job, the CSV equal to usaid-test's own metrics, a cache that is reused."""
import csv

import cv2
import numpy as np
import pytest
import torch
from basicsr.archs import build_network

from tests.conftest import CHECKPOINTS, console_script, run, smooth_image, write_options
from usaid.tools.compare import compare
from usaid.tools.convert import convert

TINY_USAID = {'type': 'USAID', 'num_feat': 8, 'num_layers': 3}
# BasicSR's own RIDNet, on [0, 1] images around its global residual (its defaults expect a 0-255 range)
TINY_RIDNET = {'type': 'RIDNet', 'in_channels': 3, 'mid_channels': 16, 'out_channels': 3, 'num_block': 1,
               'img_range': 1.0, 'rgb_mean': [0.0, 0.0, 0.0]}


def model_file(tmp_path, name, network_opt, seed):
    """An option file (network_g + pretrain_network_g) and its random-weight checkpoint."""
    torch.manual_seed(seed)
    torch.save({'params': build_network(dict(network_opt)).state_dict()}, tmp_path / f'{name}.pth')
    return str(write_options({'network_g': network_opt, 'path': {'pretrain_network_g': str(tmp_path / f'{name}.pth')}},
                             tmp_path / f'{name}.yml'))


@pytest.fixture
def test_set(tmp_path):
    folder = tmp_path / 'photos'
    folder.mkdir()
    for i in range(2):  # 192 x 200: large enough for NIQE
        cv2.imwrite(str(folder / f'p{i}.png'), smooth_image(np.random.default_rng(i), 192, 200))
    return str(folder)


def read_rows(path):
    with open(path) as f:
        return [{**row, 'sigma': float(row['sigma']), 'value': float(row['value'])} for row in csv.DictReader(f)]


def test_table_csv_figures_and_equality_with_usaid_test(test_set, tmp_path):
    models = {'a': model_file(tmp_path, 'a', TINY_USAID, 0), 'b': model_file(tmp_path, 'b', TINY_USAID, 1),
              'ridnet': model_file(tmp_path, 'ridnet', TINY_RIDNET, 2)}
    out = tmp_path / 'out'
    rows, reused = compare(models, [test_set], [15, 50], str(out))
    assert reused == 0 and rows == read_rows(out / 'compare.csv')
    assert len(rows) == 3 * 2 * 3 and {r['metric'] for r in rows} == {'psnr', 'ssim', 'niqe'}

    # the same job through usaid-test: its per-image CSV averages to the compare CSV's value
    test_opt = {'name': 'b_test', 'model_type': 'USAIDModel', 'num_gpu': 0,
                'datasets': {'test_1': {'name': 'photos_sigma50', 'type': 'GaussianNoiseDataset',
                                        'dataroot_gt': test_set, 'sigma': 50}},
                'network_g': TINY_USAID, 'path': {'pretrain_network_g': str(tmp_path / 'b.pth')},
                'val': {'save_img': False, 'metrics': {
                    'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False},
                    'ssim': {'type': 'calculate_ssim', 'crop_border': 0, 'test_y_channel': False}}}}
    run([console_script('usaid-test'), '-opt', str(write_options(test_opt, tmp_path / 't.yml'))], cwd=tmp_path)
    with open(tmp_path / 'results' / 'b_test' / 'photos_sigma50.csv') as f:
        per_image = list(csv.DictReader(f))
    for metric in ('psnr', 'ssim'):
        expected = sum(float(r[metric]) for r in per_image) / len(per_image)
        found = [r['value'] for r in rows if (r['model'], r['sigma'], r['metric']) == ('b', 50, metric)]
        assert found == [pytest.approx(expected, rel=1e-12)]

    table = (out / 'compare.md').read_text().splitlines()
    assert table[0] == '| dataset | sigma | metric | a | b | ridnet |' and len(table) == 2 + 2 * 3
    for line in table[2:]:
        cells = line.strip('|').split('|')[3:]
        values = [float(c.strip().strip('*')) for c in cells]
        best = min(values) if '| NIQE |' in line else max(values)
        assert [c.strip().startswith('**') for c in cells] == [v == best for v in values]
    assert cv2.imread(str(out / 'compare_psnr.png')) is not None
    assert cv2.imread(str(out / 'compare_crops.png')).shape[1] == int(2.5 * (2 + 3) * 100)  # clean, noisy, 3 models


def test_results_are_reused_until_a_checkpoint_changes(test_set, tmp_path):
    models = {'a': model_file(tmp_path, 'a', TINY_USAID, 0), 'b': model_file(tmp_path, 'b', TINY_USAID, 1)}
    first, reused = compare(models, [test_set], [25], str(tmp_path / 'out'), niqe='off')
    assert reused == 0
    again, reused = compare(models, [test_set], [25], str(tmp_path / 'out'), niqe='off')
    assert reused == 2 and again == first
    model_file(tmp_path, 'b', TINY_USAID, 7)  # retrained: other weights under the same name
    changed, reused = compare(models, [test_set], [25], str(tmp_path / 'out'), niqe='off')
    assert reused == 1
    assert [r for r in changed if r['model'] == 'a'] == [r for r in first if r['model'] == 'a']
    assert [r for r in changed if r['model'] == 'b'] != [r for r in first if r['model'] == 'b']


@pytest.mark.skipif(not CHECKPOINTS.exists(), reason='released checkpoints not found')
def test_a_released_file_gives_the_results_of_its_converted_checkpoint(test_set, tmp_path):
    convert(str(CHECKPOINTS / 'USAID.pth'), str(tmp_path / 'converted.pth'))
    models = {'released': str(CHECKPOINTS / 'USAID.pth'), 'converted': str(tmp_path / 'converted.pth')}
    rows, _ = compare(models, [test_set], [25], str(tmp_path / 'out'), niqe='off')
    by_model = {(r['model'], r['metric']): r['value'] for r in rows}
    assert by_model[('released', 'psnr')] == by_model[('converted', 'psnr')] > 22  # the noisy input: ~20.2 dB

"""usaid-compare: BasicSR's test path per job, the CSV equal to usaid-test's own metrics, a cache that is reused."""
import csv

import cv2
import numpy as np
import pytest
import torch
from basicsr.archs import build_network

from tests.conftest import CHECKPOINTS, console_script, run, smooth_image, write_options
from usaid.errors import CheckpointError
from usaid.inference import InferenceNetwork
from usaid.tools import compare as compare_tool
from usaid.comparison import compare
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


def small_set(folder, count=2, extension='png'):
    """``count`` 40 x 48 images: small, for the tests that are about names and keys rather than metrics."""
    folder.mkdir(parents=True)
    for i in range(count):
        cv2.imwrite(str(folder / f'p{i}.{extension}'), smooth_image(np.random.default_rng(i), 40, 48))
    return str(folder)


def compare_main(argv):
    """usaid-compare in this process; returns its one-line message if it stops."""
    with pytest.raises(SystemExit) as stop:
        compare_tool.main(argv)
    message = str(stop.value.code)
    assert message.startswith('usaid-compare: ')
    return message


def test_two_models_or_two_datasets_of_one_name_are_refused_before_anything_runs(tmp_path):
    a, b = model_file(tmp_path, 'a', TINY_USAID, 0), model_file(tmp_path, 'b', TINY_USAID, 1)
    first, second = small_set(tmp_path / 'x' / 'photos'), small_set(tmp_path / 'y' / 'photos')
    out = tmp_path / 'out'
    assert compare_main(['-m', f'same={a}', '-m', f'same={b}', '-d', first, '-o', str(out)]) == (
        f"usaid-compare: --model same={a} and --model same={b}: two models named 'same', and the table tells models "
        'by their name; expected a distinct NAME for each model.')
    message = compare_main(['-m', f'a={a}', '-d', first, '-d', second, '-o', str(out)])
    assert message == (f"usaid-compare: --dataset {first} and --dataset {second}: both are named 'photos', and the "
                       'table and file names tell datasets by their folder name; expected distinct folder names (give '
                       'one through a link of another name).')
    assert not out.exists()


@pytest.mark.parametrize('name, problem', [('../escaped', 'it holds a path separator'),
                                           ('a/b', 'it holds a path separator'), ('..', 'it names a folder'),
                                           ('new\nline', 'it holds a control character'),
                                           ('x' * 101, 'it is longer than 100 bytes')])
def test_model_names_that_are_not_one_file_name_are_refused(tmp_path, name, problem):
    photos = small_set(tmp_path / 'sets' / 'photos')
    before = sorted(tmp_path.rglob('*'))
    message = compare_main(['-m', f'{name}={model_file(tmp_path, "a", TINY_USAID, 0)}', '-d', photos,
                            '-o', str(tmp_path / 'deep' / 'out'), '--niqe', 'off'])
    assert message.startswith(f'usaid-compare: --model NAME {name!r}: {problem}; it is used in file names, so '
                              'expected one file name')
    assert sorted(tmp_path.rglob('*')) == sorted(before + [tmp_path / 'a.pth', tmp_path / 'a.yml'])


@pytest.mark.parametrize('where', ['same', 'inside', 'containing'])
def test_an_output_folder_among_the_test_images_is_refused(tmp_path, where):
    photos = small_set(tmp_path / 'photos')
    out = {'same': tmp_path / 'photos', 'inside': tmp_path / 'photos' / 'out', 'containing': tmp_path}[where]
    with pytest.raises(ValueError, match=f'--output {out} is .*--dataset {photos}: the results would be written '
                                         'among the test images'):
        compare({'a': model_file(tmp_path, 'a', TINY_USAID, 0)}, [photos], [25], str(out))
    assert sorted(p.name for p in (tmp_path / 'photos').iterdir()) == ['p0.png', 'p1.png']


@pytest.mark.parametrize('sigmas, crop_sigma, expected', [
    ([25, 25.0], None, '--sigma 25 25: 25 given more than once; expected each noise level once.'),
    ([float('nan')], None, '--sigma nan: expected a noise level from 0 to 255'),
    ([-5], None, '--sigma -5: expected a noise level from 0 to 255'),
    ([15, 25], 50, '--crop-sigma 50: not one of the --sigma values (15, 25); expected one of them'),
])
def test_noise_levels_are_checked_before_anything_runs(tmp_path, sigmas, crop_sigma, expected):
    with pytest.raises(ValueError) as error:
        compare({'a': model_file(tmp_path, 'a', TINY_USAID, 0)}, [small_set(tmp_path / 'photos')], sigmas,
                str(tmp_path / 'out'), crop_sigma=crop_sigma)
    assert str(error.value).startswith(expected) and not (tmp_path / 'out').exists()


def test_the_cache_is_keyed_by_content_not_by_name_and_size(tmp_path):
    photos = small_set(tmp_path / 'photos', extension='bmp')  # uncompressed: other pixels, same byte size
    models = {'a': model_file(tmp_path, 'a', TINY_USAID, 0)}
    first, reused = compare(models, [photos], [25], str(tmp_path / 'out'), niqe='off')
    size = (tmp_path / 'photos' / 'p0.bmp').stat().st_size
    cv2.imwrite(str(tmp_path / 'photos' / 'p0.bmp'), smooth_image(np.random.default_rng(9), 40, 48))
    assert (tmp_path / 'photos' / 'p0.bmp').stat().st_size == size
    again, reused = compare(models, [photos], [25], str(tmp_path / 'out'), niqe='off')
    assert reused == 0 and again != first


def test_the_inference_switches_reach_the_network_and_the_cache_key(tmp_path, monkeypatch):
    from usaid.models import usaid_model

    made = []

    def recording(net, **options):
        made.append(options)
        return InferenceNetwork(net, **options)

    monkeypatch.setattr(usaid_model, 'InferenceNetwork', recording)
    argv = ['-m', f'a={model_file(tmp_path, "a", TINY_USAID, 0)}', '-d', small_set(tmp_path / 'photos'),
            '-o', str(tmp_path / 'out'), '--niqe', 'off']
    compare_tool.main(argv)
    default = {'fold_bn': True, 'conv_algo': 'auto', 'channels_last': True, 'precision': 'fp32'}
    assert made and all(options == default for options in made)
    made.clear()
    compare_tool.main(argv + ['--no-fold-bn', '--conv-algo', 'direct'])  # not the cached result of other switches
    assert made and all(options == {**default, 'fold_bn': False, 'conv_algo': 'direct'} for options in made)
    made.clear()
    compare_tool.main(argv + ['--no-fold-bn', '--conv-algo', 'direct'])
    assert not made  # the same switches again: from the cache


def test_metrics_an_image_is_too_small_for_are_left_out_with_a_note(tmp_path, capsys):
    folder = tmp_path / 'tiny'
    folder.mkdir()
    cv2.imwrite(str(folder / 'p0.png'), smooth_image(np.random.default_rng(0), 9, 30))  # under SSIM's 11x11 window
    rows, _ = compare({'a': model_file(tmp_path, 'a', TINY_USAID, 0)}, [str(folder)], [25], str(tmp_path / 'out'))
    assert {row['metric'] for row in rows} == {'psnr'}
    assert 'ssim left out: an image is too small for it' in capsys.readouterr().out


def test_the_baseline_comparison_is_scipys_on_the_per_image_values(tmp_path):
    from scipy import stats
    photos = small_set(tmp_path / 'photos', count=6)
    models = {name: model_file(tmp_path, name, TINY_USAID, seed) for seed, name in enumerate(('base', 'other'))}
    out = tmp_path / 'out'
    compare(models, [photos], [25], str(out), niqe='off', baseline='base')
    with open(out / 'compare_images.csv') as f:
        images = list(csv.DictReader(f))
    assert len(images) == 2 * 6 and {r['model'] for r in images} == {'base', 'other'}
    # one per-image value recomputed outside the pipeline: the image denoised by the network, PSNR against the clean
    first = next(r for r in images if r['model'] == 'other' and r['image'] == 'p0')
    clean = cv2.imread(str(tmp_path / 'photos' / 'p0.png'))
    rgb = clean[..., ::-1].astype(np.float32) / 255
    noisy = rgb + np.random.RandomState(0).normal(0, 25 / 255., rgb.shape)
    net = build_network(dict(TINY_USAID)).eval()
    net.load_state_dict(torch.load(tmp_path / 'other.pth', weights_only=True)['params'])
    with torch.no_grad():
        out_rgb = net(torch.from_numpy(noisy.astype(np.float32)).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    denoised = (np.clip(out_rgb, 0, 1) * 255).round()
    mse = np.mean((denoised - rgb * 255) ** 2)
    assert float(first['psnr']) == pytest.approx(10 * np.log10(255 ** 2 / mse), abs=1e-3)
    # the paired statistics: scipy on those values
    with open(out / 'compare_paired.csv') as f:
        paired = {r['metric']: r for r in csv.DictReader(f)}
    assert set(paired) == {'psnr', 'ssim'}
    for metric, row in paired.items():
        value = {m: {r['image']: float(r[metric]) for r in images if r['model'] == m} for m in models}
        names = sorted(value['base'])
        differences = np.array([value['other'][n] - value['base'][n] for n in names])
        interval = stats.bootstrap((differences,), np.mean, n_resamples=10000, method='BCa',
                                   rng=np.random.default_rng(0)).confidence_interval
        assert float(row['mean_difference']) == pytest.approx(differences.mean())
        assert (float(row['ci_low']), float(row['ci_high'])) == pytest.approx((interval.low, interval.high))
        assert float(row['wilcoxon_p']) == pytest.approx(stats.wilcoxon(differences).pvalue)
        assert row['baseline'] == 'base' and row['model'] == 'other' and int(row['images']) == 6
    assert 'Paired with base' in (out / 'compare.md').read_text()
    with pytest.raises(ValueError, match='--baseline nobody: not one of the models'):
        compare(models, [photos], [25], str(out), niqe='off', baseline='nobody')


def test_lpips_is_scored_per_image_lower_is_better_with_local_weights(tmp_path):
    pytest.importorskip('lpips')
    import torchvision

    from usaid.metrics.lpips_metric import calculate_lpips
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), tmp_path / 'alexnet.pth')
    photos = small_set(tmp_path / 'photos', count=3)
    models = {name: model_file(tmp_path, name, TINY_USAID, seed) for seed, name in enumerate(('base', 'other'))}
    out = tmp_path / 'out'
    rows, _ = compare(models, [photos], [25], str(out), niqe='off', baseline='base', lpips='on',
                      lpips_weights=str(tmp_path / 'alexnet.pth'))
    assert {r['metric'] for r in rows} == {'psnr', 'ssim', 'lpips'}
    with open(out / 'compare_images.csv') as f:
        images = list(csv.DictReader(f))
    # one image's value: the network's output recomputed here, scored by the metric on its own
    row = next(r for r in images if r['model'] == 'base' and r['image'] == 'p1')
    clean = cv2.imread(str(tmp_path / 'photos' / 'p1.png'))
    rgb = clean[..., ::-1].astype(np.float32) / 255
    noisy = rgb + np.random.RandomState(0).normal(0, 25 / 255., rgb.shape)
    net = build_network(dict(TINY_USAID)).eval()
    net.load_state_dict(torch.load(tmp_path / 'base.pth', weights_only=True)['params'])
    with torch.no_grad():
        out_rgb = net(torch.from_numpy(noisy.astype(np.float32)).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    denoised = (np.clip(out_rgb, 0, 1) * 255).round().astype(np.uint8)[..., ::-1]
    expected = calculate_lpips(denoised, clean, backbone_weights=str(tmp_path / 'alexnet.pth'))
    assert float(row['lpips']) == pytest.approx(expected, abs=1e-6)
    with open(out / 'compare_paired.csv') as f:
        assert 'lpips' in {r['metric'] for r in csv.DictReader(f)}
    with pytest.raises(CheckpointError, match='p0.png: cannot be loaded as a PyTorch checkpoint'):
        compare(models, [photos], [25], str(tmp_path / 'o2'), niqe='off', lpips='on',
                lpips_weights=str(tmp_path / 'photos' / 'p0.png'))

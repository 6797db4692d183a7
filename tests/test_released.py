"""The authors' released U-SAID, converted and tested through usaid-test, gives REFERENCE section 4's figure."""
import csv

import pytest
import yaml
from basicsr.utils.options import ordered_yaml

from tests.conftest import CHECKPOINTS, KODAK24, REPO, console_script, run

REFERENCE_KODAK24_SIGMA25 = {'DnCNN': 32.159, 'USAID': 32.063, 'SSAID': 31.958}


@pytest.mark.skipif(not ((CHECKPOINTS / 'USAID.pth').exists() and KODAK24.exists()),
                    reason='released checkpoints or Kodak24 not found')
def test_released_usaid_on_kodak24_sigma25_matches_the_reference(tmp_path):
    run([console_script('usaid-convert'), str(CHECKPOINTS / 'USAID.pth'),
         'experiments/pretrained_models/USAID.pth'], cwd=tmp_path)
    with open(REPO / 'options' / 'test_released.yml') as f:
        opt = yaml.load(f, Loader=ordered_yaml()[0])
    kodak25 = next(d for d in opt['datasets'].values() if d['name'] == 'Kodak24_sigma25')
    opt['datasets'] = {'test_1': dict(kodak25, dataroot_gt=str(KODAK24))}
    with open(tmp_path / 'released.yml', 'w') as f:
        yaml.dump(dict(opt), f, Dumper=ordered_yaml()[1])
    run([console_script('usaid-test'), '-opt', 'released.yml'], cwd=tmp_path)

    with open(tmp_path / 'results' / opt['name'] / 'Kodak24_sigma25.csv') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24 and {r['sigma'] for r in rows} == {'25.0'}
    mean_psnr = sum(float(r['psnr']) for r in rows) / 24
    assert mean_psnr == pytest.approx(REFERENCE_KODAK24_SIGMA25['USAID'], abs=0.01)
    log = next((tmp_path / 'results' / opt['name']).glob('test_*.log')).read_text()
    assert f'# psnr: {mean_psnr:.4f}' in log  # the CSV holds the values the pipeline averaged

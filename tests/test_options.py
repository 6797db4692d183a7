"""Every shipped option file parses with BasicSR's parse_options and builds its model and datasets."""
import sys

import pytest
import yaml
from basicsr.data import build_dataset
from basicsr.models import build_model
from basicsr.utils.options import ordered_yaml, parse_options

from tests.conftest import REPO
from usaid.tools.make_lmdb import make_lmdb

OPTION_FILES = sorted((REPO / 'options').glob('*.yml'))


def test_the_recipes_are_all_there():
    names = {p.name for p in OPTION_FILES}
    assert {'train_usaid_sigma15.yml', 'train_usaid_sigma25.yml', 'train_usaid_sigma50.yml', 'train_usaid_blind.yml',
            'train_dncnn_sigma25.yml', 'train_usaid_released.yml', 'test_usaid.yml', 'demo_usaid_cpu.yml'} <= names


@pytest.mark.parametrize('option_file', OPTION_FILES, ids=lambda p: p.name)
def test_parse_and_build_with_tiny_data(option_file, image_folder, tmp_path, monkeypatch):
    with open(option_file) as f:
        opt = yaml.load(f, Loader=ordered_yaml()[0])
    is_train = 'train' in opt
    for phase, dataset_opt in opt['datasets'].items():
        folder = image_folder / ('train' if phase == 'train' else 'val')
        dataset_opt.pop('meta_info_file', None)
        if dataset_opt['io_backend']['type'] == 'lmdb':
            lmdb_path = tmp_path / f'{phase}.lmdb'
            make_lmdb(str(folder), str(lmdb_path))
            dataset_opt['dataroot_gt'] = str(lmdb_path)
        else:
            dataset_opt['dataroot_gt'] = str(folder)
        dataset_opt['num_worker_per_gpu'] = 0
    opt['path']['pretrain_network_g'] = None
    usa = opt.get('train', {}).get('usa_opt')
    if usa:  # no download in tests: same network, random backbone
        usa['network']['pretrained'] = 'none'
    patched = tmp_path / option_file.name
    with open(patched, 'w') as f:
        yaml.dump(dict(opt), f, Dumper=ordered_yaml()[1])

    monkeypatch.setattr(sys, 'argv', ['usaid-train', '-opt', str(patched)])
    parsed, _ = parse_options(str(tmp_path), is_train=is_train)
    assert isinstance(parsed['network_g'], dict) and parsed['num_gpu'] == 0
    for dataset_opt in parsed['datasets'].values():
        sample = build_dataset(dataset_opt)[0]
        assert sample['lq'].shape[0] == dataset_opt.get('in_ch', 3)
    if is_train:
        lr = parsed['train']['optim_g']['lr']
        assert isinstance(lr, float), f'{option_file.name}: lr {lr!r} must be a float (YAML 1.1: write !!float)'
        parsed['path'].update(models=str(tmp_path), training_states=str(tmp_path))
    model = build_model(parsed)
    assert model.net_g is not None
    assert (getattr(model, 'cri_usa', None) is not None) == bool(usa)

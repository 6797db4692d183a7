"""Every shipped option file parses with BasicSR's parse_options and builds its model and datasets; usaid.options
names every bad option before anything runs."""
import subprocess
import sys

import pytest
import torch
import yaml
from basicsr.data import build_dataset
from basicsr.models import build_model
from basicsr.utils.options import ordered_yaml, parse_options

from tests.conftest import REPO, console_script, tiny_options, write_options
from usaid.errors import OptionError
from usaid.options import check_option_file, check_options
from usaid.tools.make_lmdb import make_lmdb

OPTION_FILES = sorted((REPO / 'options').glob('*.yml'))


def test_the_recipes_are_all_there():
    names = {p.name for p in OPTION_FILES}
    assert {'train_usaid_sigma15.yml', 'train_usaid_sigma25.yml', 'train_usaid_sigma50.yml', 'train_usaid_blind.yml',
            'train_dncnn_sigma25.yml', 'train_usaid_released.yml', 'test_usaid.yml', 'demo_usaid_cpu.yml'} <= names


@pytest.mark.parametrize('option_file', OPTION_FILES, ids=lambda p: p.name)
def test_parse_and_build_with_tiny_data(option_file, recipe_images, tmp_path, monkeypatch):
    with open(option_file) as f:
        opt = yaml.load(f, Loader=ordered_yaml()[0])
    is_train = 'train' in opt
    for phase, dataset_opt in opt['datasets'].items():
        folder = recipe_images / ('train' if phase == 'train' else 'val')
        dataset_opt.pop('meta_info_file', None)
        if dataset_opt['io_backend']['type'] == 'lmdb':
            lmdb_path = tmp_path / f'{phase}.lmdb'
            make_lmdb(str(folder), str(lmdb_path))
            dataset_opt['dataroot_gt'] = str(lmdb_path)
        else:
            dataset_opt['dataroot_gt'] = str(folder)
        dataset_opt.update(num_worker_per_gpu=0, persistent_workers=False)  # in this process
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


# ---- usaid.options: every bad option is named before anything runs --------------------------------------------------

def problems(opt, is_train=True):
    """The problems check_options reports for ``opt`` (an empty list if none)."""
    try:
        check_options(opt, 'opts.yml', is_train)
    except OptionError as error:
        assert str(error).startswith('opts.yml: ')
        return error.problems
    return []


def only_problem(opt, is_train=True):
    found = problems(opt, is_train)
    assert len(found) == 1, found
    return found[0]


def test_the_tiny_options_pass(image_folder):
    assert problems(tiny_options(image_folder)) == []


@pytest.mark.parametrize('where, wrong, key, closest', [
    (('network_g',), 'USAIDD', 'network_g:type', 'USAID'),
    (('train', 'pixel_opt'), 'BatchSSELos', 'train:pixel_opt:type', 'BatchSSELoss'),
    (('datasets', 'train'), 'GaussianNoiseDatset', 'datasets:train:type', 'GaussianNoiseDataset'),
    (('val', 'metrics', 'psnr'), 'calculate_psnrr', 'val:metrics:psnr:type', 'calculate_psnr'),
    (('train', 'usa_opt', 'network'), 'USANett', 'train:usa_opt:network:type', 'USANet'),
])
def test_unknown_type_names_list_the_closest_registered_names(image_folder, where, wrong, key, closest):
    opt = tiny_options(image_folder)
    target = opt
    for step in where:
        target = target[step]
    target['type'] = wrong
    problem = only_problem(opt)
    assert problem.startswith(f'{key}: {wrong!r} is not a registered') and f'(closest: {closest}' in problem


def test_unknown_model_type_lists_the_closest(image_folder):
    problem = only_problem({**tiny_options(image_folder), 'model_type': 'USAIDModl'})
    assert problem.startswith("model_type: 'USAIDModl' is not a registered model") and 'closest: USAIDModel' in problem


def test_misspelled_arguments_are_named_with_the_right_spelling(image_folder):
    opt = tiny_options(image_folder)
    opt['network_g']['num_feats'] = opt['network_g'].pop('num_feat')
    assert only_problem(opt).startswith('network_g:num_feats: is not an argument of USAID') and 'closest: num_feat' \
        in only_problem(opt)


def test_missing_and_nonexistent_data_paths_name_the_key_and_path(image_folder, tmp_path):
    opt = tiny_options(image_folder)
    del opt['datasets']['train']['dataroot_gt']
    assert only_problem(opt).startswith('datasets:train:dataroot_gt: missing')
    opt['datasets']['train']['dataroot_gt'] = str(tmp_path / 'nowhere')
    assert only_problem(opt) == (f'datasets:train:dataroot_gt: {tmp_path / "nowhere"} does not exist or is not a '
                                 'folder; expected a folder of images')
    opt = tiny_options(image_folder)
    opt['datasets']['val']['meta_info_file'] = str(tmp_path / 'val.txt')
    assert only_problem(opt).startswith(f'datasets:val:meta_info_file: {tmp_path / "val.txt"} does not exist')
    (tmp_path / 'val.txt').write_text('img0\nimg1\n')  # VOC-style names without extension
    problem = only_problem(opt)
    assert 'meta_info_file: 2 of the 2 images' in problem and "filename_tmpl '{}'" in problem
    opt['datasets']['val']['filename_tmpl'] = '{}.png'
    assert problems(opt) == []


def test_an_lmdb_that_is_missing_or_incomplete_is_named(image_folder, tmp_path):
    opt = tiny_options(image_folder, io_backend={'type': 'lmdb'}, dataroot_gt=str(tmp_path / 'train.lmdb'))
    assert 'datasets:train:dataroot_gt: ' in only_problem(opt) and 'does not exist' in only_problem(opt)
    (tmp_path / 'train.lmdb').mkdir()
    problem = only_problem(opt)
    assert f'{tmp_path / "train.lmdb" / "data.mdb"} does not exist; expected data.mdb and meta_info.txt' in problem
    opt['datasets']['train']['dataroot_gt'] = str(image_folder / 'train')
    assert "expected an LMDB folder whose name ends with '.lmdb'" in only_problem(opt)


def test_numbers_yaml_reads_as_strings_are_named_with_the_fix(image_folder, tmp_path):
    text = yaml.safe_dump(tiny_options(image_folder), sort_keys=False).replace('lr: 0.001', 'lr: 2e-4')
    (tmp_path / 'lr.yml').write_text(text)
    with pytest.raises(OptionError) as error:
        check_option_file(str(tmp_path / 'lr.yml'), is_train=True)
    assert error.value.problems == ["train:optim_g:lr: found the string '2e-4'; expected a number (YAML 1.1 reads an "
                                    'exponent as a number only after a decimal point and with a sign): write 2.0e-4 '
                                    'or !!float 2e-4']
    assert str(error.value).startswith(f'{tmp_path / "lr.yml"}: 1 problem')


@pytest.mark.parametrize('sigma_type, sigma', [('fixed', [5, 50]), ('uniform', 25), ('uniform', [50, 5]),
                                               ('choice', []), ('fixed', -1), ('normal', 25)])
def test_sigma_that_does_not_fit_sigma_type(image_folder, sigma_type, sigma):
    opt = tiny_options(image_folder, sigma_type=sigma_type, sigma=sigma)
    problem = only_problem(opt)
    assert problem.startswith(('datasets:train:sigma: found', 'datasets:train:sigma_type: found')) and 'expected' in \
        problem


def test_gt_size_larger_than_an_image_names_the_images(image_folder):
    problem = only_problem(tiny_options(image_folder, gt_size=60))  # the training images are 56x64
    assert problem.startswith('datasets:train:gt_size: 60 is larger than 4 of the 4 images') and '(56x64)' in problem


def test_more_gpus_than_the_machine_has(image_folder):
    available = torch.cuda.device_count()
    problem = only_problem({**tiny_options(image_folder), 'num_gpu': available + 1})
    assert problem.startswith(f'num_gpu: found {available + 1}, but this machine has {available} GPU')
    assert problems({**tiny_options(image_folder), 'num_gpu': 'auto'}) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without GPUs')
def test_cuda_prefetch_without_a_gpu(image_folder):
    problem = only_problem(tiny_options(image_folder, prefetch_mode='cuda', pin_memory=True))
    assert problem == 'datasets:train:prefetch_mode: found cuda, but this run has no GPU; expected ~ or cpu'


def test_validation_in_training_needs_save_img_and_a_timeout_must_fit_a_timedelta(image_folder):
    # BasicSR's training loop reads val:save_img at each validation, after the checkpoints of the run were written
    opt = tiny_options(image_folder)
    del opt['val']['save_img']
    assert only_problem(opt) == ("val:save_img: missing; expected true or false (BasicSR's training loop reads it at "
                                 'each validation)')
    opt = {**tiny_options(image_folder), 'dist_params': {'timeout': 10**14}}  # past datetime.timedelta's range
    assert only_problem(opt).startswith('dist_params:timeout: found 100000000000000; expected')


def test_persistent_workers_without_workers_are_named(image_folder):
    # torch's DataLoader raises for them in the middle of BasicSR's set-up (the recipes keep their workers alive)
    assert only_problem(tiny_options(image_folder, persistent_workers=True)) == (
        'datasets:train:persistent_workers: true, but this loader has no worker processes (num_worker_per_gpu: 0); '
        'expected persistent_workers: false, or num_worker_per_gpu of 1 or more')
    opt = tiny_options(image_folder)
    opt['datasets']['val']['persistent_workers'] = True
    assert only_problem(opt).startswith('datasets:val:persistent_workers: true, but this loader has no worker '
                                        'processes (BasicSR loads validation and test images in the main process)')
    assert problems(tiny_options(image_folder, persistent_workers=True, num_worker_per_gpu=1)) == []


def test_in_ch_that_does_not_match_the_network(image_folder):
    opt = tiny_options(image_folder, usa=False, in_ch=1)
    assert only_problem(opt) == ('datasets:train:in_ch: found 1, but network_g:num_in_ch is 3; expected the same '
                                 'number of channels')
    opt['network_g'].update(num_in_ch=1, num_out_ch=1)
    opt['datasets']['val']['in_ch'] = 1
    assert problems(opt) == []
    opt = tiny_options(image_folder, in_ch=1)
    opt['network_g'].update(num_in_ch=1, num_out_ch=1)
    opt['datasets']['val']['in_ch'] = 1
    expected = 'datasets:train:in_ch: found 1; expected 3: the USA loss (train:usa_opt) segments RGB images'
    assert expected in problems(opt)


def test_missing_sections_and_wrong_types_are_named(image_folder):
    opt = tiny_options(image_folder)
    opt['netwrok_g'] = opt.pop('network_g')
    opt['train']['total_iter'] = 'many'
    opt['logger']['print_freq'] = 0
    found = problems(opt)
    assert "network_g: missing; expected a mapping (is 'netwrok_g' a misspelling?)" in found
    assert "train:total_iter: found 'many' (a string); expected an integer" in found
    assert 'logger:print_freq: found 0; expected a number >= 1' in found
    assert len(found) == 3


def test_usaid_train_prints_one_message_and_writes_nothing(image_folder, tmp_path):
    opt = tiny_options(image_folder, name='typo')
    opt['train']['optim_g']['type'] = 'Adma'
    result = subprocess.run([console_script('usaid-train'), '-opt', str(write_options(opt, tmp_path / 't.yml'))],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    assert result.stderr.startswith(f'usaid-train: {tmp_path / "t.yml"}: 1 problem in the options')
    assert "train:optim_g:type: found 'Adma' (a string); expected an optimizer of torch.optim (closest: Adam" in \
        result.stderr
    assert not (tmp_path / 'experiments').exists() and not (tmp_path / 'tb_logger').exists()


def test_basicsr_pipelines_check_first_whatever_script_runs_them(image_folder, tmp_path, monkeypatch):
    import basicsr.test
    import basicsr.train
    opt = tiny_options(image_folder)
    opt['val']['metrics']['psnr'].pop('crop_border')
    monkeypatch.setattr(sys, 'argv', ['train.py', '-opt', str(write_options(opt, tmp_path / 'o.yml'))])
    for pipeline in (basicsr.train.train_pipeline, basicsr.test.test_pipeline):
        with pytest.raises(OptionError, match='val:metrics:psnr:crop_border: missing; expected a value: '
                                              'calculate_psnr requires it'):
            pipeline(str(tmp_path))
    assert not any((tmp_path / folder).exists() for folder in ('experiments', 'results', 'tb_logger'))

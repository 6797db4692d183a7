"""Tests written for mutants of usaid/options.py and usaid/option_rules.py that survived `make mutation`
(docs/testing.md#mutation-testing): numbers read as strings, a pretrained checkpoint that does not fit, a batch for
each GPU of a DataParallel run."""
import re

import pytest
import torch
import yaml

from tests.conftest import option_problems, tiny_options


@pytest.mark.parametrize('text', ['2E-4', '1e5', '5E3', '3e+2', '1.5e-3', '7e-05'])
def test_the_fix_offered_for_a_number_read_as_a_string_is_read_as_that_number(text):
    problems = [p for p in option_problems({'train': {'optim_g': {'type': 'Adam', 'lr': text}}})
                if p.startswith('train:optim_g:lr:')]
    assert len(problems) == 1, problems
    fix = re.search(r': write (\S+) or !!float (\S+)$', problems[0])
    assert fix and fix.group(2) == text, problems[0]
    assert yaml.safe_load(f'lr: {fix.group(1)}') == {'lr': float(text)}  # YAML 1.1 reads the fix as the number


def test_a_pretrained_checkpoint_is_checked_against_network_g_before_the_run(image_folder, tmp_path):
    from basicsr.archs import build_network
    opt = tiny_options(image_folder)  # network_g: USAID with num_feat 16, 5 layers
    narrow = build_network({**opt['network_g'], 'num_feat': 8})
    torch.save({'params': narrow.state_dict()}, tmp_path / 'narrow.pth')
    torch.save({'params': build_network(opt['network_g']).state_dict()}, tmp_path / 'fits.pth')
    opt['path']['pretrain_network_g'] = str(tmp_path / 'fits.pth')
    assert option_problems(opt) == []
    opt['path']['pretrain_network_g'] = str(tmp_path / 'narrow.pth')
    [problem] = option_problems(opt)
    assert problem.startswith(f'path:pretrain_network_g: {tmp_path / "narrow.pth"}: does not fit the network USAID')
    assert 'dncnn.0.weight' in problem and problem.endswith('(expected a checkpoint of network_g)')


@pytest.mark.parametrize('num_gpu', [2, 'auto'])
def test_one_process_on_several_gpus_needs_a_batch_for_each(image_folder, monkeypatch, num_gpu):
    """DataParallel: one process loads batch_size_per_gpu x num_gpu samples a step, and drops an incomplete batch."""
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)  # a machine with 2 GPUs, seen from the CPU
    opt = tiny_options(image_folder, batch_size_per_gpu=3)  # 4 training images: fewer than 3 x 2
    opt['num_gpu'] = num_gpu
    assert [p for p in option_problems(opt) if 'batch_size_per_gpu' in p] == [
        'datasets:train:batch_size_per_gpu: found 3, but 4 training image(s) x dataset_enlarge_ratio 1 make 4 '
        'sample(s) an epoch, fewer than one batch of 3 x 2 GPUs; expected batch_size_per_gpu at most 2, or '
        'dataset_enlarge_ratio at least 2 (the loader drops an incomplete batch: the run would train 0 iterations and '
        'save an untrained network)']
    opt = tiny_options(image_folder, batch_size_per_gpu=2)  # 4 images: one batch of 2 x 2
    opt['num_gpu'] = num_gpu
    assert [p for p in option_problems(opt) if 'batch_size_per_gpu' in p] == []


def options_for_testing(root):
    """The tiny options as a test option file: no train section, no training set."""
    opt = tiny_options(root)
    del opt['train'], opt['logger'], opt['datasets']['train'], opt['val']['val_freq']
    opt['datasets']['test'] = opt['datasets'].pop('val')
    return opt


def without(opt, *path):
    *parents, last = path
    for key in parents:
        opt = opt[key]
    del opt[last]


@pytest.mark.parametrize('is_train, change, expected', [
    (True, lambda o: without(o, 'train'), 'train: missing; expected a mapping'),
    (True, lambda o: o.update(train=None), 'train: found nothing (null); expected a mapping'),
    (True, lambda o: without(o, 'logger'), 'logger: missing; expected a mapping'),
    (False, lambda o: without(o, 'val'), 'val: missing; expected a mapping'),
    (True, lambda o: without(o, 'val', 'val_freq'), 'val:val_freq: missing; expected an integer'),
    (False, lambda o: without(o, 'val', 'save_img'),
     "val:save_img: missing; expected true or false (BasicSR's test pipeline requires it)"),
    (True, lambda o: without(o, 'val', 'save_img'),
     "val:save_img: missing; expected true or false (BasicSR's training loop reads it at each validation)"),
    (True, lambda o: o.update(datasets={}), 'datasets: is empty; expected train and val datasets'),
    (False, lambda o: o.update(datasets={}), 'datasets: is empty; expected test datasets'),
    (True, lambda o: without(o, 'datasets', 'train'), 'datasets:train: missing; expected the training dataset'),
], ids=['no train', 'null train', 'no logger', 'test without val', 'no val_freq', 'test without save_img',
        'training without save_img', 'no datasets', 'no test datasets', 'no training set'])
def test_each_section_a_pipeline_reads_is_named_when_missing(image_folder, is_train, change, expected):
    opt = tiny_options(image_folder) if is_train else options_for_testing(image_folder)
    assert option_problems(opt, is_train) == []
    change(opt)
    assert expected in option_problems(opt, is_train)


def test_validation_without_val_freq_needs_no_save_img_in_training(image_folder):
    opt = tiny_options(image_folder)
    without(opt, 'val', 'val_freq')
    without(opt, 'val', 'save_img')
    assert option_problems(opt) == ['val:val_freq: missing; expected an integer']


@pytest.mark.parametrize('pin_memory, expected', [
    (True, []),
    (False, ["datasets:train:pin_memory: found False (a boolean); expected true: BasicSR's CUDAPrefetcher needs "
             'pinned memory']),
    ('missing', ["datasets:train:pin_memory: missing; expected true: BasicSR's CUDAPrefetcher needs pinned memory"]),
])
def test_cuda_prefetch_on_a_gpu_needs_pinned_memory(image_folder, monkeypatch, pin_memory, expected):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)  # a machine with one GPU, seen from the CPU
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    opt = tiny_options(image_folder, prefetch_mode='cuda', pin_memory=pin_memory)
    if pin_memory == 'missing':
        del opt['datasets']['train']['pin_memory']
    opt['num_gpu'] = 1
    assert option_problems(opt) == expected


def test_the_training_sets_name_is_no_folder_and_may_be_any_other_sets(image_folder):
    opt = tiny_options(image_folder)
    opt['datasets']['train']['name'] = opt['datasets']['val']['name']
    assert option_problems(opt) == []
    opt['datasets']['train']['name'] = 'DIV2K/train'
    assert option_problems(opt) == []


def test_a_model_type_that_is_not_a_string_is_named(image_folder):
    opt = tiny_options(image_folder)
    opt['model_type'] = 5
    assert 'model_type: found 5 (an integer); expected a registered model, e.g. USAIDModel' in option_problems(opt)


def test_data_paths_that_look_like_numbers_are_paths(image_folder, tmp_path, monkeypatch):
    """A folder named 2e5 is a path, not YAML 1.1's string-for-a-number."""
    opt = tiny_options(image_folder)
    (image_folder / 'train').rename(tmp_path / '2e5')
    monkeypatch.chdir(tmp_path)
    opt['datasets']['train']['dataroot_gt'] = '2e5'
    assert option_problems(opt) == []


def test_the_usa_batch_is_checked_per_micro_batch(image_folder):
    """train:accumulate 2 splits a batch of 2 into micro-batches of 1: one 32x32 crop cannot be normalised."""
    opt = tiny_options(image_folder, batch_size_per_gpu=2, gt_size=32)
    assert option_problems(opt) == []
    opt['train']['accumulate'] = 2
    assert option_problems(opt) == [
        'datasets:train:batch_size_per_gpu: found 2 split into 2 micro-batches (train:accumulate) with gt_size 32, but '
        'the USA network (bn_mode: train, batch statistics) cannot segment 1 image(s) of 32x32: its deepest stage '
        '(stride 32) would hold one value per channel; expected a batch of at least 2, or images of at least 33x33 '
        '(or train:usa_opt:network:bn_mode: eval)']


@pytest.mark.parametrize('accumulate, problem', [
    (0, 'train:accumulate: found 0; expected a number >= 1'),
    (-1, 'train:accumulate: found -1; expected a number >= 1'),
    ('two', "train:accumulate: found 'two' (a string); expected an integer")])
def test_a_wrong_accumulate_is_named_once_and_breaks_no_other_rule(image_folder, accumulate, problem):
    opt = tiny_options(image_folder, batch_size_per_gpu=2, gt_size=32)
    opt['train']['accumulate'] = accumulate
    assert option_problems(opt) == [problem]


def test_a_one_pixel_crop_is_checked_against_batch_statistics(image_folder):
    opt = tiny_options(image_folder, batch_size_per_gpu=1, gt_size=1)
    assert option_problems(opt) == [
        'datasets:train:batch_size_per_gpu: found 1 with gt_size 1, but the USA network (bn_mode: train, batch '
        'statistics) cannot segment 1 image(s) of 1x1: its deepest stage (stride 32) would hold one value per channel; '
        'expected a batch of at least 2, or images of at least 33x33 (or train:usa_opt:network:bn_mode: eval)']


def test_a_bad_usa_network_option_is_named_alone(image_folder):
    """The batch check reads the USA network's options: with one of them wrong it is not run (nor does it fail)."""
    opt = tiny_options(image_folder, batch_size_per_gpu=1, gt_size=32)  # also a batch USANet cannot normalise
    opt['train']['usa_opt']['network']['backbone'] = 'resnet7'
    [problem] = option_problems(opt)
    assert problem.startswith("train:usa_opt:network:backbone: found 'resnet7'")

"""Fuzzing the shipped recipes: random deletions, misspellings and type changes of one or two keys must give either options
that BasicSR parses and builds (datasets, a sample, the model) or one OptionError, never an exception from inside
BasicSR or torch. Deterministic: a fixed seed and a bounded number of cases per recipe."""
import copy
import random
import sys

import pytest
import torch
import torchvision
import yaml
from basicsr.data import build_dataset
from basicsr.models import build_model
from basicsr.utils.options import ordered_yaml

import usaid.archs.usanet_arch
from tests.conftest import REPO
from usaid.errors import OptionError
from usaid.options import check_options
from usaid.tools.make_lmdb import make_lmdb

RECIPES = sorted((REPO / 'options').glob('*.yml'))
CASES_PER_RECIPE = 40
SEED = 2019
# values of another type than the one they replace
OTHER_TYPES = ['abc', '2e-4', 7, 0.5, True, None, [1, 2], {'a': 1}]


def key_paths(opt, prefix=()):
    """Every key path of a nested mapping, parents before children."""
    for key, value in opt.items():
        yield prefix + (key,)
        if isinstance(value, dict):
            yield from key_paths(value, prefix + (key,))


def same_type(a, b):
    kinds = ((bool,), (int, float), (str,), (list, tuple), (dict,), (type(None),))
    return any(isinstance(a, k) and isinstance(b, k) for k in kinds)


def mutate(opt, rng):
    """A copy of ``opt`` with one key deleted, misspelled or given a value of another type, and what was done."""
    opt = copy.deepcopy(opt)
    path = rng.choice(list(key_paths(opt)))
    parent = opt
    for key in path[:-1]:
        parent = parent[key]
    key, kind = path[-1], rng.choice(['delete', 'misspell', 'retype', 'retype'])
    if kind == 'delete':
        del parent[key]
    elif kind == 'misspell':
        parent[f'{key}'[:-1] + 'x'] = parent.pop(key)
    else:
        parent[key] = rng.choice([v for v in OTHER_TYPES if not same_type(v, parent[key])])
        kind += f' to {parent[key]!r}'
    return opt, f"{kind} {':'.join(map(str, path))}"


@pytest.fixture
def tiny_recipes(image_folder, tmp_path):
    """Each shipped recipe with its data on tiny images (LMDBs stay LMDBs) and a ResNet-18 USA network without
    downloaded weights; otherwise as shipped."""
    recipes = {}
    lmdbs = {}
    for recipe in RECIPES:
        with open(recipe) as f:
            opt = yaml.load(f, Loader=ordered_yaml()[0])
        for phase, dataset_opt in opt['datasets'].items():
            folder = image_folder / ('train' if phase == 'train' else 'val')
            dataset_opt.pop('meta_info_file', None)
            dataset_opt.pop('filename_tmpl', None)
            if dataset_opt['io_backend']['type'] == 'lmdb':
                if phase not in lmdbs:
                    lmdbs[phase] = str(tmp_path / f'{phase}.lmdb')
                    make_lmdb(str(folder), lmdbs[phase])
                dataset_opt['dataroot_gt'] = lmdbs[phase]
            else:
                dataset_opt['dataroot_gt'] = str(folder)
            if 'gt_size' in dataset_opt:
                dataset_opt['gt_size'] = 32
                dataset_opt['batch_size_per_gpu'] = 2
                dataset_opt['num_worker_per_gpu'] = 0
        opt['path']['pretrain_network_g'] = None
        opt['num_gpu'] = 0
        usa = opt.get('train', {}).get('usa_opt')
        if usa:
            usa['network'].update(backbone='resnet18', pretrained='none')
        recipes[recipe.name] = ('train' in opt, opt)
    return recipes


def build_everything(opt, is_train, option_file, tmp_path, monkeypatch):
    """What BasicSR's pipeline does up to the first step: parse, build each dataset and read a sample, build the
    model."""
    with open(option_file, 'w') as f:
        yaml.dump(opt, f, Dumper=ordered_yaml()[1])
    monkeypatch.setattr(sys, 'argv', ['usaid-train', '-opt', str(option_file)])
    import basicsr.train
    parsed, _ = basicsr.train.parse_options(str(tmp_path), is_train=is_train)  # the checked parse
    for dataset_opt in parsed['datasets'].values():
        build_dataset(dataset_opt)[0]
    parsed['path'].update(models=str(tmp_path), training_states=str(tmp_path), results_root=str(tmp_path),
                          visualization=str(tmp_path))
    build_model(parsed)


def test_random_mutations_of_the_recipes_parse_or_fail_clearly(tiny_recipes, tmp_path, monkeypatch):
    def random_imagenet_weights(backbone):  # no download in tests: torchvision's architecture, random weights
        return getattr(torchvision.models, backbone)(weights=None).state_dict()

    monkeypatch.setattr(usaid.archs.usanet_arch, 'load_imagenet_state_dict', random_imagenet_weights)
    torch.manual_seed(0)
    rng = random.Random(SEED)
    outcomes = {'accepted': 0, 'refused': 0}
    for name, (is_train, base) in tiny_recipes.items():
        # the tiny base itself must pass: otherwise every mutation would be refused for the same reason
        check_options(base, name, is_train)
        for case in range(CASES_PER_RECIPE):
            opt, change = mutate(base, rng)
            if rng.random() < 0.3:  # some cases get two changes
                opt, second = mutate(opt, rng)
                change += f', then {second}'
            try:
                check_options(opt, name, is_train)
            except OptionError as error:
                # one message: the file, then per problem the key, what was found and what was expected
                assert str(error).startswith(name) and error.problems, str(error)
                assert all(': ' in p and 'expected' in p for p in error.problems), str(error)
                outcomes['refused'] += 1
                continue
            try:
                build_everything(opt, is_train, tmp_path / f'{case}_{name}', tmp_path, monkeypatch)
            except Exception as error:  # noqa: BLE001  (this is what the test is looking for)
                pytest.fail(f'{name}, {change}: accepted by check_options, then {type(error).__name__}: {error}')
            outcomes['accepted'] += 1
    # both outcomes occur: the mutations are neither all harmless nor all fatal
    assert outcomes['accepted'] > 20 and outcomes['refused'] > 20, outcomes

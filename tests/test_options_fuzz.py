"""Fuzzing the shipped recipes: random deletions, misspellings and type changes of one or two keys must give either
options
that BasicSR parses and builds (datasets, a sample, the model) or one OptionError, never an exception from inside
BasicSR or torch. Random YAML tags and ``--force_yml`` strings likewise pass or give one OptionError, and an unsafe tag
or a ``--force_yml`` payload never runs. Deterministic: a fixed seed and a bounded number of cases per recipe."""
import copy
import random
import re
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
from usaid.options import check_options, load_option_file
from usaid.tools.make_lmdb import make_lmdb
from usaid.yaml_io import OptionDumper

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
def tiny_recipes(recipe_images, tmp_path):
    """Each shipped recipe with its data on tiny images (LMDBs stay LMDBs) and a ResNet-18 USA network without
    downloaded weights; otherwise as shipped."""
    recipes = {}
    lmdbs = {}
    for recipe in RECIPES:
        with open(recipe) as f:
            opt = yaml.load(f, Loader=ordered_yaml()[0])
        for phase, dataset_opt in opt['datasets'].items():
            folder = recipe_images / ('train' if phase == 'train' else 'val')
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
                dataset_opt.update(num_worker_per_gpu=0, persistent_workers=False)  # in this process
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


# ---- YAML tags and --force_yml strings ------------------------------------------------------------------------------

TAG_CASES = 40
FORCE_YML_CASES = 16
TINY_NETWORK = {'type': 'USAID', 'num_feat': 8, 'num_layers': 3}
PYTHON = 'tag:yaml.org,2002:python/'
# unsafe tags with what PyYAML's full loader would do with them: {m} is a marker file the call would make
UNSAFE_TAGS = [(PYTHON + 'object/apply:os.system', ['touch {m}']), (PYTHON + 'object/new:os.system', ['touch {m}']),
               (PYTHON + 'object/apply:subprocess.call', [['touch', '{m}']]),
               (PYTHON + 'object/apply:builtins.exec', ["open('{m}', 'w')"]), (PYTHON + 'name:os.system', ''),
               (PYTHON + 'module:os', ''), (PYTHON + 'object:argparse.Namespace', {'a': 1}), ('!shell', 'touch {m}')]
SAFE_TAGS = ['str', 'int', 'float', 'bool', 'null', 'timestamp', 'binary', 'set', 'omap', 'seq', 'map']
OWN_TAGS = [(bool, 'bool'), (int, 'int'), (float, 'float'), (type(None), 'null'), (list, 'seq'), (dict, 'map')]
FORCE_YML_VALUES = ['1', '0.5', 'abc', '[1, 2]', '~', 'none', 'true', '2e-4', '!!float 1e-3', '{a: 1}', '[1, 2', '',
                    '[__import__("os").system("touch {m}")]', '__import__("os").system("touch {m}")',
                    '!!python/object/apply:os.system ["touch {m}"]', '!!python/name:os.system']
# a problem line starts with the key it is about (or the --force_yml argument that names it)
KEYED = re.compile(r"^(--force_yml '.*'|\(top level\)|[^\s:][^\s]*): ")


class Tagged:
    """A value written with an explicit YAML tag."""

    def __init__(self, tag, value):
        self.tag, self.value = tag, value


class TaggingDumper(OptionDumper):
    """The options' dumper, writing :class:`Tagged` values with their tag."""


def represent_tagged(dumper, data):
    """A mapping, list or scalar node with the value's tag."""
    if isinstance(data.value, dict):
        return dumper.represent_mapping(data.tag, data.value)
    if isinstance(data.value, list):
        return dumper.represent_sequence(data.tag, data.value)
    return dumper.represent_scalar(data.tag, str(data.value))


TaggingDumper.add_representer(Tagged, represent_tagged)


def with_marker(value, marker):
    """``value`` with ``{m}`` in its strings replaced by the marker's path."""
    if isinstance(value, str):
        return value.replace('{m}', str(marker))
    if isinstance(value, list):
        return [with_marker(v, marker) for v in value]
    return value


def tag_mutation(opt, rng, marker):
    """A copy of ``opt`` with one value tagged, the key path, and whether the tag is unsafe."""
    opt = copy.deepcopy(opt)
    path = rng.choice(list(key_paths(opt)))
    parent = opt
    for key in path[:-1]:
        parent = parent[key]
    unsafe = rng.random() < 0.6  # unsafe tags are refused when read: cheap cases, so the larger share
    if unsafe:
        tag, payload = rng.choice(UNSAFE_TAGS)
        parent[path[-1]] = Tagged(tag, with_marker(payload, marker))
    else:  # half the time the tag of the value's own kind, which changes nothing
        value = parent[path[-1]]
        own = next((tag for kind, tag in OWN_TAGS if isinstance(value, kind)), 'str')
        parent[path[-1]] = Tagged('tag:yaml.org,2002:' + rng.choice([own, rng.choice(SAFE_TAGS)]), value)
    return opt, ':'.join(map(str, path)), unsafe


def force_yml_mutation(opt, rng, marker):
    """A random ``--force_yml`` entry for ``opt``: an existing key (or a broken one) and its value again (in YAML's
    flow style) or a random one."""
    path = rng.choice(list(key_paths(opt)))
    parent = opt
    for key in path:
        parent = parent[key]
    same = yaml.dump(parent, Dumper=OptionDumper, default_flow_style=True, width=1000).replace('\n...', '').strip()
    path = [str(key) for key in path]
    keys, value = ':'.join(path), with_marker(rng.choice(FORCE_YML_VALUES), marker)
    kind = rng.choice(['same'] * 4 + ['other', 'no =', 'missing key', 'empty key', 'injection', 'two ='])
    if kind == 'same':
        value = same
    elif kind == 'missing key':
        keys = ':'.join(path[:-1] + ['nosuch', path[-1]])
    elif kind == 'empty key':
        keys = rng.choice(['', f'{keys}:', f':{keys}'])
    elif kind == 'injection':
        keys = f'{keys}"][__import__("os").system("touch {marker}")]["x'
    return f'{keys}{"" if kind == "no =" else "="}{value}{"=x" if kind == "two =" else ""}'


def assert_clear(error, case):
    """One OptionError whose every line names a key and says what was expected."""
    assert error.problems, case
    for problem in error.problems:
        assert KEYED.match(problem) and 'expected' in problem, f'{case}: {problem}'


def test_random_tags_and_force_yml_strings_pass_or_fail_clearly_and_never_run(tiny_recipes, tmp_path, monkeypatch):
    import basicsr.train
    marker = tmp_path / 'pwned'
    rng = random.Random(SEED)
    # each recipe with a tiny network, whose check runs in milliseconds: tags and --force_yml do not depend on it
    recipes = {name: (is_train, dict(opt, network_g=dict(TINY_NETWORK))) for name, (is_train, opt) in
               tiny_recipes.items()}
    for name, (is_train, base) in recipes.items():
        check_options(base, name, is_train)
    outcomes = {'unsafe tag refused': 0, 'safe tag accepted': 0, 'safe tag refused': 0, 'force_yml accepted': 0,
                'force_yml refused': 0}
    for case in range(TAG_CASES):
        name = rng.choice(sorted(recipes))
        is_train, base = recipes[name]
        opt, key, unsafe = tag_mutation(base, rng, marker)
        option_file = tmp_path / f'tag{case}_{name}'
        option_file.write_text(yaml.dump(opt, Dumper=TaggingDumper))
        try:
            check_options(load_option_file(str(option_file)), name, is_train)
        except OptionError as error:
            assert_clear(error, f'{name}: tag at {key}')
            if unsafe:
                assert len(error.problems) == 1 and error.problems[0].startswith(f'{key}: the tag '), error
            outcomes['unsafe tag refused' if unsafe else 'safe tag refused'] += 1
        else:
            assert not unsafe, f'{name}: an unsafe tag at {key} was accepted'
            outcomes['safe tag accepted'] += 1
        assert not marker.exists(), f'{name}: the tag at {key} ran'
    for case in range(FORCE_YML_CASES):
        name = rng.choice(sorted(recipes))
        is_train, base = recipes[name]
        option_file = tmp_path / f'force{case}_{name}'
        option_file.write_text(yaml.dump(base, Dumper=OptionDumper))
        entry = force_yml_mutation(base, rng, marker)
        monkeypatch.setattr(sys, 'argv', ['train.py', '-opt', str(option_file), '--force_yml', entry])
        try:
            basicsr.train.parse_options(str(tmp_path), is_train=is_train)  # the checked parse, as the pipelines
        except OptionError as error:
            assert_clear(error, f'{name}: --force_yml {entry!r}')
            outcomes['force_yml refused'] += 1
        else:
            outcomes['force_yml accepted'] += 1
        assert not marker.exists(), f'{name}: --force_yml {entry!r} ran'
    assert all(count >= 2 for count in outcomes.values()), outcomes

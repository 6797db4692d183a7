"""No option file or command line runs code (usaid.yaml_io, for every entry point), a key is given once, --force_yml
garbage is one message, names stay one folder name, and a training set fills at least one batch."""
import sys

import cv2
import numpy as np
import pytest
import torch
import yaml

from tests.conftest import assert_one_message, cli, smooth_image, tiny_options, write_options
from tests.conftest import option_problems as problems
from usaid import yaml_io
from usaid.errors import OptionError
from usaid.options import check_options, load_option_file

# Tags PyYAML's full loader (BasicSR's) turns into calls or Python objects; {m} is a marker file the call would make
UNSAFE_TAGS = {
    'object/apply': ('!!python/object/apply:os.system', '!!python/object/apply:os.system ["touch {m}"]'),
    'object/new': ('!!python/object/new:os.system', '!!python/object/new:os.system ["touch {m}"]'),
    'subprocess': ('!!python/object/apply:subprocess.call', '!!python/object/apply:subprocess.call [[touch, "{m}"]]'),
    'exec': ('!!python/object/apply:builtins.exec', '!!python/object/apply:builtins.exec ["open(\'{m}\', \'w\')"]'),
    'name': ('!!python/name:os.system', '!!python/name:os.system'),
    'module': ('!!python/module:os', '!!python/module:os'),
    'object': ('!!python/object:argparse.Namespace', '!!python/object:argparse.Namespace {{a: 1}}'),
    'local tag': ('!shell', '!shell "touch {m}"'),
}


def options_text(image_folder, **replace):
    """The tiny options as YAML text, with the value of each top-level key in ``replace`` written verbatim."""
    text = yaml.safe_dump(tiny_options(image_folder), sort_keys=False)
    for key, raw in replace.items():
        line = next(line for line in text.splitlines() if line.startswith(f'{key}:'))
        text = text.replace(line, f'{key}: {raw}', 1)
    return text


# ---- option files are read with a safe loader -----------------------------------------------------------------------

@pytest.mark.parametrize('kind', UNSAFE_TAGS)
def test_unsafe_tags_never_run_and_are_named_with_key_and_line(image_folder, tmp_path, kind):
    tag, payload = UNSAFE_TAGS[kind]
    marker = tmp_path / 'pwned'
    option_file = tmp_path / 'bad.yml'
    option_file.write_text(options_text(image_folder, name=payload.format(m=marker)))
    with pytest.raises(OptionError) as error:
        load_option_file(str(option_file))
    assert error.value.problems == [f'name: the tag {tag} on line 1 is not allowed; expected plain YAML values (option '
                                    'files are read with a safe loader: no tag may make a Python object or run code)']
    assert str(error.value).startswith(f'{option_file}: 1 problem')
    # what BasicSR's parse_options does, with ordered_yaml looked up at call time, and parse_options itself
    from basicsr.utils import options as basicsr_options
    with open(option_file) as f, pytest.raises(OptionError, match=f'name: the tag {tag} on line 1'):
        yaml.load(f, Loader=basicsr_options.ordered_yaml()[0])
    sys_argv = sys.argv
    sys.argv = ['train.py', '-opt', str(option_file)]
    try:
        with pytest.raises(OptionError, match=f'the tag {tag}'):
            basicsr_options.parse_options(str(tmp_path), is_train=True)
    finally:
        sys.argv = sys_argv
    assert not marker.exists()


def test_unsafe_tags_deep_inside_are_named_by_their_key_path(image_folder, tmp_path):
    marker = tmp_path / 'pwned'
    payload = f'!!python/object/apply:os.system ["touch {marker}"]'
    text = options_text(image_folder).replace('    sigma: 25', f'    sigma: [25, {payload}]')
    (tmp_path / 'bad.yml').write_text(text)
    with pytest.raises(OptionError, match=r'datasets:val:sigma\[1\]: the tag !!python/object/apply:os.system on '
                                          r'line 29 is not allowed'):
        load_option_file(str(tmp_path / 'bad.yml'))
    assert not marker.exists()


def test_usaid_train_and_usaid_test_refuse_unsafe_tags_and_run_nothing(image_folder, tmp_path):
    marker = tmp_path / 'pwned'
    for tool, kind in (('usaid-train', 'object/apply'), ('usaid-test', 'object/new')):
        tag, payload = UNSAFE_TAGS[kind]
        option_file = tmp_path / f'{tool}.yml'
        option_file.write_text(options_text(image_folder, name=payload.format(m=marker)))
        result = cli(tool, '-opt', option_file, cwd=tmp_path)
        assert_one_message(result, tool, f'{option_file}: 1 problem', f'name: the tag {tag} on line 1 is not allowed')
        assert not marker.exists()
    assert not any((tmp_path / folder).exists() for folder in ('experiments', 'results', 'tb_logger'))


def test_the_tools_refuse_unsafe_option_files_and_run_nothing(image_folder, tmp_path):
    marker = tmp_path / 'pwned'
    payload = UNSAFE_TAGS['object/apply'][1].format(m=marker)
    option_file = tmp_path / 'bad.yml'
    option_file.write_text(f'network_g: {payload}\n')
    experiment = tmp_path / 'experiments' / 'other'  # usaid-compare reads an experiment folder's option file
    (experiment / 'models').mkdir(parents=True)
    (experiment / 'models' / 'net_g_latest.pth').write_bytes(b'')
    (experiment / 'other.yml').write_text(options_text(image_folder, name=payload.format(m=marker)))
    torch.save({'params': {}}, tmp_path / 'w.pth')
    image = tmp_path / 'val' / 'img0.png'
    runs = {
        'usaid-denoise': (image, tmp_path / 'out.png', '-w', tmp_path / 'w.pth', '-opt', option_file),
        'usaid-visualize': (image, '-w', tmp_path / 'w.pth', '-opt', option_file, '-o', tmp_path / 'v.png'),
        'usaid-compare': ('-m', f'a={experiment}', '-d', tmp_path / 'val', '-o', tmp_path / 'compare'),
        'usaid-segeval': ('--images', tmp_path / 'val', '--labels', tmp_path / 'val', '-w', f'a={option_file}',
                          '-o', tmp_path / 'segeval'),
    }
    for tool, args in runs.items():
        assert_one_message(cli(tool, *args, cwd=tmp_path), tool, 'the tag !!python/object/apply:os.system on line 1 '
                                                                 'is not allowed')
        assert not marker.exists()
    assert not any((tmp_path / name).exists() for name in ('out.png', 'v.png', 'compare/compare.md', 'segeval'))


def test_a_key_given_twice_is_named_with_both_lines(image_folder, tmp_path):
    text = options_text(image_folder)
    (tmp_path / 'top.yml').write_text(text + 'name: other\n')
    with pytest.raises(OptionError) as error:
        load_option_file(str(tmp_path / 'top.yml'))
    last = len(text.splitlines()) + 1
    assert error.value.problems == [f'name: given twice, on lines 1 and {last}; expected each key once (YAML would '
                                    'keep the last one without a word)']
    (tmp_path / 'nested.yml').write_text(text.replace('    sigma: 25\n', '    sigma: 25\n    sigma: 50\n'))
    with pytest.raises(OptionError, match='datasets:val:sigma: given twice, on lines 29 and 30'):
        load_option_file(str(tmp_path / 'nested.yml'))
    (tmp_path / 'flow.yml').write_text(text.replace('  num_layers: 5', '  num_layers: 5\n  x: {a: 1, a: 2}'))
    with pytest.raises(OptionError, match='network_g:x:a: given twice, on lines 34 and 34'):
        load_option_file(str(tmp_path / 'flow.yml'))
    result = cli('usaid-train', '-opt', tmp_path / 'nested.yml', cwd=tmp_path)
    assert_one_message(result, 'usaid-train', 'datasets:val:sigma: given twice, on lines 29 and 30')
    assert not (tmp_path / 'experiments').exists()


def test_merge_keys_and_safe_tags_still_load_in_order(tmp_path):
    (tmp_path / 'o.yml').write_text('base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  y: 3\nlr: !!float 2e-4\nl: [1, 2]\n')
    opt = load_option_file(str(tmp_path / 'o.yml'))
    assert list(opt) == ['base', 'd', 'lr', 'l'] and dict(opt['d']) == {'x': 1, 'y': 3} and opt['lr'] == 2e-4


# ---- --force_yml: YAML values, never code; garbage is one message ---------------------------------------------------

def parse(option_file, *force_yml, root):
    """BasicSR's parse_options (as every pipeline calls it) on ``option_file`` with ``--force_yml`` entries."""
    from basicsr.utils import options as basicsr_options
    sys_argv = sys.argv
    sys.argv = ['train.py', '-opt', str(option_file), '--force_yml', *force_yml]
    try:
        return basicsr_options.parse_options(str(root), is_train=True)[0]
    finally:
        sys.argv = sys_argv


def test_force_yml_values_are_read_as_yaml_never_evaluated(image_folder, tmp_path):
    option_file = write_options(tiny_options(image_folder), tmp_path / 'o.yml')
    opt = parse(option_file, 'train:scheduler:milestones=[1, 3]', 'train:ema_decay=0.5', 'val:save_img=true',
                'path:pretrain_network_g=~', 'logger:wandb:project=none', 'datasets:val:sigma=!!int 15', root=tmp_path)
    assert opt['train']['scheduler']['milestones'] == [1, 3] and opt['train']['ema_decay'] == 0.5
    assert opt['val']['save_img'] is True and opt['path']['pretrain_network_g'] is None
    assert opt['logger']['wandb']['project'] is None and opt['datasets']['val']['sigma'] == 15
    marker = tmp_path / 'pwned'
    with pytest.raises(OptionError) as error:  # BasicSR 1.4.2 evals this list: the command would run
        parse(option_file, f'train:scheduler:milestones=[__import__("os").system("touch {marker}")]', root=tmp_path)
    found = repr([f'__import__("os").system("touch {marker}")'])
    assert error.value.problems == [f'train:scheduler:milestones: found {found} (a list); expected a list of '
                                    'iterations']
    assert not marker.exists()


def test_force_yml_garbage_is_one_message_naming_each_argument(image_folder, tmp_path):
    option_file = write_options(tiny_options(image_folder), tmp_path / 'o.yml')
    marker = tmp_path / 'pwned'
    entries = {
        'nosuch:key=1': "the top level of the option file has no key 'nosuch'; expected a key the option file has",
        'train:nosuch:key=1': "train has no key 'nosuch'; expected a key the option file has",
        '=5': 'an empty key; expected KEY=VALUE',
        'train:ema_decay': "no '='; expected KEY=VALUE with one =",
        'name=a=b': "more than one '='; expected KEY=VALUE with one =",
        'name:x=1': 'name is not a mapping; expected the key of a mapping',
        'train::ema_decay=1': 'an empty key; expected KEY=VALUE',
        'name=': 'no value; expected KEY=VALUE (write ~ for null)',
        f'x"][__import__("os").system("touch {marker}")]["y=1':
            'a key holds a quote, a backslash or a line break; expected the keys of the option file',
        f'name=!!python/object/apply:os.system ["touch {marker}"]':
            'in the value: the tag !!python/object/apply:os.system on line 1 is not allowed; expected plain YAML '
            'values',
        'train:scheduler:milestones=[1, 2': 'in the value: is not valid YAML',
    }
    with pytest.raises(OptionError) as error:
        parse(option_file, *entries, root=tmp_path)
    assert str(error.value).startswith(f'{option_file}: {len(entries)} problems')
    for (entry, text), problem in zip(entries.items(), error.value.problems):
        assert problem.startswith(f'--force_yml {entry!r}: {text}'), problem
    assert not marker.exists()
    result = cli('usaid-train', '-opt', option_file, '--force_yml', 'nosuch:key=1', cwd=tmp_path)
    assert_one_message(result, 'usaid-train', "--force_yml 'nosuch:key=1': the top level of the option file has no "
                                              "key 'nosuch'")
    assert not (tmp_path / 'experiments').exists()


# ---- names are one folder name; results are kept by dataset name ----------------------------------------------------



@pytest.mark.parametrize('name', ['../data', '/tmp/abs', 'a/b', 'a\\b', '.hidden', '..', '.'])
def test_an_experiment_name_is_one_folder_name(image_folder, name):
    assert problems(tiny_options(image_folder, name=name)) == [
        f"name: found {name!r}; expected one folder name, without /, \\, .. or control characters and not "
        "starting with '.': it names experiments/<name>, results/<name> and tb_logger/<name>"]


def test_a_test_set_name_is_one_folder_name_and_its_own(image_folder):
    opt = tiny_options(image_folder)
    opt['datasets']['val']['name'] = '../../x'
    assert problems(opt) == ["datasets:val:name: found '../../x'; expected one folder name, without /, \\, .. or "
                             "control characters and not starting with '.': it names visualization/<name> and "
                             "<name>.csv in the results"]
    opt = tiny_options(image_folder)
    opt['datasets']['val_2'] = dict(opt['datasets']['val'], sigma=50)
    assert problems(opt) == ["datasets:val_2:name: found 'tiny_val', the name of datasets:val too; expected a name of "
                             "its own: each dataset's images, CSV and best values are kept by name, so one would "
                             'overwrite the other']
    test_opt = {k: v for k, v in opt.items() if k not in ('train', 'logger')}
    test_opt['datasets'] = {'test_1': opt['datasets']['val'], 'test_2': opt['datasets']['val_2']}
    test_opt['val'] = dict(opt['val'], save_img=False)
    del test_opt['val']['val_freq']
    assert problems(test_opt, is_train=False) == [
        "datasets:test_2:name: found 'tiny_val', the name of datasets:test_1 too; expected a name of its own: each "
        "dataset's images, CSV and best values are kept by name, so one would overwrite the other"]


def test_a_name_that_leaves_experiments_never_renames_a_user_folder(image_folder, tmp_path):
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / 'mine.txt').write_text('precious')
    for name in ('../data', str(tmp_path / 'data')):
        option_file = write_options(tiny_options(image_folder, name=name), tmp_path / 'o.yml')
        result = cli('usaid-train', '-opt', option_file, cwd=tmp_path)
        assert_one_message(result, 'usaid-train', f'name: found {name!r}; expected one folder name')
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('data')] == ['data']
    assert (tmp_path / 'data' / 'mine.txt').read_text() == 'precious'


# ---- a training set smaller than one batch ---------------------------------------------------------------------------

def test_a_training_set_smaller_than_one_batch_is_refused_with_the_numbers(image_folder, tmp_path, monkeypatch):
    opt = tiny_options(image_folder, batch_size_per_gpu=8)  # 4 training images
    assert problems(opt) == [
        'datasets:train:batch_size_per_gpu: found 8, but 4 training image(s) x dataset_enlarge_ratio 1 make 4 '
        'sample(s) an epoch, fewer than one batch of 8; expected batch_size_per_gpu at most 4, or '
        'dataset_enlarge_ratio at least 2 (the loader drops an incomplete batch: the run would train 0 iterations and '
        'save an untrained network)']
    assert problems(tiny_options(image_folder, batch_size_per_gpu=8, dataset_enlarge_ratio=2)) == []
    (image_folder / 'one').mkdir()
    cv2.imwrite(str(image_folder / 'one' / 'img.png'), smooth_image(np.random.default_rng(0), 40, 40))
    opt = tiny_options(image_folder, batch_size_per_gpu=2, dataroot_gt=str(image_folder / 'one'))
    assert problems(opt) == [
        'datasets:train:batch_size_per_gpu: found 2, but 1 training image(s) x dataset_enlarge_ratio 1 make 1 '
        'sample(s) an epoch, fewer than one batch of 2; expected batch_size_per_gpu at most 1, or '
        'dataset_enlarge_ratio at least 2 (the loader drops an incomplete batch: the run would train 0 iterations and '
        'save an untrained network)']
    monkeypatch.setenv('WORLD_SIZE', '2')  # torchrun: the sampler splits the 4 images between 2 processes
    assert 'split among 2 processes make 2 sample(s) an epoch, fewer than one batch of 3' in \
        problems(tiny_options(image_folder, batch_size_per_gpu=3))[0]
    monkeypatch.delenv('WORLD_SIZE')
    result = cli('usaid-train', '-opt', write_options(opt, tmp_path / 'o.yml'), cwd=tmp_path)
    assert_one_message(result, 'usaid-train', 'datasets:train:batch_size_per_gpu: found 2, but 1 training image(s)')
    assert not (tmp_path / 'experiments').exists()


def _alias_bomb():
    lines = ['a0: &a0 [x, x, x, x, x, x, x, x, x, x]']
    lines += [f'a{i}: &a{i} [{", ".join([f"*a{i - 1}"] * 10)}]' for i in range(1, 9)]
    return '\n'.join(lines) + '\nname: bomb\n'


@pytest.mark.parametrize('text, message', [
    ('1: x\nname: n\n', "the key 1 on line 1 is int; expected a string"),
    ('~: x\nname: n\n', 'the key None on line 1 is NoneType; expected a string'),
    (_alias_bomb(), 'holds more than 100,000 values once its aliases (*name) are expanded'),
    ('deep: ' + '[' * 200 + ']' * 200 + '\n', 'is nested more than 100 levels deep'),
    ('deep: ' + '[' * 5000 + ']' * 5000 + '\n', 'is nested'),
])
def test_option_files_that_would_crash_or_hang_a_pipeline_are_refused_when_read(tmp_path, text, message):
    path = tmp_path / 'o.yml'
    path.write_text(text)
    with pytest.raises(OptionError) as error:
        load_option_file(str(path))
    assert message in str(error.value) and str(path) in str(error.value)


def test_an_option_file_that_is_not_utf8_is_refused_with_its_name(tmp_path):
    path = tmp_path / 'utf16.yml'
    path.write_text('name: x\n', encoding='utf-16')
    with pytest.raises(OptionError, match='is not UTF-8 text'):
        load_option_file(str(path))


@pytest.mark.parametrize('name, problem', [('a\nb', 'control characters'), ('x' * 201, 'a name of 201 bytes')])
def test_experiment_names_with_control_characters_or_too_long_are_refused(image_folder, name, problem):
    with pytest.raises(OptionError, match=problem):
        check_options(tiny_options(image_folder, name=name), 'n.yml', is_train=True)


@pytest.mark.parametrize('sigma', [float('inf'), 256, -1])
def test_noise_levels_outside_0_255_are_refused(sigma):
    from usaid.arguments import check_sigma as check_argument
    from usaid.data.gaussian_noise_dataset import check_sigma
    with pytest.raises(ValueError, match='from 0 to 255'):
        check_sigma('fixed', sigma)
    with pytest.raises(ValueError, match='from 0 to 255'):
        check_argument(sigma)


@pytest.mark.parametrize('text, read_as', [('total_iter: 1:30', 'base 60 number 90'),
                                           ('total_iter: 010', 'octal number 8')])
def test_integers_yaml_1_1_reads_in_another_base_are_refused(text, read_as):
    with pytest.raises(OptionError) as error:
        yaml_io.load(f'train:\n  {text}\n')
    assert error.value.problems == [f'train:total_iter: {text.split(": ")[1]} on line 2 is read by YAML 1.1 as the '
                                    f'{read_as}; expected a decimal number without leading zeros (or quote it for a '
                                    'string)']
    assert yaml_io.load('a: 0\nb: 10\nc: 0x1F\nd: "010"\n') == {'a': 0, 'b': 10, 'c': 31, 'd': '010'}

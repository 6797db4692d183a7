"""The option check names the full key path (BasicSR's ``--force_yml`` spelling) of every kind of problem, at every
depth; ``--force_yml`` values are checked like the file's own; an option file that is missing, not YAML or not a
mapping is one clear error naming the file. Expected messages are written from docs/errors.md."""
import sys

import pytest
import yaml

from tests.conftest import tiny_options, write_options
from usaid.errors import OptionError
from usaid.options import check_option_file, check_options


def problems_of(opt):
    with pytest.raises(OptionError) as error:
        check_options(opt, 'opts.yml', is_train=True)
    assert str(error.value).startswith('opts.yml: ')
    return error.value.problems


def at(opt, path):
    """The mapping that holds the last key of ``path`` (``a:b:c``) and that key."""
    *parents, last = path.split(':')
    for key in parents:
        opt = opt[key]
    return opt, last


def set_value(path, value):
    def change(opt):
        target, key = at(opt, path)
        target[key] = value
    return change


def remove(path):
    def change(opt):
        target, key = at(opt, path)
        del target[key]
    return change


def rename(path, new):
    def change(opt):
        target, key = at(opt, path)
        target[new] = target.pop(key)
    return change


# (what is wrong, the change, the key path the one problem must start with, what it must say)
KINDS = [
    ('wrong type, declared architecture argument', set_value('network_g:num_feat', 'many'), 'network_g:num_feat',
     "found 'many' (a string); expected an integer"),
    ('misspelled required argument of a BasicSR architecture', lambda opt: opt.update(network_g={
        'type': 'RIDNet', 'in_channels': 3, 'out_channels': 3, 'mid_channel': 16, 'num_block': 1}),
     'network_g:mid_channels', "missing; expected a value: RIDNet requires it (is 'mid_channel' a misspelling?)"),
    ('unknown argument of a BasicSR architecture', lambda opt: opt.update(network_g={
        'type': 'RIDNet', 'in_channels': 3, 'out_channels': 3, 'mid_channels': 16, 'num_block': 1, 'depth': 2}),
     'network_g:depth', 'is not an argument of RIDNet'),
    ('wrong type, three levels down', set_value('train:usa_opt:network:num_classes', 'k'),
     'train:usa_opt:network:num_classes', "found 'k' (a string); expected an integer"),
    ('out of range', set_value('train:usa_opt:network:num_classes', 0), 'train:usa_opt:network:num_classes',
     'found 0; expected a number >= 1'),
    ('not one of the choices', set_value('train:usa_opt:network:backbone', 'resnet7'),
     'train:usa_opt:network:backbone', "found 'resnet7'"),
    ('not finite', set_value('train:optim_g:lr', float('nan')), 'train:optim_g:lr', 'found nan; expected a finite'),
    ('unknown key', set_value('datasets:train:colour', 1), 'datasets:train:colour', 'is not an option of'),
    ('misspelled key', rename('datasets:train:gt_size', 'gt_sise'), 'datasets:train:gt_sise',
     'is not an option of GaussianNoiseDataset'),
    ('missing required key', remove('datasets:train:sigma'), 'datasets:train:sigma', 'missing; expected'),
    ('missing required argument', remove('val:metrics:psnr:crop_border'), 'val:metrics:psnr:crop_border',
     'missing; expected a value: calculate_psnr requires it'),
    ('a rule of one component', remove('datasets:train:gt_size'), 'datasets:train:gt_size', 'expected'),
    ('a section that is not a mapping', set_value('train:usa_opt', 3), 'train:usa_opt', 'found 3'),
    ('a value inside a mapping of values', set_value('val:metrics:psnr', 'psnr'), 'val:metrics:psnr', "found 'psnr'"),
    ('unregistered type', set_value('train:usa_opt:network:type', 'USANett'), 'train:usa_opt:network:type',
     "'USANett' is not a registered"),
    ('a dataset that is not a mapping', set_value('datasets:val', 5), 'datasets:val',
     'found 5 (an integer); expected a mapping of dataset options'),
    ("a missing path of one of BasicSR's datasets", lambda opt: opt['datasets'].update(val={
        'name': 'paired', 'type': 'PairedImageDataset', 'dataroot_gt': 'no/such/folder',
        'dataroot_lq': opt['datasets']['val']['dataroot_gt'], 'io_backend': {'type': 'disk'}}),
     'datasets:val:dataroot_gt', 'no/such/folder does not exist; expected an existing path'),
]


@pytest.mark.parametrize('change, key, text', [k[1:] for k in KINDS], ids=[k[0] for k in KINDS])
def test_every_kind_of_problem_names_its_full_key_path(image_folder, change, key, text):
    opt = tiny_options(image_folder)
    change(opt)
    found = problems_of(opt)
    assert len(found) == 1, found
    assert found[0].startswith(f'{key}: '), found[0]
    assert text in found[0][len(key) + 2:], found[0]


def parse_with(option_file, *force_yml, root):
    """BasicSR's parse_options, as every pipeline calls it, on ``option_file`` with ``--force_yml`` entries."""
    from basicsr.utils import options as basicsr_options
    argv = sys.argv
    sys.argv = ['train.py', '-opt', str(option_file), *(['--force_yml', *force_yml] if force_yml else [])]
    try:
        return basicsr_options.parse_options(str(root), is_train=True)[0]
    finally:
        sys.argv = argv


@pytest.mark.parametrize('entry, key, text', [
    ('network_g:num_feat=many', 'network_g:num_feat', "found 'many' (a string); expected an integer"),
    ('train:usa_opt:network:backbone=resnet7', 'train:usa_opt:network:backbone', "found 'resnet7'"),
    ('datasets:val:sigma=[5, 9]', 'datasets:val:sigma', 'which does not fit sigma_type'),
])
def test_force_yml_values_are_checked_like_the_files_own(image_folder, tmp_path, entry, key, text):
    option_file = write_options(tiny_options(image_folder), tmp_path / 'o.yml')
    with pytest.raises(OptionError) as error:
        parse_with(option_file, entry, root=tmp_path)
    assert str(error.value).startswith(f'{option_file} with --force_yml: 1 problem in the options')
    assert len(error.value.problems) == 1 and error.value.problems[0].startswith(f'{key}: ')
    assert text in error.value.problems[0]


@pytest.mark.parametrize('content, expected', [
    (None, 'cannot be read (No such file or directory)'),
    ('name: [unclosed\nmodel_type: USAIDModel\n', 'is not valid YAML: '),
    ('- name\n- model_type\n', 'found list at the top level; expected a mapping of options'),
    ('just a string\n', 'found str at the top level; expected a mapping of options'),
    ('', 'found NoneType at the top level; expected a mapping of options'),
])
def test_a_missing_non_yaml_or_non_mapping_option_file_is_one_clear_error(tmp_path, content, expected):
    option_file = tmp_path / 'bad.yml'
    if content is not None:
        option_file.write_text(content)
    for read in (lambda: check_option_file(str(option_file), is_train=True),
                 lambda: parse_with(option_file, root=tmp_path),
                 lambda: parse_with(option_file, 'name=x', root=tmp_path)):
        with pytest.raises(OptionError) as error:
            read()
        message = str(error.value)
        assert message.startswith(f'{option_file}: 1 problem in the options (nothing was run or written):'), message
        assert len(error.value.problems) == 1 and error.value.problems[0].startswith(expected), message
    assert not (tmp_path / 'experiments').exists()


def test_yaml_that_is_valid_but_not_safe_is_named_in_the_same_way(tmp_path):
    option_file = tmp_path / 'tagged.yml'
    option_file.write_text(yaml.safe_dump({'name': 'x'}) + 'model_type: !!python/name:os.system\n')
    with pytest.raises(OptionError, match=r'model_type: the tag !!python/name:os.system on line 2 is not allowed'):
        check_option_file(str(option_file), is_train=True)

"""Each component declares its options once: the option check, the constructor, the signature, the docstring, the
option reference and the JSON Schema all come from that declaration, and a misspelled key is an error everywhere."""
import dataclasses
import inspect
import json
import sys

import pytest
import yaml
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY

from tests.conftest import REPO, tiny_options
from tests.conftest import option_problems as problems
from usaid import option_reference

U_SAID_REGISTERED = [cls for registry in (ARCH_REGISTRY, LOSS_REGISTRY, DATASET_REGISTRY)
                     for _, cls in registry if cls.__module__.startswith('usaid.')]


def test_the_registries_hold_u_said_components():
    assert {'USAID', 'USANet', 'USALoss', 'BatchSSELoss', 'GaussianNoiseDataset'} <= {
        cls.__name__ for cls in U_SAID_REGISTERED}


@pytest.mark.parametrize('component', U_SAID_REGISTERED, ids=lambda cls: cls.__name__)
def test_every_registered_component_declares_its_options_and_builds_from_them(component):
    declaration = component.Options
    names = [f.name for f in dataclasses.fields(declaration)]
    for name in names:  # the docstring lists each option (generated)
        assert f'{name} (' in component.__doc__ or f'``{name}``' in component.__doc__, name
    if component in [cls for _, cls in DATASET_REGISTRY]:
        return  # built from one opt mapping, as BasicSR's datasets are
    signature = inspect.signature(component).parameters
    assert list(signature) == names
    for field in dataclasses.fields(declaration):
        assert signature[field.name].default == field.default
    with pytest.raises(ValueError, match=f'{component.__name__}: no_such_option: is not an argument of '
                                         f'{component.__name__}'):
        component(no_such_option=1)


# (where, misspelled key, the key it should have been): every section, BasicSR's own included
MISSPELLINGS = [
    ((), 'manual_sed', 'manual_seed'),
    (('train',), 'grad_clipp', None),
    (('train',), 'acumulate', None),
    (('train',), 'total_iters', 'total_iter'),
    (('train',), 'ema_decy', 'ema_decay'),
    (('train', 'optim_g'), 'weight_decy', 'weight_decay'),
    (('train', 'scheduler'), 'gama', 'gamma'),
    (('train', 'pixel_opt'), 'loss_wieght', 'loss_weight'),
    (('train', 'usa_opt'), 'detach_inputs', 'detach_input'),
    (('train', 'usa_opt', 'network'), 'bn_mod', 'bn_mode'),
    (('val',), 'val_frq', 'val_freq'),
    (('val', 'metrics', 'psnr'), 'crop_boarder', 'crop_border'),
    (('logger',), 'print_frq', 'print_freq'),
    (('path',), 'strict_load', 'strict_load_g'),
    (('datasets', 'train'), 'gt_sise', 'gt_size'),
    (('datasets', 'train'), 'batch_size_per_gpus', 'batch_size_per_gpu'),
    (('datasets', 'val'), 'noise_sed', 'noise_seed'),
    (('network_g',), 'num_feats', 'num_feat'),
]


@pytest.mark.parametrize('where, wrong, right', MISSPELLINGS, ids=lambda v: str(v))
def test_a_misspelled_key_in_any_section_is_named_with_the_closest(image_folder, where, wrong, right):
    opt = tiny_options(image_folder)
    opt['dist_params'] = {'backend': 'gloo', 'port': 29500}
    target = opt
    for step in where:
        target = target[step]
    target[wrong] = target.get(right, 1)
    target.pop(right, None)
    key = ':'.join((*where, wrong))
    found = problems(opt)
    assert len(found) == 1, found
    if found[0].startswith(f"{':'.join((*where, str(right)))}: missing"):  # a required key: named once, with it
        assert found[0].endswith(f'(is {wrong!r} a misspelling?)'), found
        return
    assert found[0].startswith(f'{key}: is not an'), found
    if right:
        assert 'closest: ' in found[0] and right in found[0].split('closest: ')[1], found


def test_dist_params_and_wandb_are_checked(image_folder):
    opt = tiny_options(image_folder)
    opt['dist_params'] = {'backnd': 'gloo'}
    opt['logger']['wandb'] = {'projet': 'x'}
    found = problems(opt)
    assert any(p.startswith('dist_params:backnd: is not an option of dist_params') for p in found), found
    assert any(p.startswith('logger:wandb:projet: is not an option of wandb') and 'project' in p for p in found)


@pytest.mark.parametrize('key, value, expected', [
    ('backbone', 'resnet102', 'expected one of resnet18, resnet34, resnet50, resnet101'),
    ('bn_mode', 'frozen', 'expected one of train, eval'),
    ('input_norm', 'caffe', 'expected one of seed, imagenet'),
    ('pretrained', 'no/such/weights.pth', 'no/such/weights.pth does not exist; expected imagenet, none or the path'),
    ('num_classes', 0, 'found 0; expected a number >= 1'),
])
def test_usanet_choices_are_checked_before_anything_is_built(image_folder, tmp_path, key, value, expected):
    opt = tiny_options(image_folder)
    opt['train']['usa_opt']['network'][key] = value
    assert problems(opt) == [f'train:usa_opt:network:{key}: ' + problems(opt)[0].split(': ', 1)[1]]
    assert expected in problems(opt)[0]


def test_val_and_test_sigma_rule_is_the_datasets_own(image_folder):
    """One rule, stated by GaussianNoiseDataset's declaration: the option check and the constructor say it."""
    opt = tiny_options(image_folder)
    opt['datasets']['val'].update(sigma_type='uniform', sigma=[0, 50])
    [problem] = problems(opt)
    assert problem.startswith("datasets:val:sigma_type: found 'uniform'; expected fixed: validation and test need")


def test_test_runs_need_save_img_and_training_runs_need_the_training_sections(image_folder):
    opt = tiny_options(image_folder)
    del opt['val']['save_img']
    assert "val:save_img: missing; expected true or false (BasicSR's test pipeline requires it)" in problems(
        opt, is_train=False)
    del opt['logger']
    assert 'logger: missing; expected a mapping' in problems(opt)


def test_models_without_a_declaration_get_their_known_keys_checked_and_others_allowed(image_folder):
    """ESRGANModel reads train keys of its own (gan_opt, net_d_iters): allowed; a known key is still typed."""
    assert 'ESRGANModel' in MODEL_REGISTRY
    opt = tiny_options(image_folder)
    opt['model_type'] = 'ESRGANModel'
    opt['train']['net_d_iters'] = 1
    opt['train']['total_iter'] = 'many'
    found = problems(opt)
    assert "train:total_iter: found 'many' (a string); expected an integer" in found
    assert not any('net_d_iters' in p for p in found), found


def test_the_generated_option_reference_and_schema_are_up_to_date():
    """``make docs`` (python -m usaid.option_reference docs) writes them; regenerate after changing a declaration."""
    docs = REPO / 'docs'
    assert (docs / 'options.md').read_text(encoding='utf-8') == option_reference.reference_markdown(), \
        'docs/options.md is stale: run make docs'
    written = json.loads((docs / 'options.schema.json').read_text(encoding='utf-8'))
    assert written == json.loads(json.dumps(option_reference.json_schema(), default=str)), \
        'docs/options.schema.json is stale: run make docs'


def test_the_reference_lists_every_declared_option():
    text = option_reference.reference_markdown()
    for component in U_SAID_REGISTERED:
        for field in dataclasses.fields(component.Options):
            assert f'| `{field.name}` |' in text, (component.__name__, field.name)
    assert '| `non_finite_loss` |' in text and '| `print_freq` |' in text and '| `batch_size_per_gpu` |' in text


def test_every_shipped_recipe_validates_against_the_schema_and_a_misspelling_does_not():
    jsonschema = pytest.importorskip('jsonschema')
    schema = option_reference.json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    recipes = sorted((REPO / 'options').glob('*.yml'))
    assert len(recipes) >= 10
    for recipe in recipes:
        opt = yaml.safe_load(recipe.read_text())
        errors = [e.message for e in validator.iter_errors(opt)]
        assert not errors, (recipe.name, errors)
    opt = yaml.safe_load((REPO / 'options' / 'train_usaid_sigma25.yml').read_text())
    opt['train']['grad_clipp'] = 0.1
    assert any('grad_clipp' in e.message for e in validator.iter_errors(opt))


def test_the_reference_tool_writes_both_files(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, 'argv', ['option_reference'])
    option_reference.main([str(tmp_path)])
    assert (tmp_path / 'options.md').read_text(encoding='utf-8').startswith('# Option reference')
    assert json.loads((tmp_path / 'options.schema.json').read_text())['$schema'].endswith('2020-12/schema')


# ---- found by the adversarial pass: each a mechanism, not a case -------------------------------------------------

def test_float_arguments_whose_signature_default_is_written_as_an_integer_take_numbers(image_folder):
    """torch writes ``weight_decay=0`` and ``momentum=0``: a signature's integer default stands for a number."""
    opt = tiny_options(image_folder)
    opt['train']['optim_g'] = {'type': 'AdamW', 'lr': 1e-3, 'weight_decay': 1e-4}
    assert problems(opt) == []
    opt['train']['optim_g'] = {'type': 'SGD', 'lr': 1e-3, 'momentum': 0.9, 'dampening': 0.1}
    assert problems(opt) == []


def test_numbers_of_any_numeric_type_are_numbers():
    import numpy as np

    from usaid.archs import USAID
    assert USAID(num_feat=np.int64(8), num_layers=np.int32(3)).dncnn[0].out_channels == 8
    with pytest.raises(ValueError, match='num_feat: found .*8.5.* \\(a number\\); expected an integer'):
        USAID(num_feat=np.float64(8.5))


@pytest.mark.parametrize('where, key, value, expected', [
    (('train',), 'ema_decay', float('nan'), 'train:ema_decay: found nan; expected a finite number'),
    (('train', 'optim_g'), 'lr', float('inf'), 'train:optim_g:lr: found inf; expected a finite number'),
    (('train', 'pixel_opt'), 'loss_weight', float('nan'), 'train:pixel_opt:loss_weight: found nan; expected a '
                                                          'finite number'),
    (('train',), 'total_iter', 10**30, 'train:total_iter: found 1000000000000000000000000000000; expected a number '
                                      '>= 1 and <= 2147483647'),
    ((), 'manual_seed', 2**40, 'manual_seed: found 1099511627776; expected a number >= 0 and <= 4294967295'),
    (('dist_params',), 'port', '29500', "dist_params:port: found the string '29500'; expected a number"),
    (('val', 'metrics', 'psnr'), 'crop_border', 'zero', "val:metrics:psnr:crop_border: found 'zero' (a string); "
                                                        'expected an integer'),
    (('val', 'metrics', 'psnr'), 'test_y_chanel', True, 'val:metrics:psnr:test_y_chanel: is not an argument of '
                                                        'calculate_psnr'),
    ((), 'name', '', "name: found ''; expected one folder name"),
])
def test_values_that_would_fail_late_or_pass_silently_are_refused(image_folder, where, key, value, expected):
    opt = tiny_options(image_folder)
    opt['dist_params'] = {'backend': 'gloo', 'port': 29500}
    target = opt
    for step in where:
        target = target[step]
    target[key] = value
    found = problems(opt)
    assert len(found) == 1 and found[0].startswith(expected), found


@pytest.mark.parametrize('where, key', [(('train', 'optim_g'), 'lr'), (('logger',), 'use_tb_logger')])
def test_keys_basicsr_indexes_without_a_default_are_required(image_folder, where, key):
    opt = tiny_options(image_folder)
    target = opt
    for step in where:
        target = target[step]
    del target[key]
    [problem] = problems(opt)
    assert problem.startswith(f"{':'.join(where)}:{key}: missing; expected"), problem


def test_the_schema_refuses_what_the_check_refuses_in_registered_entries():
    jsonschema = pytest.importorskip('jsonschema')
    validator = jsonschema.Draft202012Validator(option_reference.json_schema())
    base = yaml.safe_load((REPO / 'options' / 'train_usaid_sigma25.yml').read_text())
    for change in (lambda o: o.update(model_type='USAIDModl'), lambda o: o['train']['optim_g'].update(lrr=1),
                   lambda o: o['train']['scheduler'].update(milestone=[1]),
                   lambda o: o['val']['metrics']['psnr'].update(better='up')):
        opt = yaml.safe_load(yaml.safe_dump(base))
        change(opt)
        assert list(validator.iter_errors(opt)), opt


def test_the_loader_rules_apply_to_a_dataset_with_a_declaration_of_its_own(image_folder):
    """BasicSR's loader keys are a second declaration checked with the dataset's: its rules run too."""
    opt = tiny_options(image_folder)
    del opt['datasets']['train']['batch_size_per_gpu']
    assert problems(opt) == ['datasets:train:batch_size_per_gpu: missing; expected an integer: the training loader '
                             'requires it']
    del opt['datasets']['val']['name']
    opt['datasets']['val']['batch_size_per_gpu'] = 2  # read by no validation loader, but a loader key: allowed
    assert 'datasets:val:name: missing; expected a string' in problems(opt)

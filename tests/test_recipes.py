"""Each training recipe in options/ holds the key values of the recipe table in docs/training.md, and the U-SAID rows
of that table are the authors' recipe (REFERENCE section 2, written out here)."""
import re

import pytest

from tests.conftest import REPO
from usaid import yaml_io

# the table's columns, as key paths of the option file (the table's own text names them)
COLUMNS = {
    'network': 'network_g:type', 'sigma': 'datasets:train:sigma', 'patch': 'datasets:train:gt_size',
    'batch': 'datasets:train:batch_size_per_gpu', 'lr': 'train:optim_g:lr', 'milestones': 'train:scheduler:milestones',
    'gamma': 'train:scheduler:gamma', 'iterations': 'train:total_iter', 'MSE weight': 'train:pixel_opt:loss_weight',
    'USA weight': 'train:usa_opt:loss_weight', 'detach_input': 'train:usa_opt:detach_input',
    'backbone': 'train:usa_opt:network:backbone', 'pretrained': 'train:usa_opt:network:pretrained',
    'input_norm': 'train:usa_opt:network:input_norm', 'bn_mode': 'train:usa_opt:network:bn_mode',
}
ABSENT = object()


def recipe_table():
    """``{option file: {column: cell}}`` of the table in docs/training.md whose first column is 'option file'."""
    lines = (REPO / 'docs' / 'training.md').read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('| option file | network |'))
    header = [c.strip() for c in lines[start].strip('|').split('|')]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith('|'):
            break
        cells = [c.strip() for c in line.strip('|').split('|')]
        rows[cells[0].strip('`')] = dict(zip(header[1:], cells[1:]))
    return rows


def expected_value(column, cell):
    """The option file's value that a table cell stands for."""
    if cell == '-':
        return ABSENT
    if column == 'sigma':
        uniform = re.fullmatch(r'U\[(\d+), (\d+)\]', cell)
        return ('uniform', [float(uniform[1]), float(uniform[2])]) if uniform else ('fixed', float(cell))
    if column == 'milestones':
        return [int(m.replace(',', '')) for m in cell.split('/')]
    if column in ('iterations', 'patch', 'batch'):
        return int(cell.replace(',', ''))
    if column in ('lr', 'gamma', 'MSE weight', 'USA weight'):
        return float(cell)
    if cell in ('true', 'false'):
        return cell == 'true'
    return cell


def value_at(opt, path):
    for key in path.split(':'):
        if not isinstance(opt, dict) or key not in opt:
            return ABSENT
        opt = opt[key]
    return opt


TABLE = recipe_table()


def test_every_training_recipe_has_a_row():
    assert sorted(TABLE) == sorted(p.name for p in (REPO / 'options').glob('train_*.yml'))
    assert all(set(row) == set(COLUMNS) for row in TABLE.values())


@pytest.mark.parametrize('option_file', sorted(TABLE))
def test_the_recipe_holds_the_tables_values(option_file):
    with open(REPO / 'options' / option_file) as f:
        opt = yaml_io.load(f)
    for column, cell in TABLE[option_file].items():
        expected = expected_value(column, cell)
        if column == 'sigma':
            found = (value_at(opt, 'datasets:train:sigma_type'), value_at(opt, 'datasets:train:sigma'))
            found = (found[0], [float(s) for s in found[1]] if isinstance(found[1], list) else float(found[1]))
        else:
            found = value_at(opt, COLUMNS[column])
        if column == 'detach_input' and found is ABSENT and expected is not ABSENT:
            found = False  # USALoss's default
        assert found == expected, f'{option_file}: {COLUMNS[column]} is {found!r}; the table says {cell}'
        if isinstance(expected, float):
            assert isinstance(found, float), f'{option_file}: {COLUMNS[column]} is {found!r}, not a number'


# REFERENCE section 2: 1,464 images, batch 64, 48 x 48 patches, Adam lr 1e-3, x0.1 after 10, 40 and 80 epochs of 100;
# an epoch here is 64 patches per image (docs/training.md), i.e. 1,464 iterations. Section 1: 0.5 * MSE + 0.5 * L_USA,
# ResNet-101 with ImageNet weights, the authors' mean only, batch statistics.
EPOCH = 1464  # iterations: 1,464 images x 64 patches in batches of 64
AUTHORS = {'patch': '48', 'batch': '64', 'lr': '1e-3', 'gamma': '0.1', 'iterations': f'{100 * EPOCH:,}',
           'milestones': ' / '.join(f'{e * EPOCH:,}' for e in (10, 40, 80)), 'MSE weight': '0.5', 'USA weight': '0.5',
           'backbone': 'resnet101', 'pretrained': 'imagenet', 'input_norm': 'seed', 'bn_mode': 'train',
           'network': 'USAID'}


@pytest.mark.parametrize('option_file, sigma, detach_input', [
    ('train_usaid_sigma15.yml', '15', 'false'), ('train_usaid_sigma25.yml', '25', 'false'),
    ('train_usaid_sigma50.yml', '50', 'false'), ('train_usaid_blind.yml', 'U[0, 55]', 'false'),
    # the released script detaches the USA input, so that its loss never reaches the denoiser (REFERENCE section 1)
    ('train_usaid_released.yml', 'U[0, 55]', 'true'),
])
def test_the_usaid_rows_are_the_authors_recipe(option_file, sigma, detach_input):
    row = TABLE[option_file]
    assert {k: row[k] for k in AUTHORS} == AUTHORS
    assert (row['sigma'], row['detach_input']) == (sigma, detach_input)


def test_the_usa_loss_of_every_recipe_is_the_papers_focal_loss():
    for option_file in TABLE:
        with open(REPO / 'options' / option_file) as f:
            usa_opt = value_at(yaml_io.load(f), 'train:usa_opt')
        if usa_opt is not ABSENT:
            assert (usa_opt['type'], usa_opt.get('gamma', 2), usa_opt['network']['num_classes']) == ('USALoss', 2, 21)

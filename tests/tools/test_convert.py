import subprocess

import pytest
import torch

from tests.conftest import CHECKPOINTS, console_script, run
from usaid.archs import USAID
from usaid.errors import CheckpointError
from usaid.tools.convert import convert

needs_checkpoints = pytest.mark.skipif(not (CHECKPOINTS / 'USAID.pth').exists(),
                                       reason='released checkpoints not found')


@needs_checkpoints
def test_released_checkpoint_loads_strictly_after_conversion(tmp_path):
    out = tmp_path / 'models' / 'USAID.pth'
    run([console_script('usaid-convert'), str(CHECKPOINTS / 'USAID.pth'), str(out)], cwd=tmp_path)
    converted = torch.load(out, weights_only=True)
    assert list(converted) == ['params']
    net = USAID()
    net.load_state_dict(converted['params'], strict=True)
    released = torch.load(CHECKPOINTS / 'USAID.pth', map_location='cpu', weights_only=True)
    assert torch.equal(net.dncnn[0].weight, released['module.dncnn.0.weight'])
    assert torch.equal(net.dncnn[54].running_var, released['module.dncnn.54.running_var'])


@needs_checkpoints
def test_basicsr_format_is_a_no_op_and_existing_output_is_kept(tmp_path):
    first = tmp_path / 'USAID.pth'
    convert(str(CHECKPOINTS / 'USAID.pth'), str(first))
    assert 'already in BasicSR format' in convert(str(first), str(tmp_path / 'again.pth'))
    assert not (tmp_path / 'again.pth').exists()
    before = first.read_bytes()
    with pytest.raises(FileExistsError, match='--force'):
        convert(str(CHECKPOINTS / 'DnCNN.pth'), str(first))
    assert first.read_bytes() == before


@pytest.mark.parametrize('arch, expected', [
    ({'num_layers': 17}, '15 unexpected key(s): dncnn.48.weight'),
    ({'num_feat': 32}, 'dncnn.0.weight: checkpoint (64, 3, 3, 3), network (32, 3, 3, 3)'),
    ({'num_in_ch': 1, 'num_out_ch': 1}, 'dncnn.0.weight: checkpoint (64, 3, 3, 3), network (64, 1, 3, 3)'),
])
def test_a_checkpoint_that_does_not_fit_lists_the_differences_and_writes_nothing(tmp_path, arch, expected):
    source = tmp_path / 'released.pth'
    torch.save({f'module.{k}': v for k, v in USAID().state_dict().items() if 'num_batches' not in k}, source)
    with pytest.raises(CheckpointError) as error:
        convert(str(source), str(tmp_path / 'out.pth'), **arch)
    assert expected in str(error.value) and str(source) in str(error.value)
    assert not (tmp_path / 'out.pth').exists()


def test_missing_keys_are_listed(tmp_path):
    state = {f'module.{k}': v for k, v in USAID().state_dict().items() if k != 'dncnn.3.running_mean'}
    torch.save(state, tmp_path / 'partial.pth')
    with pytest.raises(CheckpointError, match=r'1 missing key\(s\): dncnn.3.running_mean\.'):
        convert(str(tmp_path / 'partial.pth'), str(tmp_path / 'out.pth'))


def test_command_line_error_is_one_clear_line(tmp_path):
    torch.save({'module.dncnn.0.weight': torch.zeros(1)}, tmp_path / 'bad.pth')
    result = subprocess.run([console_script('usaid-convert'), str(tmp_path / 'bad.pth'), str(tmp_path / 'out.pth')],
                            capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.startswith('usaid-convert: ') and 'Traceback' not in result.stderr


@needs_checkpoints
def test_the_input_is_never_replaced_by_its_conversion(tmp_path):
    import shutil

    released = tmp_path / 'USAID.pth'
    shutil.copy(CHECKPOINTS / 'USAID.pth', released)
    before = released.read_bytes()
    with pytest.raises(FileExistsError, match='is the input file'):
        convert(str(released), str(released), overwrite=True)
    assert released.read_bytes() == before


def test_network_options_that_no_usaid_takes_are_one_message(tmp_path):
    from tests.conftest import assert_one_message, cli
    for flag, value in (('--num-layers', 1), ('--num-in-ch', 0)):
        result = cli('usaid-convert', CHECKPOINTS / 'USAID.pth', tmp_path / 'x.pth', flag, value, cwd=tmp_path)
        assert_one_message(result, 'usaid-convert', 'USAID: num_')
        assert not (tmp_path / 'x.pth').exists()

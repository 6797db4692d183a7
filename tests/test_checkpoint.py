"""Checkpoints: atomic writes that survive a full disk, loads that never run code, mismatches named."""
import ast
import os

import pytest
import torch

from tests.conftest import REPO, file_size_limit
from usaid.archs import USAID
from usaid.checkpoint import check_finite, check_fits, load_checkpoint, network_state, save_atomically
from usaid.errors import CheckpointError


def weights(seed, size=4096):
    return {'params': {'w': torch.randn(size, generator=torch.Generator().manual_seed(seed))}}


def test_a_failing_write_keeps_the_previous_file_and_leaves_nothing_partial(tmp_path):
    path = tmp_path / 'net_g_latest.pth'
    save_atomically(weights(0), str(path))
    size = path.stat().st_size
    with file_size_limit(size // 2), pytest.raises(CheckpointError) as error:
        save_atomically(weights(1), str(path))
    assert str(error.value).startswith(f'{path}: could not be written (') and 'the previous file is kept' in str(
        error.value)
    assert torch.equal(load_checkpoint(str(path))['params']['w'], weights(0)['params']['w'])
    assert sorted(os.listdir(tmp_path)) == ['net_g_latest.pth']


def test_a_failing_first_write_leaves_no_file(tmp_path):
    with file_size_limit(1024), pytest.raises(CheckpointError, match='nothing was written'):
        save_atomically(weights(0), str(tmp_path / 'new.pth'))
    assert os.listdir(tmp_path) == []


class RunsCode:
    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_loading_never_runs_code_from_the_file(tmp_path):
    RunsCode.marker = tmp_path / 'ran'
    torch.save({'params': RunsCode()}, tmp_path / 'evil.pth')
    with pytest.raises(CheckpointError, match='evil.pth: cannot be loaded as a PyTorch checkpoint of weights'):
        load_checkpoint(str(tmp_path / 'evil.pth'))
    assert not (tmp_path / 'ran').exists()


def test_files_that_are_no_checkpoints_are_named(tmp_path):
    (tmp_path / 'notes.pth').write_text('hello')
    with pytest.raises(CheckpointError, match='notes.pth: cannot be loaded as a PyTorch checkpoint'):
        load_checkpoint(str(tmp_path / 'notes.pth'))
    with pytest.raises(CheckpointError, match='missing.pth: does not exist'):
        load_checkpoint(str(tmp_path / 'missing.pth'))
    bare = USAID(num_feat=8, num_layers=3).state_dict()
    with pytest.raises(CheckpointError, match="has no 'params' entry .* run usaid-convert on it"):
        network_state(bare, 'bare.pth')
    assert network_state({'params': {'module.w': 1}}, 'x.pth') == {'w': 1}
    assert network_state({'params': {'w': 1}}, 'x.pth', 'params_ema') == {'w': 1}  # BasicSR's fallback


def test_a_checkpoint_of_another_architecture_names_keys_and_shapes():
    net = USAID(num_feat=16, num_layers=4)
    wider = USAID(num_feat=32, num_layers=4).state_dict()
    with pytest.raises(CheckpointError) as error:
        check_fits(net, wider, 'wide.pth')
    message = str(error.value)
    assert message.startswith('wide.pth: does not fit the network USAID: ') and '3 missing' not in message
    assert 'dncnn.0.weight: checkpoint (32, 3, 3, 3), network (16, 3, 3, 3)' in message
    deeper = USAID(num_feat=16, num_layers=5).state_dict()
    with pytest.raises(CheckpointError) as error:
        check_fits(net, deeper, 'deep.pth')
    assert 'unexpected key(s): dncnn.9.weight' in str(error.value) and 'shape mismatch(es): dncnn.8.weight' in str(
        error.value)
    check_fits(net, {k: v for k, v in deeper.items() if k in net.state_dict() and k != 'dncnn.8.weight'}, 'x',
               strict=False)


def test_non_finite_weights_are_refused():
    state = USAID(num_feat=8, num_layers=3).state_dict()
    check_finite(state, 'ok.pth')
    state['dncnn.3.running_var'][0] = float('nan')
    with pytest.raises(CheckpointError, match='non-finite values in dncnn.3.running_var; the previous checkpoint'):
        check_finite(state, 'x.pth')


def test_every_torch_load_in_the_package_is_weights_only():
    calls = []
    for source in (REPO / 'usaid').rglob('*.py'):
        for node in ast.walk(ast.parse(source.read_text())):
            loads = ('torch.load', 'load_state_dict_from_url')
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith(loads):
                keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
                calls.append((source.name, keywords.get('weights_only')))
    assert len(calls) >= 5 and all(flag == 'True' for _, flag in calls), calls

"""Checkpoints: atomic writes that survive a full disk, loads that never run code, mismatches named."""
import ast
import logging
import os

import pytest
import torch

from tests.conftest import CHECKPOINTS, REPO, file_size_limit
from usaid.archs import USAID
from usaid.checkpoint import (canonical_state_dict, check_finite, check_fits, load_checkpoint, safetensors_bytes,
                              save_atomically, stored_network_options)
from usaid.denoiser import load_denoiser, resolve_model
from usaid.errors import CheckpointError
from usaid.models.usaid_model import USAIDModel
from usaid.comparison import canonical_checkpoint


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
        canonical_state_dict('bare.pth', checkpoint=bare)
    assert canonical_state_dict('x.pth', checkpoint={'params': {'module.w': 1}}) == {'w': 1}
    # BasicSR's fallback
    assert canonical_state_dict('x.pth', 'params_ema', checkpoint={'params': {'w': 1}}) == {'w': 1}


def test_damaged_safetensors_files_are_named(tmp_path):
    good = safetensors_bytes({'params': USAID(num_feat=8, num_layers=3).state_dict()}, {'type': 'USAID'})
    for name, content in (('truncated.safetensors', good[:len(good) // 2]),
                          ('header.safetensors', (12).to_bytes(8, 'little') + b'{"a": nope }' + good[20:]),
                          ('renamed.pth', good[:-10])):  # recognised by content, whatever the name
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=f'{name}: cannot be loaded as a safetensors file'):
            load_checkpoint(str(tmp_path / name))


def test_safetensors_files_of_basicsr_layout_and_of_others_load(tmp_path):
    from safetensors.torch import save
    params, ema = USAID(num_feat=8, num_layers=3).state_dict(), USAID(num_feat=8, num_layers=3).state_dict()
    (tmp_path / 'net.safetensors').write_bytes(safetensors_bytes({'params': params, 'params_ema': ema},
                                                                 {'type': 'USAID', 'num_layers': 3}))
    loaded = load_checkpoint(str(tmp_path / 'net.safetensors'))
    assert list(loaded) == ['params', 'params_ema']
    for key, state in (('params', params), ('params_ema', ema)):  # safetensors does not keep the keys' order
        assert same_entries(loaded[key], state)
    assert stored_network_options(str(tmp_path / 'net.safetensors')) == {'type': 'USAID', 'num_layers': 3}
    # a flat state dict (spandrel's, traiNNer-redux's): bare, as the authors' .pth files
    (tmp_path / 'flat.safetensors').write_bytes(save({k: v.contiguous() for k, v in params.items()}))
    assert same_entries(canonical_state_dict(str(tmp_path / 'flat.safetensors'), allow_bare=True), params)
    assert stored_network_options(str(tmp_path / 'flat.safetensors')) is None
    # a key outside the entries the metadata lists is refused, not loaded into another entry
    (tmp_path / 'odd.safetensors').write_bytes(save({'other.w': torch.ones(1)}, {'format': 'basicsr',
                                                                                 'param_keys': 'params'}))
    with pytest.raises(CheckpointError, match="holds 'other.w', outside the param keys"):
        load_checkpoint(str(tmp_path / 'odd.safetensors'))


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
            # torch's unpickling loaders (safetensors' own reader, safetensors_torch.load, unpickles nothing)
            if isinstance(node, ast.Call) and (ast.unparse(node.func) == 'torch.load'
                                               or ast.unparse(node.func).endswith('load_state_dict_from_url')):
                keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
                calls.append((source.name, keywords.get('weights_only')))
    # the loaders of checkpoints, training states and torchvision's weights: the scan finds them
    assert {'checkpoint.py', 'compat.py', 'torchvision_weights.py'} <= {name for name, _ in calls}, calls
    assert all(flag == 'True' for _, flag in calls), calls


def tiny_state(seed=0):
    torch.manual_seed(seed)
    return USAID(num_feat=8, num_layers=3).state_dict()


def same(a, b):
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def same_entries(a, b):
    return sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize('layout', ['params', 'params_ema', 'module_prefix', 'bare', 'root'])
def test_every_layout_gives_the_same_canonical_state_dict(tmp_path, layout):
    state, ema = tiny_state(0), tiny_state(1)
    stored, param_key, expected = {
        'params': ({'params': state}, 'params', state),
        'params_ema': ({'params': state, 'params_ema': ema}, 'params_ema', ema),
        'module_prefix': ({'params': {f'module.{k}': v for k, v in state.items()}}, 'params', state),
        'bare': (state, 'params', state),  # accepted with allow_bare
        'root': (state, None, state),  # BasicSR's param_key_g: ~
    }[layout]
    torch.save(stored, tmp_path / 'net.pth')
    net = USAID(num_feat=8, num_layers=3)
    assert same(canonical_state_dict(str(tmp_path / 'net.pth'), param_key, allow_bare=True, net=net), expected)


def test_a_bare_state_dict_is_refused_where_basicsr_expects_its_format(tmp_path):
    torch.save(tiny_state(), tmp_path / 'bare.pth')
    with pytest.raises(CheckpointError, match="has no 'params' entry .* run usaid-convert on it"):
        canonical_state_dict(str(tmp_path / 'bare.pth'))
    torch.save({'params_ema': tiny_state()}, tmp_path / 'ema_only.pth')
    with pytest.raises(CheckpointError, match="has no 'params' entry"):
        canonical_state_dict(str(tmp_path / 'ema_only.pth'), allow_bare=True)


@pytest.mark.skipif(not (CHECKPOINTS / 'USAID.pth').exists(), reason='released checkpoints not found')
@pytest.mark.parametrize('name', ['DnCNN', 'USAID', 'SSAID'])
def test_the_authors_released_files_load_strictly(name):
    released = torch.load(CHECKPOINTS / f'{name}.pth', map_location='cpu', weights_only=True)
    net = USAID()
    state = canonical_state_dict(str(CHECKPOINTS / f'{name}.pth'), allow_bare=True, net=net)
    net.load_state_dict(state, strict=True)
    assert list(state) == list(net.state_dict())
    assert all(torch.equal(state[k[len('module.'):]], v) for k, v in released.items())
    assert all(int(v) == 0 for k, v in state.items() if k.endswith('num_batches_tracked'))  # pre-0.4.1: none saved


@pytest.fixture
def torch_loads(monkeypatch):
    """The files ``torch.load`` reads, in order."""
    loads, load = [], torch.load

    def counting(f, *args, **kwargs):
        loads.append(f)
        return load(f, *args, **kwargs)

    monkeypatch.setattr(torch, 'load', counting)
    return loads


def test_each_checkpoint_file_is_read_once(tmp_path, torch_loads):
    torch.save({'params': tiny_state(0), 'params_ema': tiny_state(1)}, tmp_path / 'net_g.pth')
    path = str(tmp_path / 'net_g.pth')
    network_opt = {'type': 'USAID', 'num_feat': 8, 'num_layers': 3}

    net = USAID(num_feat=8, num_layers=3)
    model = USAIDModel.__new__(USAIDModel)  # only load_network is exercised: no options, no device
    logger, logged = logging.getLogger('basicsr'), logging.Handler()
    logged.emit = torch_loads.append  # BasicSR's logger does not propagate to pytest's capture
    level = logger.level
    logger.addHandler(logged)
    logger.setLevel(logging.INFO)  # as BasicSR's pipelines set it with their log file
    try:
        model.load_network(net, path, strict=True, param_key='params_ema')
    finally:
        logger.removeHandler(logged)
        logger.setLevel(level)
    messages = [r.getMessage() for r in torch_loads if isinstance(r, logging.LogRecord)]
    assert f'Loading USAID model from {path}, with param key: [params_ema].' in messages  # BasicSR's line
    assert len(torch_loads) - len(messages) == 1 and same(net.state_dict(), tiny_state(1))

    torch_loads.clear()
    assert same(load_denoiser(path, network_opt).state_dict(), tiny_state(1))
    assert len(torch_loads) == 1

    torch_loads.clear()
    _, weights, param_key = resolve_model(path)
    canonical, _ = canonical_checkpoint('m', weights, network_opt, param_key, str(tmp_path))
    assert len(torch_loads) == 1 and same(load_checkpoint(canonical)['params'], tiny_state(1))  # EMA, as BasicSR


def test_without_replace_a_file_another_process_made_meanwhile_is_kept(tmp_path):
    from usaid.checkpoint import write_atomically
    path = tmp_path / 'export.onnx'

    def write_while_another_process_creates_it(f):
        f.write(b'mine')
        path.write_bytes(b'theirs')
    with pytest.raises(CheckpointError, match='was created by another process while this one wrote it'):
        write_atomically(str(path), write_while_another_process_creates_it, replace=False)
    assert path.read_bytes() == b'theirs' and os.listdir(tmp_path) == ['export.onnx']


def test_an_interrupted_write_leaves_no_temporary_file(tmp_path):
    from usaid.checkpoint import write_atomically

    def interrupted(f):
        f.write(b'half')
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        write_atomically(str(tmp_path / 'x.pth'), interrupted)
    assert os.listdir(tmp_path) == []


def test_exports_given_as_checkpoints_say_what_to_give_instead(tmp_path):
    for name, kind in (('model.onnx', 'an ONNX model'), ('model.pt2', 'a torch.export program')):
        (tmp_path / name).write_bytes(b'PK\x03\x04 not a checkpoint')
        with pytest.raises(CheckpointError, match=f'{name}: is {kind} .*expected the checkpoint it was exported from'):
            load_checkpoint(str(tmp_path / name))
    kair = {f'model.{i}.{p}': torch.zeros(1) for i in (0, 2) for p in ('weight', 'bias')}
    with pytest.raises(CheckpointError, match="KAIR's DnCNN layout .*give the checkpoint it was exported from"):
        check_fits(USAID(num_feat=8, num_layers=3), kair, 'spandrel.pth')


def test_a_safetensors_header_length_beyond_the_file_is_named(tmp_path):
    path = tmp_path / 'huge.safetensors'
    path.write_bytes((2 ** 62).to_bytes(8, 'little') + b'{"a": 1}')
    assert stored_network_options(str(path)) is None
    with pytest.raises(CheckpointError, match='huge.safetensors: cannot be loaded as a safetensors file'):
        load_checkpoint(str(path))
    # its name says what it is, whatever its first bytes: never read by torch.load, whose advice is to unpickle it
    for content in ((2 ** 62).to_bytes(8, 'little') + b'{}', b''):
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match='huge.safetensors: cannot be loaded as a safetensors file'):
            load_checkpoint(str(path))

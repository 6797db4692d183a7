"""Tests written for mutants of usaid/checkpoint.py's atomic writing that survived `make mutation`
(docs/testing.md#mutation-testing): the temporary file's name and place, the file's mode, a write that must not
replace, the defaults, and the words of each failure (the cause as the OS words it, what was kept, what to do)."""
import errno
import os

import pytest
import torch

from usaid.checkpoint import load_checkpoint, save_atomically, write_atomically
from usaid.errors import CheckpointError


def failing(code):
    def write(f):
        f.write(b'half')
        raise OSError(code, os.strerror(code))
    return write


def test_the_temporary_file_is_hidden_beside_the_target_and_named_after_it(tmp_path):
    seen = []

    def write(f):
        seen.extend(os.listdir(tmp_path))
        f.write(b'new')
    write_atomically(str(tmp_path / 'net_g_5.pth'), write)
    assert len(seen) == 1 and seen[0].startswith('.net_g_5.pth.') and seen[0].endswith('.partial'), seen
    assert os.listdir(tmp_path) == ['net_g_5.pth'] and (tmp_path / 'net_g_5.pth').read_bytes() == b'new'


@pytest.mark.parametrize('umask, mode', [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_the_file_gets_the_mode_open_gives_under_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        write_atomically(str(tmp_path / 'f.pth'), lambda f: f.write(b'x'))
    finally:
        os.umask(previous)
    assert (tmp_path / 'f.pth').stat().st_mode & 0o777 == mode


def test_without_replace_a_new_name_is_written_and_nothing_else_is_left(tmp_path):
    write_atomically(str(tmp_path / 'model.onnx'), lambda f: f.write(b'model'), replace=False)
    assert os.listdir(tmp_path) == ['model.onnx'] and (tmp_path / 'model.onnx').read_bytes() == b'model'


def test_by_default_an_existing_file_is_replaced(tmp_path):
    (tmp_path / 'f.pth').write_bytes(b'old')
    write_atomically(str(tmp_path / 'f.pth'), lambda f: f.write(b'new'))
    assert (tmp_path / 'f.pth').read_bytes() == b'new'


@pytest.mark.parametrize('code, advice', [(errno.ENOSPC, 'Free disk space'), (errno.EDQUOT, 'Free disk space'),
                                          (errno.EFBIG, 'Free disk space'), (errno.EIO, 'Fix the cause'),
                                          (errno.EACCES, 'Fix the cause')])
def test_a_failure_names_the_cause_what_was_kept_and_what_to_do(tmp_path, code, advice):
    path = tmp_path / 'f.pth'
    with pytest.raises(CheckpointError) as error:
        write_atomically(str(path), failing(code))
    assert str(error.value) == (f'{path}: could not be written ({os.strerror(code)}); nothing was written. '
                                f'{advice} and run again.')
    path.write_bytes(b'old')
    with pytest.raises(CheckpointError) as error:
        write_atomically(str(path), failing(code), then='try later')
    assert str(error.value) == (f'{path}: could not be written ({os.strerror(code)}); the previous file is kept. '
                                f'{advice} and try later.')
    assert os.listdir(tmp_path) == ['f.pth'] and path.read_bytes() == b'old'


def test_an_error_without_an_os_message_is_quoted_as_it_is(tmp_path):
    def write(f):
        raise RuntimeError('PytorchStreamWriter failed writing file data/0')
    with pytest.raises(CheckpointError, match=r'\(PytorchStreamWriter failed writing file data/0\); nothing was '
                                              r'written\. Fix the cause and run again\.$'):
        write_atomically(str(tmp_path / 'f.pth'), write)


def test_a_name_taken_meanwhile_is_named_in_full(tmp_path):
    path = tmp_path / 'export.onnx'

    def write(f):
        path.write_bytes(b'theirs')
    with pytest.raises(CheckpointError) as error:
        write_atomically(str(path), write, replace=False)
    assert str(error.value) == (f'{path}: was created by another process while this one wrote it; it is kept as it is '
                                'and nothing was written. Choose another name, or replace it on purpose.')


def test_a_failed_save_says_to_resume(tmp_path, monkeypatch):
    path = tmp_path / 'net_g_latest.pth'
    save_atomically({'params': {'w': torch.ones(3)}}, str(path))

    def full_disk(obj, f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(torch, 'save', full_disk)
    with pytest.raises(CheckpointError) as error:
        save_atomically({'params': {'w': torch.zeros(3)}}, str(path))
    assert str(error.value).endswith('; the previous file is kept. Free disk space and resume with --auto_resume.')
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(str(path))['params']['w'], torch.ones(3))

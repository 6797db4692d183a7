"""Atomic writes under faults injected during the write: a process SIGKILLed while it writes (at a point the test
controls), and a failure between the write and the rename. The file's name must show the old content, complete."""
import errno
import os
import signal
import subprocess
import sys

import pytest
import torch

from usaid.checkpoint import load_checkpoint, save_atomically, write_atomically
from usaid.errors import CheckpointError

# The child writes, tells the parent (one line on stdout) that it is inside the write, and waits to be killed.
CHILD = r'''
import sys, time
from usaid.checkpoint import save_atomically, write_atomically

def inside():
    print('inside the write', flush=True)
    time.sleep(600)

path, how = sys.argv[1], sys.argv[2]
if how == 'half-written':  # half of the new bytes are on disk
    def write(f):
        f.write(b'N' * 50_000)
        f.flush()
        inside()
    write_atomically(path, write)
else:  # torch.save of a training state, stopped while it serialises
    import torch

    class Stops:
        def __reduce__(self):
            inside()

    save_atomically({'params': {'w': torch.ones(10_000)}, 'stops': Stops()}, path)
'''


def kill_inside_a_write(path, how):
    child = subprocess.Popen([sys.executable, '-c', CHILD, str(path), how], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == 'inside the write\n', 'the child never reached its write'
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL


@pytest.mark.parametrize('how', ['half-written', 'serialising'])
def test_a_process_killed_inside_a_write_leaves_the_previous_file_complete(tmp_path, how):
    path = tmp_path / '12.state'
    old = {'params': {'w': torch.arange(1000.)}}
    save_atomically(old, str(path))
    before = path.read_bytes()
    kill_inside_a_write(path, how)
    assert path.read_bytes() == before
    assert torch.equal(load_checkpoint(str(path))['params']['w'], old['params']['w'])
    # what the killed process left is hidden beside it (a dot file), never under the name a resume looks for
    assert all(name == '12.state' or name.startswith('.12.state.') for name in os.listdir(tmp_path))


@pytest.mark.parametrize('call, replace', [('replace', True), ('fsync', True), ('link', False)])
def test_a_failure_between_the_write_and_the_rename_keeps_the_previous_file(tmp_path, monkeypatch, call, replace):
    path = tmp_path / 'export.onnx'
    path.write_bytes(b'old content')

    def fails(*args):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    with monkeypatch.context() as patched:
        patched.setattr(os, call, fails)
        with pytest.raises(CheckpointError) as error:
            write_atomically(str(path), lambda f: f.write(b'new content'), replace=replace)
    assert str(error.value).startswith(f'{path}: could not be written (Input/output error); the previous file is kept')
    assert path.read_bytes() == b'old content' and os.listdir(tmp_path) == ['export.onnx']

"""Where the command-line tools may write: outputs apart from their inputs, labels that become file names, folders
that can be written, a lock per output that two runs share, and the SHA-256 of a file.

Paths are compared after resolving symbolic links (``os.path.realpath``), so a link to the input folder is the input
folder. Nothing here writes, except :func:`output_lock`'s lock file.
"""
import contextlib
import hashlib
import fcntl
import os
import socket
import sys
import time
import unicodedata
from os import path as osp

from usaid.errors import USAIDError

# a label is a part of a file name; NAME_MAX is 255 bytes, and the tools add suffixes such as '_sigma25'
MAX_LABEL_BYTES = 100


class OutputInUseError(USAIDError, RuntimeError):
    """Another process is writing the same output."""


def relation(path, other):
    """How ``path`` lies against ``other`` once links are resolved: ``'the same path as'``, ``'inside'``,
    ``'a folder containing'``, or None when they are apart."""
    path, other = osp.realpath(path), osp.realpath(other)
    if path == other:
        return 'the same path as'
    common = osp.commonpath([path, other])
    if common == other:
        return 'inside'
    if common == path:
        return 'a folder containing'
    return None


def check_label(label, what):
    """``label`` if it can be one file name under a tool's output folder; else ``ValueError`` saying why. Labels
    given by the user (model names) become parts of file names: ``../x`` or ``a/b`` would write elsewhere."""
    problem = None
    if not label:
        problem = 'it is empty'
    elif '/' in label or '\\' in label:
        problem = 'it holds a path separator'
    elif label in ('.', '..'):
        problem = 'it names a folder'
    elif any(unicodedata.category(c) == 'Cc' for c in label):
        problem = 'it holds a control character'
    elif len(label.encode()) > MAX_LABEL_BYTES:
        problem = f'it is longer than {MAX_LABEL_BYTES} bytes'
    if problem:
        raise ValueError(f"{what} {label!r}: {problem}; it is used in file names, so expected one file name: no '/' "
                         f"or '\\', not '.' or '..', no control characters, at most {MAX_LABEL_BYTES} bytes.")
    return label


def check_writable(path, what):
    """Raise ``ValueError`` unless ``path`` (a file or folder to write, existing or not) can be made: its nearest
    existing ancestor must be a folder this process may write. Checked before any work, and without creating
    anything, so that a run that would fail at its first write fails before it starts."""
    path = osp.abspath(path)
    ancestor = path if osp.isdir(path) else osp.dirname(path)
    while not osp.lexists(ancestor):
        ancestor = osp.dirname(ancestor)
    if not osp.isdir(ancestor):
        raise ValueError(f'{what} {path}: cannot be made, because {ancestor} is a file, not a folder; expected a '
                         'path under a folder.')
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f'{what} {path}: cannot be made, because the folder {ancestor} is not writable by this '
                         'user; choose another place.')


def take_lock(lock_path):
    """Lock ``lock_path`` (made if missing) with ``flock`` for this process and write who holds it: ``pid P on HOST
    since TIME: COMMAND``. The kernel releases the lock when the process ends, however it ends (no stale lock after a
    crash or ``kill -9``). Returns the open descriptor (the lock lasts while it is open), or raises BlockingIOError
    with the holder's text as its message if another process holds it.

    A holder may remove the lock file on release while still locked; a process that opened the file before the
    removal sees that the path no longer leads to the file it locked, and starts over on the new one.
    """
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors='replace').strip() or 'a process starting up'
            os.close(fd)
            raise BlockingIOError(holder) from None
        try:
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f'pid {os.getpid()} on {socket.gethostname()} since {time.strftime("%Y-%m-%d %H:%M:%S")}: '
                 f'{" ".join(sys.argv)}'.encode())
    return fd


@contextlib.contextmanager
def output_lock(path, tool):
    """Hold the lock of output ``path`` for the block (:func:`take_lock` on ``.<name>.lock`` beside it; the file is
    removed on release). A second process asking for the same output gets :class:`OutputInUseError` naming the
    first one."""
    path = osp.abspath(path)
    lock_path = osp.join(osp.dirname(path), f'.{osp.basename(path)}.lock')
    try:
        fd = take_lock(lock_path)
    except BlockingIOError as holder:
        raise OutputInUseError(f'{path}: another {tool} ({holder}) is writing it now; wait until it ends, '
                               'or stop it, or choose another output.') from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(lock_path)
        os.close(fd)


def file_sha256(path):
    """The SHA-256 of the file at ``path`` (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()

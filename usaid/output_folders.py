"""Experiment and results folders that no other run touches.

BasicSR makes a run's folder (``experiments/<name>`` to train, ``results/<name>`` to test) with ``mkdir_and_rename``,
which first renames an existing folder to ``<name>_archived_<time>``, even while another run still writes to it: that
run's later checkpoints land in the new run's folder and its final weights are lost. Here each such folder has a lock,
the file ``.<name>.lock`` beside it, held by the run that uses the folder for as long as its process lives
(``fcntl.flock``: the kernel releases it when the process ends, however it ends, so a crashed run never blocks the
next one). The lock file holds its holder's pid, host and command, for the message of a run that finds it taken.
"""
import os
import time
from os import path as osp

from usaid.errors import OutputFolderError
from usaid.paths import take_lock

_held = {}  # lock file -> its open descriptor: kept open, and so the lock held, until the process ends


def _cannot_make(path, error):
    return OutputFolderError(f'{path}: cannot be made ({error.strerror or error}); expected a folder this user can '
                             'write. Run from a folder you can write (runs write under the current folder), or free or '
                             'fix that path; nothing was written.')


def make_folder(path):
    """``os.makedirs(path, exist_ok=True)``, with an ``OutputFolderError`` naming ``path`` if it cannot be made.

    Args:
        path (str): The folder.
    """
    try:
        os.makedirs(path, exist_ok=True)
    except (OSError, ValueError) as error:
        raise _cannot_make(path, error) from None


def lock_folder(folder):
    """Hold the lock of ``folder`` until this process ends; an ``OutputFolderError`` naming the process that holds it
    if another does. Taking it again in the same process does nothing.

    Args:
        folder (str): A run's folder (it need not exist; its parent is made).
    """
    parent = osp.dirname(osp.abspath(folder))
    make_folder(parent)
    lock_file = osp.join(osp.realpath(parent), f'.{osp.basename(folder)}.lock')
    if lock_file in _held:
        return
    try:
        fd = take_lock(lock_file)
    except BlockingIOError as holder:
        raise OutputFolderError(f'{folder}: in use by another run ({holder}), which holds {lock_file}; expected a '
                                'folder no live run uses. Wait until that run ends, or choose another name (name: in '
                                'the option file, or --force_yml name=NEW); nothing was written.') from None
    except OSError as error:
        raise _cannot_make(lock_file, error) from None
    _held[lock_file] = fd


def archive_and_make(path):
    """Make ``path``, first renaming an existing one to ``<path>_archived_<time>`` as BasicSR does; an
    ``OutputFolderError`` if ``path`` goes up a folder (``..``), is a symbolic link, or cannot be renamed or made.

    Args:
        path (str): The folder.
    """
    if '..' in path.replace('\\', '/').split('/'):
        raise OutputFolderError(f"{path}: goes up a folder ('..'); expected a run's folder inside its output tree "
                                '(a name without /, \\ or ..); nothing was written.')
    if osp.islink(path):
        raise OutputFolderError(f'{path}: is a symbolic link (to {os.readlink(path)}); expected a folder of its own, '
                                'or none: an existing folder is archived by renaming it. Remove the link, or choose '
                                'another name; nothing was written.')
    if osp.exists(path):
        archived = f'{path}_archived_{time.strftime("%Y%m%d_%H%M%S")}'
        print(f'Path already exists. Rename it to {archived}', flush=True)
        try:
            os.rename(path, archived)
        except OSError as error:
            raise OutputFolderError(f'{path}: cannot be renamed to {archived} ({error.strerror}); expected a folder '
                                    'this user can rename. Move it away, or choose another name.') from None
    make_folder(path)

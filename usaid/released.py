"""The authors' released denoisers by name: ``usaid``, ``ssaid``, ``cdncnn-b``.

Each is fetched from the authors' repository (https://github.com/VITA-Group/USAID, ``Saved_Models/``) the first time
it is asked for, into torch's hub cache (``$TORCH_HOME/hub/checkpoints``, as ``torch.hub`` keeps downloads), and its
SHA-256 is checked every time it is used: a wrong or truncated file is removed and refused. The repository has no
licence file, so the bytes are never shipped with this package. The files are bare state dicts of a 20-layer colour
DnCNN, which :func:`usaid.checkpoint.canonical_state_dict` reads as they are (``allow_bare``).
"""
import os
import socket
from dataclasses import dataclass

import torch

from usaid.errors import CheckpointError
from usaid.paths import file_sha256

SOURCE = 'https://github.com/VITA-Group/USAID/raw/master/Saved_Models/'
DOWNLOAD_TIMEOUT = 60  # seconds without an answer: torch's download has none, and a dropped connection would hang


@dataclass(frozen=True)
class ReleasedModel:
    """One released file: its name in the authors' repository and its SHA-256."""
    filename: str
    sha256: str

    @property
    def url(self):
        return SOURCE + self.filename

    @property
    def cached_path(self):
        """Where torch's hub cache keeps (and looks for) the file."""
        return os.path.join(torch.hub.get_dir(), 'checkpoints', self.filename)


RELEASED = {
    'usaid': ReleasedModel('USAID.pth', '1c8a625cd40f6b1f3fd5e406d068b9a65100ba10ebdb1df7f8684237c568a356'),
    'ssaid': ReleasedModel('SSAID.pth', 'f9e6745d4090618952d1634150ea9cfc44f8d225f1477c2be173f5ebc9fef313'),
    'cdncnn-b': ReleasedModel('DnCNN.pth', '138823c110f5a09dd243278a9cc1b83066caac06263f5eba6b322bf711812e60'),
}
NETWORK = {'type': 'USAID'}  # all three: USAID's defaults (20 layers, 64 features, BatchNorm, colour)


def is_released_name(spec):
    """Whether ``spec`` names a released model: exactly one of the names. A file or folder of that name in the
    working folder is ``./usaid``: a stray file must not replace the default model of a tool."""
    return isinstance(spec, str) and spec in RELEASED


def released_name_like(spec):
    """The released model's name that ``spec`` spells in other letter cases (``USAID`` for ``usaid``), or None: for a
    message that suggests it, since such a spec is taken as a file name."""
    return next((name for name in RELEASED if isinstance(spec, str) and spec.lower() == name), None)


def released_path(name, progress=True):
    """The cached file of the released model ``name``, downloaded first if it is not there (with a progress bar).

    A cached or downloaded file whose SHA-256 differs from the published one is removed, and
    :class:`~usaid.errors.CheckpointError` says so; so does a download that fails (offline), naming the URL and the
    exact file to place, and a folder where the file belongs (left as it is)."""
    model = RELEASED[name]
    path = model.cached_path
    if os.path.isdir(path):  # no download would replace it, and reading it fails with a bare OSError
        raise CheckpointError(f'{name}: {path} is a folder, not the model\'s file; expected the file {model.filename} '
                              f'there: move the folder away, and {model.url} is downloaded there at the next use.')
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        partial = f'{path}.partial'
        timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
        try:
            torch.hub.download_url_to_file(model.url, partial, progress=progress)
            os.replace(partial, path)
        except OSError as error:  # URLError, a timeout, a refused connection, a full disk are OSErrors
            if os.path.exists(partial):
                os.remove(partial)
            raise CheckpointError(f'{name}: could not download {model.url} ({getattr(error, "reason", error)}). '
                                  f'Download it yourself and place it at {path} (the folder is '
                                  '$TORCH_HOME/hub/checkpoints).') from None
        finally:
            socket.setdefaulttimeout(timeout)
    found = file_sha256(path)
    if found != model.sha256:
        os.remove(path)
        raise CheckpointError(f'{name}: {path} has SHA-256 {found}, not the published {model.sha256} (a truncated or '
                              f'different file); it was removed. Run again to download {model.url} anew, or place '
                              'the right file there.')
    return path

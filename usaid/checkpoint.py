"""Checkpoint files: written atomically, loaded without unpickling code, checked against the network they load into.

BasicSR 1.4.2's ``save_network`` retries a failed ``torch.save`` three times and then only logs a warning, leaving
a partly written file under the checkpoint's own name; its ``load_network`` fails on a mismatching file with
``load_state_dict``'s error after a ``KeyError`` for a missing ``params``. These helpers give instead: the previous
file intact and an error naming the file and the cause; and the keys and shapes that do not fit. What a checkpoint
file is (BasicSR's ``params``/``params_ema``, the authors' released state dicts, ``module.`` prefixes) is decided in
one place, :func:`canonical_state_dict`, which every loader calls.
"""
import contextlib
import errno
import io
import json
import os
import re
import tempfile
from os import path as osp

import torch

from usaid.errors import CheckpointError
from usaid.extras import require

_LISTED = 5  # keys quoted in a message
EXPORT_KINDS = {'.onnx': 'an ONNX model', '.pt2': 'a torch.export program'}  # refused with what to give instead
SAFETENSORS_LAYOUT = 'basicsr'  # the metadata 'format' of the safetensors files written here
SAVE_FORMATS = {'pth': '.pth', 'safetensors': '.safetensors'}  # logger:save_format: the suffix of network checkpoints


def save_atomically(obj, path):
    """``torch.save(obj)`` to ``path`` by :func:`write_atomically` (a training's checkpoints and states)."""
    write_atomically(path, lambda f: torch.save(obj, f), then='resume with --auto_resume')


def write_atomically(path, write, replace=True, then='run again'):
    """Call ``write(f)`` on a new hidden temporary file in the folder of ``path``, flush it to disk and rename it to
    ``path``: a reader sees the old file or the new one, never a partial one. The temporary file is made exclusively
    under a name nobody else has (``tempfile.mkstemp``), so a file or link planted beside ``path`` is never written
    through. With ``replace`` False an existing ``path`` is never replaced, not even one made by another process
    while this one wrote (the file is linked into place, which fails if the name exists). If anything fails (disk
    full, quota, I/O error, the name taken) the temporary file is removed, ``path`` is left as it was, and
    :class:`CheckpointError` says why and what to do (``then``)."""
    folder, name = osp.split(osp.abspath(path))
    descriptor, partial = tempfile.mkstemp(prefix=f'.{name}.', suffix='.partial', dir=folder)
    try:
        os.fchmod(descriptor, 0o666 & ~_umask())  # mkstemp makes it private; a checkpoint gets open()'s usual mode
        with os.fdopen(descriptor, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(partial, path)
        else:
            os.link(partial, path)  # atomic and never replaces: FileExistsError if the name was taken meanwhile
            os.remove(partial)
    except BaseException as error:  # Ctrl-C too: no temporary file is left behind
        with contextlib.suppress(OSError):
            os.remove(partial)
        if not isinstance(error, (OSError, RuntimeError)):  # torch reports a failed zip write as RuntimeError
            raise
        kept = 'the previous file is kept' if osp.lexists(path) else 'nothing was written'
        if isinstance(error, FileExistsError):
            raise CheckpointError(f'{path}: was created by another process while this one wrote it; it is kept as '
                                  'it is and nothing was written. Choose another name, or replace it on '
                                  'purpose.') from None
        full = getattr(error, 'errno', None) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        advice = 'Free disk space' if full else 'Fix the cause'
        raise CheckpointError(f'{path}: could not be written ({getattr(error, "strerror", None) or error}); {kept}. '
                              f'{advice} and {then}.') from error


def save_network_file(checkpoint, path, save_format='pth', network_opt=None):
    """Write BasicSR's network checkpoint ``{param_key: state dict}`` to ``path`` atomically, as a torch file
    (``pth``) or as safetensors (:func:`safetensors_bytes`, naming ``network_opt``); :func:`load_checkpoint` reads
    either back."""
    if save_format == 'safetensors':
        content = safetensors_bytes(checkpoint, network_opt)
        write_atomically(path, lambda f: f.write(content), then='resume with --auto_resume')
    else:
        save_atomically(checkpoint, path)


def saved_networks(models, label='net_g'):
    """The numbered network checkpoints ``<label>_<iter>`` of a training run's ``models`` folder, in any of
    :data:`SAVE_FORMATS`, by iteration."""
    pattern = re.compile(re.escape(label) + r'_(\d+)(' + '|'.join(map(re.escape, SAVE_FORMATS.values())) + ')$')
    found = [(int(m.group(1)), m.group(0)) for m in map(pattern.match, os.listdir(models) if osp.isdir(models) else [])
             if m]
    return [osp.join(models, name) for _, name in sorted(found)]


def saved_network(models, label='net_g', iteration='latest'):
    """The checkpoint ``<models>/<label>_<iteration>`` a run saved, in whichever of :data:`SAVE_FORMATS` exists (the
    newest file if both do: a run whose ``logger:save_format`` changed); None if none exists."""
    paths = [osp.join(models, f'{label}_{iteration}{suffix}') for suffix in SAVE_FORMATS.values()]
    paths = [p for p in paths if osp.isfile(p)]
    return max(paths, key=osp.getmtime) if paths else None


def _umask():
    mask = os.umask(0)  # reading the mask means setting it
    os.umask(mask)
    return mask


def safetensors_bytes(states, network_opt=None):
    """BasicSR's checkpoint ``{param_key: state dict}`` (``params``, ``params_ema``) as the content of one safetensors
    file. safetensors holds one flat mapping of tensors, so each key is stored as ``<param_key>.<name>``, and the
    metadata names the layout, the param keys and (``network_opt``) the ``network_g`` options that build the network,
    so that tools load the file without an option file. :func:`load_checkpoint` reads it back."""
    safetensors_torch = require('safetensors', 'safetensors.torch', feature='A safetensors checkpoint')
    flat = {f'{key}.{name}': tensor.detach().cpu().contiguous()
            for key, state in states.items() for name, tensor in state.items()}
    metadata = {'format': SAFETENSORS_LAYOUT, 'param_keys': ','.join(states)}
    if network_opt is not None:
        metadata['network_g'] = json.dumps(network_opt)
    return safetensors_torch.save(flat, metadata)


def _load_safetensors(path, content):
    """A safetensors file as :func:`load_checkpoint` returns checkpoints: BasicSR's ``{param_key: state dict}`` for
    a file of :func:`safetensors_bytes`, else the flat state dict it holds (spandrel's, traiNNer-redux's)."""
    safetensors_torch = require('safetensors', 'safetensors.torch', feature=f'{path}: a safetensors file')
    try:
        flat = safetensors_torch.load(content)
    except Exception as error:  # noqa: BLE001  (the Rust reader raises its own SafetensorError for bad bytes)
        raise CheckpointError(f'{path}: cannot be loaded as a safetensors file ({error}).') from None
    metadata = _safetensors_metadata(path, content)
    if metadata.get('format') != SAFETENSORS_LAYOUT:
        return flat
    states = {key: {} for key in metadata.get('param_keys', '').split(',') if key}
    for name, tensor in flat.items():
        key, _, rest = name.partition('.')
        if key not in states:
            raise CheckpointError(f'{path}: holds {name!r}, outside the param keys its metadata lists '
                                  f'({", ".join(states)}); expected a file written by basicsr-usaid.')
        states[key][rest] = tensor
    return states


def stored_network_options(path):
    """The ``network_g`` options that a checkpoint file names (a safetensors file of :func:`safetensors_bytes`), or
    None. Reads the file's header only."""
    try:
        with open(path, 'rb') as f:
            head = f.read(10)
            if not _is_safetensors(head):
                return None
            length = int.from_bytes(head[:8], 'little')
            if length > os.fstat(f.fileno()).st_size:  # a damaged length: load_checkpoint names the file
                return None
            f.seek(0)
            metadata = _safetensors_metadata(path, f.read(8 + length))
    except OSError:  # missing, a folder, unreadable: load_checkpoint says so when the weights are loaded
        return None
    try:
        return json.loads(metadata['network_g']) if 'network_g' in metadata else None
    except json.JSONDecodeError as error:
        raise CheckpointError(f'{path}: its network_g metadata is not JSON ({error}).') from None


def _safetensors_metadata(path, content):
    """The string metadata of a safetensors file from its ``content`` (at least its header: 8 bytes of length, then
    JSON)."""
    try:
        header = json.loads(content[8:8 + int.from_bytes(content[:8], 'little')])
    except (json.JSONDecodeError, UnicodeDecodeError, OverflowError, ValueError) as error:
        raise CheckpointError(f'{path}: cannot be loaded as a safetensors file (its header: {error}).') from None
    metadata = header.get('__metadata__') if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def _is_safetensors(head):
    # an 8-byte little-endian header length, then the JSON header; torch's files start with PK (zip) or a pickle
    return len(head) >= 10 and head[8:10] == b'{"'


def load_checkpoint(path, content=None):
    """A checkpoint loaded with ``weights_only=True`` (tensors and containers only: no code from the file runs), or a
    safetensors file (:func:`safetensors_bytes`; recognised by its content, whatever its name). ``content``: the bytes
    of ``path`` when the caller has read them already (to hash them), so the file is read once."""
    try:
        if content is None:
            with open(path, 'rb') as f:
                content = f.read()
    except FileNotFoundError:
        raise CheckpointError(f'{path}: does not exist.') from None
    except IsADirectoryError:
        raise CheckpointError(f'{path}: is a folder; expected a checkpoint file.') from None
    if _is_safetensors(content[:10]) or str(path).lower().endswith('.safetensors'):
        return _load_safetensors(path, content)
    export = EXPORT_KINDS.get(osp.splitext(str(path))[1].lower())
    if export:
        raise CheckpointError(f'{path}: is {export} (usaid-export writes them for other programs), not a checkpoint; '
                              'expected the checkpoint it was exported from (.pth, or a --format safetensors export). '
                              'Running exports: docs/export.md.')
    try:
        return torch.load(io.BytesIO(content), map_location='cpu', weights_only=True)
    except Exception as error:  # noqa: BLE001  (garbage makes the unpickler raise anything: KeyError, EOFError, ...)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f'{path}: cannot be loaded as a PyTorch checkpoint of weights ({first_line}).') from None


def stored_param_key(checkpoint, path, param_key='params', allow_bare=False):
    """The entry of ``checkpoint`` (loaded from ``path``) that holds the network's state dict, by BasicSR's rule
    (``params`` when ``params_ema`` is absent), or None when the checkpoint itself is the state dict: ``param_key``
    None (BasicSR's ``param_key_g: ~``), or, with ``allow_bare``, a bare state dict of tensors (the authors' released
    files, torchvision's weights). :class:`CheckpointError` when there is no such entry."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'{path}: holds a {type(checkpoint).__name__}; expected a dict of network weights.')
    if param_key is None:
        return None
    if param_key not in checkpoint and param_key == 'params_ema' and 'params' in checkpoint:
        return 'params'
    if param_key in checkpoint:
        return param_key
    bare = bool(checkpoint) and all(torch.is_tensor(v) for v in checkpoint.values())
    if bare and allow_bare:
        return None
    hint = (' It is a bare state dict (e.g. the authors\' released files): run usaid-convert on it, or set '
            'path:param_key_g to ~.') if bare else ''
    raise CheckpointError(f'{path}: has no {param_key!r} entry (it has {", ".join(map(str, checkpoint))}); '
                          f'expected a BasicSR checkpoint.{hint}')


def canonical_state_dict(path, param_key='params', allow_bare=False, net=None, strict=True, checkpoint=None):
    """The network state dict that the checkpoint file ``path`` holds, whatever its layout: the one place that decides
    what a checkpoint file is. The file is loaded here (:func:`load_checkpoint`) unless ``checkpoint``, its content,
    is given.

    Layouts: BasicSR's ``{param_key: state dict}`` (:func:`stored_param_key`); with ``allow_bare``, also a bare state
    dict, such as the authors' released files (``DnCNN.pth``, ``USAID.pth``, ``SSAID.pth``: saved from
    ``nn.DataParallel`` by a pre-0.4.1 PyTorch, so keys ``module.*`` and no BatchNorm ``num_batches_tracked``).
    DataParallel's ``module.`` prefixes are removed. With ``net``, BatchNorm counters the file lacks are added as
    zeros (PyTorch's initial value), the state is checked to fit ``net`` (:func:`check_fits`, ``strict`` as
    ``load_state_dict``), and its keys come in ``net``'s order.
    """
    if checkpoint is None:
        checkpoint = load_checkpoint(path)
    key = stored_param_key(checkpoint, path, param_key, allow_bare)
    state = checkpoint if key is None else checkpoint[key]
    if not isinstance(state, dict):
        raise CheckpointError(f'{path}: {key!r} holds a {type(state).__name__}; expected a state dict.')
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    if net is None:
        return state
    own = net.state_dict()
    for k, value in own.items():
        if k.endswith('num_batches_tracked') and k not in state:
            state[k] = torch.zeros_like(value)
    check_fits(net, state, path, strict)
    return {**{k: state[k] for k in own if k in state}, **state}


def check_fits(net, state, path, strict=True):
    """Raise :class:`CheckpointError` naming the keys and shapes of ``state`` that do not fit ``net``: missing and
    unexpected keys (only when ``strict``, as ``load_state_dict``) and, always, mismatching shapes."""
    own = net.state_dict()
    missing = [k for k in own if k not in state] if strict else []
    unexpected = [k for k in state if k not in own] if strict else []
    shapes = [f'{k}: checkpoint {tuple(state[k].shape)}, network {tuple(own[k].shape)}'
              for k in own if k in state and torch.is_tensor(state[k]) and state[k].shape != own[k].shape]
    if not (missing or unexpected or shapes):
        return

    def listed(keys):
        return ', '.join(keys[:_LISTED]) + (f' and {len(keys) - _LISTED} more' if len(keys) > _LISTED else '')

    parts = [f'{len(keys)} {what}: {listed(keys)}' for what, keys in (
        ('missing key(s)', missing), ('unexpected key(s)', unexpected), ('shape mismatch(es)', shapes)) if keys]
    kair = all(re.fullmatch(r'model\.\d+\.(weight|bias)', k) for k in state)  # usaid-export --format spandrel
    hint = (' Its keys are KAIR\'s DnCNN layout (a spandrel export of usaid-export, or a KAIR model): give the '
            'checkpoint it was exported from.') if kair and state else ''
    raise CheckpointError(f'{path}: does not fit the network {type(net).__name__}: ' + '; '.join(parts)
                          + '. Expected a checkpoint of the same architecture and options (compare network_g with '
                          f'the options the checkpoint was trained with).{hint}')


def check_finite(state, path):
    """Raise :class:`CheckpointError` if a floating-point tensor of ``state`` holds NaN or infinity: such weights
    must not replace a good checkpoint."""
    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f'{path}: not written: the network has non-finite values in {", ".join(bad[:_LISTED])}; '
                              'the previous checkpoint is kept.')

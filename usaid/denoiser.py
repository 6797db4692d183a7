"""Denoisers for the tools: which network and weights a model names, the network loaded from any checkpoint layout,
and images denoised in tiles of bounded memory."""
import glob
import os
import warnings
from collections.abc import Mapping
from os import path as osp

import torch
from basicsr.archs import build_network
from torch import nn

from usaid import yaml_io
from usaid.archs import USAID
from usaid.arguments import check_at_least
from usaid.checkpoint import canonical_state_dict, load_checkpoint, saved_network, stored_network_options
from usaid.inference import InferenceNetwork
from usaid.released import NETWORK as RELEASED_NETWORK
from usaid.released import RELEASED, is_released_name, released_name_like, released_path

DEFAULT_NETWORK = {'type': 'USAID'}
# below this a tile with its context on every side computes each pixel many times over ((16 + 2 * 32)^2 / 16^2 = 25
# times at the default overlap) for no gain: memory is bounded well before
MIN_TILE = 16


def resolve_model(spec):
    """``(network_g options, checkpoint path, param_key)`` of a released model's name (:mod:`usaid.released`:
    fetched into the hub cache), a checkpoint (U-SAID's architecture; the authors' released files too), an option
    file (``network_g`` and ``path: pretrain_network_g``) or an experiment folder (its option file and
    ``models/net_g_latest.pth``)."""
    spec = os.fspath(spec)
    if is_released_name(spec):
        return dict(RELEASED_NETWORK), released_path(spec), None
    if osp.isdir(spec):
        options = sorted(glob.glob(osp.join(spec, '*.yml')))
        weights = saved_network(osp.join(spec, 'models'))  # .pth or .safetensors (logger:save_format)
        if not options or weights is None:
            raise ValueError(f'{spec}: expected an experiment folder with its option file (*.yml) and '
                             'models/net_g_latest.pth (or .safetensors).')
        with open(options[0]) as f:
            opt = yaml_io.load(f)
        return dict(opt['network_g']), weights, 'params_ema' if (opt.get('train') or {}).get('ema_decay') else 'params'
    if spec.endswith(('.yml', '.yaml')):
        with open(spec) as f:
            opt = yaml_io.load(f)
        path_opt = opt.get('path') or {}
        weights = path_opt.get('pretrain_network_g')
        if not weights:
            raise ValueError(f'{spec}: path:pretrain_network_g is empty; expected the checkpoint of the model.')
        if is_released_name(weights):
            return dict(opt['network_g']), released_path(weights), None
        return dict(opt['network_g']), weights, path_opt.get('param_key_g', 'params')
    if osp.isfile(spec):  # BasicSR's rule: the EMA weights if stored, else params
        return dict(network_options_of(spec)), spec, 'params_ema'
    name = released_name_like(spec)
    if name:  # taken as a file name: a name in other letter cases is not the model, so that ./USAID stays a file
        raise ValueError(f'{spec}: no such file or folder; did you mean the released model {name!r}? Released models '
                         f'are named in lower case ({", ".join(RELEASED)}).')
    raise ValueError(f'{spec}: no such file or folder; expected a checkpoint, an option file, an experiment folder or '
                     f'a released model ({", ".join(RELEASED)}).')


def network_options_of(weights):
    """The ``network_g`` options a checkpoint file names (a safetensors export holds them), else U-SAID's."""
    stored = stored_network_options(weights)
    return DEFAULT_NETWORK if stored is None else check_network_opt(stored, f'{weights}: its network_g metadata')


def check_network_opt(network_opt, name):
    """``network_opt`` if it can build a network (a mapping with a ``type``, as ``network_g`` in an option file), else
    a ``ValueError`` naming it as ``name``: BasicSR's ``build_network`` would fail with a bare ``KeyError: 'type'``."""
    if not (isinstance(network_opt, Mapping) and 'type' in network_opt):
        found = dict(network_opt) if isinstance(network_opt, Mapping) else network_opt  # an option file's OrderedDict
        raise ValueError(f'{name}: found {found!r}; expected network_g options with the architecture\'s type, '
                         "e.g. {'type': 'USAID', 'num_layers': 17}.")
    return network_opt


def read_network_opt(option_file):
    """The ``network_g`` options of ``option_file`` (a tool's ``-opt``), checked to name an architecture."""
    with open(option_file) as f:
        opt = yaml_io.load(f)
    return check_network_opt(opt.get('network_g') if isinstance(opt, Mapping) else None,
                             f'-opt {option_file}: network_g')


def build_denoiser_network(network_opt, origin):
    """The network of ``network_opt`` (``network_g`` options), or a ``ValueError`` naming ``origin`` (the model it is
    for) and why BasicSR cannot build it: an unknown ``type``, arguments the architecture does not take."""
    try:
        return build_network(dict(check_network_opt(network_opt, f'{origin}: network_g')))
    except (KeyError, TypeError) as error:  # BasicSR's registry, the architecture's signature
        raise ValueError(f'{origin}: network_g {dict(network_opt)} cannot be built ({error}); expected the options of '
                         'a registered architecture.') from None


def load_denoiser(weights, network_opt=None, device='cpu', param_key='params_ema'):
    """A network in eval mode from a BasicSR checkpoint (``param_key`` preferred, else ``params``) or a bare state
    dict such as the authors' released files (:func:`~usaid.checkpoint.canonical_state_dict`), or a released model's
    name."""
    if is_released_name(weights):
        weights = released_path(weights)
    network_opt = network_opt or network_options_of(weights)
    try:  # the file is checked against a network without memory first: its own metadata may ask for terabytes
        with torch.device('meta'):
            shapes = build_denoiser_network(network_opt, weights)
    except (ValueError, RuntimeError, NotImplementedError):  # an architecture that makes real tensors (ECBSR)
        shapes = None
    checkpoint = load_checkpoint(weights)  # read once for both checks
    if shapes is not None:
        canonical_state_dict(weights, param_key, allow_bare=True, net=shapes, checkpoint=checkpoint)
    net = build_denoiser_network(network_opt, weights)
    net.load_state_dict(canonical_state_dict(weights, param_key, allow_bare=True, net=net, checkpoint=checkpoint))
    return net.eval().to(device)


@torch.inference_mode()
def denoise(net, image, tile=None, overlap=32, device='cpu'):
    """Denoise a (1, C, H, W) CPU tensor; the result stays on the CPU. With ``tile``, the image is processed in
    ``tile`` x ``tile`` pieces, each read with ``overlap`` extra pixels of context on every side, which are dropped
    again: with ``overlap`` at least the network's receptive radius (20 for the default USAID) the result equals the
    untiled one up to float rounding. For a network that takes only sizes that are multiples of some number
    (:attr:`InferenceNetwork.size_multiple`: SwinIR's window, RRDBNet's unshuffle), ``tile`` and ``overlap`` are
    rounded up to multiples of it, so that every piece starts on the grid the whole image would use. A ``UserWarning``
    says when the overlap is below a receptive radius that is known (:func:`receptive_radius`)."""
    check_tiling(tile or 0, overlap, 'tile', 'overlap')
    _, _, height, width = image.shape
    if not tile or (height <= tile and width <= tile):
        return net(image.to(device)).cpu()
    if isinstance(net, InferenceNetwork):
        multiple = net.prepare(image[..., :64, :64].to(device))
        tile, overlap = -(-tile // multiple) * multiple, -(-overlap // multiple) * multiple
    radius = receptive_radius(net)
    if radius is not None and overlap < radius:
        warnings.warn(f'overlap {overlap}: less than the receptive radius of the network ({radius} pixels), so the '
                      'tiled result differs from the untiled one along the tile borders (seams); expected an overlap '
                      f'of at least {radius} pixels.', UserWarning)
    output = torch.empty_like(image)
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(top + tile, height), min(left + tile, width)
            y0, x0 = max(top - overlap, 0), max(left - overlap, 0)
            y1, x1 = min(bottom + overlap, height), min(right + overlap, width)
            piece = net(image[..., y0:y1, x0:x1].to(device)).cpu()
            output[..., top:bottom, left:right] = piece[..., top - y0:bottom - y0, left - x0:right - x0]
    return output


def check_tiling(tile, overlap, tile_name, overlap_name):
    """Refuse a tile size or overlap that would give a wrong or useless result: a negative tile covers nothing (the
    output would be uninitialised memory), a tiny one recomputes each pixel many times, a negative overlap drops
    pixels. The messages name them as the caller takes them: ``tile_name`` and ``overlap_name``."""
    if tile < 0 or 0 < tile < MIN_TILE:
        why = ('a negative size covers no pixel' if tile < 0 else f'a {tile}-pixel tile reads (tile + 2 x overlap)^2 = '
               f'{(tile + 2 * max(overlap, 0)) ** 2} pixels to make {tile * tile}')
        raise ValueError(f'{tile_name} {tile}: expected 0 (the whole image at once) or a tile size >= {MIN_TILE} '
                         f'pixels; {why}.')
    check_at_least(overlap, 0, overlap_name, ' (the context read around each tile, in pixels)')


def receptive_radius(net):
    """How many pixels on each side of an output pixel ``net`` reads, where that is known, else None. U-SAID is a plain
    stack of convolutions with stride 1 (k x k with padding k // 2; no pooling), each widening what a pixel sees by
    k // 2 pixels on every side: 20 pixels for the default 20 layers of 3 x 3. An
    :class:`~usaid.inference.InferenceNetwork` replaces the network by a traced copy at its first image, so
    :func:`usaid.api.load_denoiser` keeps the radius of the network it wraps as its ``receptive_radius``."""
    if isinstance(net, USAID):
        return sum(conv.kernel_size[0] // 2 for conv in net.modules() if isinstance(conv, nn.Conv2d))
    return getattr(net, 'receptive_radius', None)

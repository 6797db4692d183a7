"""U-SAID from Python, without option files: ``usaid.load_denoiser`` and ``usaid.denoise``.

    import usaid
    net = usaid.load_denoiser('usaid')              # the authors' U-SAID, fetched once; or a checkpoint path
    clean = usaid.denoise(noisy_rgb, net, tile=512)  # NumPy in, NumPy out: same shape and dtype

The same network loading (:func:`usaid.denoiser.load_denoiser`), fast inference (:class:`~usaid.inference.
InferenceNetwork`) and tiling (:func:`usaid.denoiser.denoise`) as ``usaid-denoise``, which is a wrapper of these
functions and :func:`as_image` around image files.
"""
import numbers
import os
import warnings

import cv2
import numpy as np
import torch
from torch import nn

from usaid import denoiser
from usaid.arguments import resolve_device
from usaid.inference import InferenceNetwork
from usaid.released import is_released_name

_INTEGER_TYPES = (np.uint8, np.uint16)
# a noisy [0, 1] image reaches about 1 + 4 sigma (1.8 at sigma 50); a 0-255 image almost always exceeds this
FLOAT_SCALE_LIMIT = 4.0


def best_device():
    """The first GPU if torch sees one, else the CPU."""
    return torch.device(resolve_device('auto'))


def load_denoiser(model='usaid', device=None, network_opt=None, param_key=None, **inference):
    """A denoiser ready for :func:`denoise`: eval mode, no gradients, on ``device`` (default: :func:`best_device`).

    Args:
        model (str | os.PathLike): A released model's name (``usaid``, ``ssaid``, ``cdncnn-b``), a checkpoint, an
            option file or an experiment folder (as the tools take them).
        device (str | torch.device, optional): Where to run it: ``cpu``, ``cuda``, ``cuda:1``, ... (one this machine
            has).
        network_opt (dict, optional): ``network_g`` options of the checkpoint's network, with its ``type`` (default:
            what ``model`` names; for a bare checkpoint, U-SAID's DnCNN).
        param_key (str, optional): The checkpoint's entry to load, ``params`` or ``params_ema`` (default: what
            ``model`` implies: an option file's ``param_key_g``, an experiment's EMA weights if it trained with them,
            else BasicSR's rule, ``params_ema`` if stored, else ``params``). The released models have no entries.
        **inference: Options of :class:`~usaid.inference.InferenceNetwork` (``precision``, ``conv_algo``, ...).
    """
    model = os.fspath(model) if isinstance(model, os.PathLike) else model
    device = best_device() if device is None else torch.device(resolve_device(device, 'device'))
    if param_key is not None and is_released_name(model):
        raise ValueError(f'param_key {param_key!r}: {model} is a released model, whose file is a bare state dict '
                         'without params or params_ema entries; expected None (the default).')
    if network_opt is not None:
        denoiser.check_network_opt(network_opt, 'network_opt')
    resolved_opt, weights, implied_key = denoiser.resolve_model(model)
    net = denoiser.load_denoiser(weights, resolved_opt if network_opt is None else network_opt, device,
                                 implied_key if param_key is None else param_key)
    fast = InferenceNetwork(net, **inference).eval()
    fast.receptive_radius = denoiser.receptive_radius(net)  # its fast copy, traced at the first image, hides the type
    return fast


def denoise(image, model='usaid', tile=512, overlap=32):
    """``image`` denoised, as an array of the same shape and dtype.

    Args:
        image (np.ndarray): H x W x 3 RGB (or H x W gray, or H x W x 4 RGBA: alpha is kept as it is), uint8, uint16,
            or float in [0, 1] (a noisy float image may exceed it; the result is clipped to [0, 1]).
        model (nn.Module | str | os.PathLike): A denoiser from :func:`load_denoiser`, or what it takes (loaded each
            call). A module in training mode is run in eval mode (BatchNorm's running statistics) and left as it was.
        tile (int | None): Tile size in pixels, so that memory stays bounded for large images; None or 0 for the
            whole image at once. The result equals the untiled one up to float rounding.
        overlap (int): Context pixels around each tile; a ``UserWarning`` says when it is below the network's
            receptive radius, where that is known (20 pixels for U-SAID's 20 layers).
    """
    array = np.asarray(image)
    if not (array.dtype in _INTEGER_TYPES or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f'image: {array.dtype} values; expected uint8, uint16 or float in [0, 1].')
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))) or 0 in array.shape[:2]:
        raise ValueError(f'image: shape {array.shape}; expected H x W x 3 (RGB), H x W (gray) or H x W x 4 (RGBA), '
                         'at least 1 x 1.')
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ValueError(f'image: {np.size(array) - np.isfinite(array).sum()} values are NaN or infinite; expected '
                         'finite values (one spreads over the network\'s receptive field, 41 x 41 pixels for U-SAID).')
    for name, value, optional in (('tile', tile, True), ('overlap', overlap, False)):
        if (value is not None or not optional) and not (isinstance(value, numbers.Integral)
                                                        and not isinstance(value, bool)):
            raise ValueError(f'{name}: found {value!r}; expected an integer number of pixels.')
    warn_about_scale(array)
    if isinstance(model, (str, os.PathLike)):
        model = load_denoiser(model)
    if not (isinstance(model, nn.Module) and any(True for _ in model.parameters())):
        raise ValueError(f'model: found {type(model).__name__}; expected a denoiser from usaid.load_denoiser, or a '
                         'released model\'s name, a checkpoint, an option file or an experiment folder.')
    net = model
    rgb = np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else array[..., :3]
    rgb = np.require(rgb, np.float32, ['C', 'W'])  # copied only where the type or layout needs it: images are large
    if array.dtype in _INTEGER_TYPES:
        rgb /= np.iinfo(array.dtype).max  # in place: the conversion above made a new array
    device = getattr(net, 'device', None) or next(net.parameters()).device
    training = net.training  # a module in training mode would denoise with batch statistics and update them
    try:
        net.eval()
        result = denoiser.denoise(net, torch.from_numpy(rgb).permute(2, 0, 1)[None], tile or None, overlap, device)
    finally:
        net.train(training)
    alpha = array[..., 3] if array.ndim == 3 and array.shape[2] == 4 else None
    return as_image(result[0].permute(1, 2, 0).numpy(), array.dtype, array.ndim == 2, alpha)


def warn_about_scale(array):
    """A ``UserWarning`` for values that look like another scale than the dtype's: a float image in 0-255 (it would
    come back as white), 8-bit values in a uint16 array (they would be denoised as a nearly black image)."""
    if array.size == 0:
        return
    top = float(array.max())
    if np.issubdtype(array.dtype, np.floating) and top > FLOAT_SCALE_LIMIT:
        warnings.warn(f'image: float values up to {top:g}; expected [0, 1] (a noisy image slightly beyond): divide a '
                      '0-255 image by 255 first, or pass it as uint8.', stacklevel=3)
    elif array.dtype == np.uint16 and top <= 255:
        warnings.warn(f'image: uint16 values up to {top:g}, which fit 8 bits; expected 16-bit values (0-65535): '
                      'pass an 8-bit image as uint8.', stacklevel=3)


def as_image(rgb, dtype, gray=False, alpha=None):
    """A denoised H x W x 3 RGB array (in [0, 1] scale) as an image of ``dtype``: clipped to [0, 1]; for uint8 and
    uint16, scaled to their range and rounded; with ``gray``, converted to gray by OpenCV (its weights and rounding:
    what converting the colour result with OpenCV gives); with ``alpha``, that channel appended as it is."""
    out = np.clip(rgb, 0, 1, out=np.empty(np.shape(rgb), np.float32))
    if np.dtype(dtype) in _INTEGER_TYPES:
        out *= np.iinfo(dtype).max
        out = np.round(out, out=out).astype(dtype)
    if gray:
        out = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)
    out = out.astype(dtype, copy=False)
    return out if alpha is None else np.dstack([out, alpha])

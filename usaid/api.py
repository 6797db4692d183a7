"""U-SAID from Python, without option files: ``usaid.load_denoiser`` and ``usaid.denoise``.

    import usaid
    net = usaid.load_denoiser('usaid')              # the authors' U-SAID, fetched once; or a checkpoint path
    clean = usaid.denoise(noisy_rgb, net, tile=512)  # NumPy in, NumPy out: same shape and dtype

The same network loading (:func:`usaid.denoiser.load_denoiser`), fast inference (:class:`~usaid.inference.
InferenceNetwork`) and tiling (:func:`usaid.denoiser.denoise`) as ``usaid-denoise``.
"""
import numbers

import numpy as np
import torch
from torch import nn

from usaid import denoiser
from usaid.inference import InferenceNetwork

_INTEGER_TYPES = (np.uint8, np.uint16)


def best_device():
    """The first GPU if torch sees one, else the CPU."""
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def load_denoiser(model='usaid', device=None, network_opt=None, **inference):
    """A denoiser ready for :func:`denoise`: eval mode, no gradients, on ``device`` (default: :func:`best_device`).

    Args:
        model (str): A released model's name (``usaid``, ``ssaid``, ``cdncnn-b``), a checkpoint, an option file or an
            experiment folder (as the tools take them).
        device (str | torch.device, optional): Where to run it.
        network_opt (dict, optional): ``network_g`` options of the checkpoint's network (default: what ``model``
            names; for a bare checkpoint, U-SAID's DnCNN).
        **inference: Options of :class:`~usaid.inference.InferenceNetwork` (``precision``, ``conv_algo``, ...).
    """
    device = torch.device(device) if device is not None else best_device()
    resolved_opt, weights, param_key = denoiser.resolve_model(model)  # the key an option file names, e.g. params
    net = denoiser.load_denoiser(weights, network_opt or resolved_opt, device, param_key)
    return InferenceNetwork(net, **inference).eval()


def denoise(image, model='usaid', tile=512, overlap=32):
    """``image`` denoised, as an array of the same shape and dtype.

    Args:
        image (np.ndarray): H x W x 3 RGB (or H x W gray, or H x W x 4 RGBA: alpha is kept as it is), uint8, uint16,
            or float in [0, 1] (a noisy float image may exceed it; the result is clipped to [0, 1]).
        model (nn.Module | str): A denoiser from :func:`load_denoiser`, or what it takes (loaded each call).
        tile (int | None): Tile size in pixels, so that memory stays bounded for large images; None or 0 for the
            whole image at once. The result equals the untiled one up to float rounding.
        overlap (int): Context pixels around each tile.
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
    for name, value in (('tile', tile), ('overlap', overlap)):
        if value is not None and not (isinstance(value, numbers.Integral) and not isinstance(value, bool)):
            raise ValueError(f'{name}: found {value!r}; expected an integer number of pixels.')
    if isinstance(model, str):
        model = load_denoiser(model)
    if not (isinstance(model, nn.Module) and any(True for _ in model.parameters())):
        raise ValueError(f'model: found {type(model).__name__}; expected a denoiser from usaid.load_denoiser, or a '
                         'released model\'s name, a checkpoint, an option file or an experiment folder.')
    net = model
    scale = np.iinfo(array.dtype).max if array.dtype in _INTEGER_TYPES else 1.0
    rgb = np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else array[..., :3]
    tensor = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32) / np.float32(scale)).permute(2, 0, 1)
    device = getattr(net, 'device', None) or next(net.parameters()).device
    result = denoiser.denoise(net, tensor[None], tile or None, overlap, device)[0].clamp(0, 1).permute(1, 2, 0)
    out = result.numpy()
    if array.ndim == 2:  # the luminance of the RGB result, with the weights OpenCV's gray conversion uses
        out = out @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    out = (out * scale).round().astype(array.dtype) if array.dtype in _INTEGER_TYPES else out.astype(array.dtype)
    return np.dstack([out, array[..., 3]]) if array.ndim == 3 and array.shape[2] == 4 else out

"""What a network does to an image, found by running it once on a small one.

BasicSR's registry holds restorers, upscalers, video networks, discriminators and feature extractors, and nothing in
an architecture says which is which, nor which image sizes it takes. The option check (before a run) and
:class:`~usaid.inference.InferenceNetwork` (before the first image) ask the network itself, with the functions here:

- :func:`size_multiple`: whether it restores an image at scale 1 (same shape out as in), and the multiple its input
  height and width must have (RRDBNet at scale 1 unshuffles by 4). Inference pads other sizes up to it.
- :func:`data_range_offset`: how far its output lies from its input at initialisation; a network that expects data in
  [0, 255] (RIDNet's ``img_range``) shifts [0, 1] images by about 100.
"""
import functools
import json

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY

# Tried in order: the first that lets the network keep the image's shape is the size multiple (windowed attention
# needs multiples of its window, 7 or 8 in SwinIR; pixel-unshuffling networks powers of two).
SIZE_MULTIPLES = tuple(range(1, 65))
# Odd on purpose: a network that needs even sizes fails here instead of on the first real image.
PROBE_SIZE = (41, 43)
# A restorer at initialisation stays within a few units of [0, 1] data; beyond this it expects another data range.
MAX_DATA_RANGE_OFFSET = 10.0


def _shape(value):
    return 'x'.join(str(s) for s in value.shape) if torch.is_tensor(value) else type(value).__name__


def pad_to_multiple(image, multiple):
    """``image`` (N, C, H, W) padded at the bottom and right to multiples of ``multiple`` (mirrored where the image
    is large enough, else repeated); unchanged if it already fits."""
    height, width = image.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not (pad_h or pad_w):
        return image
    mode = 'reflect' if pad_h < height and pad_w < width else 'replicate'
    return F.pad(image, (0, pad_w, 0, pad_h), mode=mode)


@torch.no_grad()
def size_multiple(net, example):
    """The smallest of :data:`SIZE_MULTIPLES` such that ``net`` maps ``example`` padded to that multiple to a tensor
    of the same shape.

    Args:
        net (nn.Module): The network, in the mode it will run in.
        example (Tensor): A (1, C, H, W) input; best with odd H and W (:data:`PROBE_SIZE`).

    Raises:
        ValueError: If the network changes the shape (an upscaler, a discriminator, a feature extractor) or runs on
            no padded size; the message says what it returned or raised.
    """
    last_error = None
    for multiple in SIZE_MULTIPLES:
        image = pad_to_multiple(example, multiple)
        try:
            output = net(image)
        except Exception as error:  # an architecture may raise anything for a size it cannot take
            last_error = error
            continue
        if not torch.is_tensor(output) or output.shape != image.shape:
            upscales = (torch.is_tensor(output) and output.shape[:2] == image.shape[:2] and output.ndim == 4
                        and output.shape[-1] > image.shape[-1] and output.shape[-1] % image.shape[-1] == 0
                        and output.shape[-1] * image.shape[-2] == output.shape[-2] * image.shape[-1])
            raise ValueError(f'maps a {_shape(image)} image to {_shape(output)}; expected an image of the same shape '
                             + ('(it upscales: set its scale option, e.g. upscale or scale, to 1)' if upscales else
                                '(a restorer at scale 1, not a discriminator, feature extractor or segmenter)'))
        larger = pad_to_multiple(F.pad(example, (0, multiple, 0, multiple), mode='replicate'), multiple)
        try:  # one size that fits by chance is not a rule: a second multiple must fit too
            fits = net(larger).shape == larger.shape
        except Exception as error:
            last_error, fits = error, False
        if fits:
            return multiple
    raise ValueError(f'cannot run on a {_shape(example)} image, nor padded to a multiple of up to {SIZE_MULTIPLES[-1]} '
                     f'({type(last_error).__name__}: {str(last_error).splitlines()[0] if str(last_error) else ""}); '
                     'expected a network that restores a (N, C, H, W) image')


@torch.no_grad()
def data_range_offset(net, example):
    """Mean absolute difference between ``net(example)`` and ``example``: about 1 or less for a network made for
    [0, 1] data, about 100 for one that expects [0, 255] (see :data:`MAX_DATA_RANGE_OFFSET`)."""
    return float((net(example) - example).abs().mean())


def probe_example(channels, seed=0):
    """A (1, ``channels``, *PROBE_SIZE) image in [0, 1] with smooth structure and texture, from a fixed seed."""
    generator = torch.Generator().manual_seed(seed)
    height, width = PROBE_SIZE
    ramp = torch.linspace(0, 1, width).expand(height, width)
    texture = torch.rand(1, channels, height, width, generator=generator)
    return (0.5 * ramp + 0.5 * texture).clamp(0, 1)


def probe_network(network_opt, channels):
    """Build the network ``network_opt`` describes (a ``network_g`` mapping with ``type``) from a fixed seed and probe
    it on a ``channels``-channel image: ``(size multiple, data range offset)``. Cached per process by the options, so
    checking many option files with one network (a test suite, a fuzz run) builds it once.

    Raises:
        ValueError: If the network cannot be built with these options or is not a restorer at scale 1; the message
            starts with the architecture's name.
    """
    return _probe(json.dumps(network_opt, sort_keys=True, default=str), channels)


@functools.lru_cache(maxsize=32)
def _probe(network_json, channels):
    network_opt = json.loads(network_json)
    name = network_opt.pop('type')
    with torch.random.fork_rng(devices=[]):  # the caller's generator state stays as it was (BasicSR seeds first)
        torch.manual_seed(0)
        try:
            net = ARCH_REGISTRY.get(name)(**network_opt).eval()
        except Exception as error:  # an architecture may raise anything for options it does not support
            scale = ', '.join(f'{k}: {v}' for k, v in network_opt.items() if k in ('upscale', 'scale'))
            raise ValueError(f'{name} cannot be built with these options ({type(error).__name__}: {error})'
                             f'{f"; it may not support {scale}" if scale else ""}; expected options of an image '
                             'restorer at scale 1') from None
        example = probe_example(channels)
        try:
            multiple = size_multiple(net, example)
        except ValueError as error:
            raise ValueError(f'{name} {error}') from None
        return multiple, data_range_offset(net, pad_to_multiple(example, multiple))

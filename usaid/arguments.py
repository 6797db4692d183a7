"""Command-line values the tools check the same way before any work: noise levels, seeds, sizes and devices.

Each check returns the value or raises ``ValueError`` naming the option, what was found and what is expected; the
tools print it as ``usaid-<tool>: <message>`` and exit with status 1.
"""

import torch

from usaid.data.gaussian_noise_dataset import MAX_SIGMA

# numpy's RandomState (the test protocol's generator) takes seeds in [0, 2**32)
MAX_SEED = 2 ** 32 - 1


def check_sigma(value, option='--add-noise'):
    """A noise level (0-255 scale): finite and >= 0. NaN noise makes a black image and infinite noise a saturated
    one, both without any error further on."""
    if value is None:
        return None
    if not 0 <= value <= MAX_SIGMA:  # NaN fails the comparison
        raise ValueError(f'{option} {value:g}: expected a noise level from 0 to {MAX_SIGMA} (0-255 scale), e.g. 25.')
    return value


def check_seed(value, option='--seed'):
    """A seed of the test protocol's noise: an integer in [0, 2**32)."""
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f'{option} {value}: expected an integer from 0 to {MAX_SEED} (numpy\'s RandomState).')
    return value


def check_at_least(value, minimum, option, why=''):
    """``value`` if it is at least ``minimum``."""
    if value < minimum:
        raise ValueError(f'{option} {value}: expected an integer >= {minimum}{why}.')
    return value


def resolve_device(name, option='--device'):
    """The device ``name`` stands for, if this machine has it: ``auto`` is a GPU when there is one, else the CPU."""
    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f'{option} {name!r}: not a device name; expected auto, cpu, cuda or cuda:N.') from None
    if device.type == 'cuda':
        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError(f'{option} {name}: this machine has no GPU that torch can use '
                             f'(torch.cuda.device_count() is 0); expected cpu (or auto).')
        if device.index is not None and device.index >= count:
            raise ValueError(f'{option} {name}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}; '
                             'expected one of them (CUDA_VISIBLE_DEVICES renumbers them from 0).')
    elif device.type != 'cpu':  # meta, mps, xpu, ...: the tools copy images to and from cpu and cuda only
        raise ValueError(f'{option} {name}: not a device the tools run on; expected auto, cpu, cuda or cuda:N.')
    return str(device)

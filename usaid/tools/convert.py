"""``usaid-convert IN OUT``: the authors' released checkpoints into BasicSR's format for the ``USAID`` arch.

The released files (``DnCNN.pth``, ``USAID.pth``, ``SSAID.pth``) are plain state dicts saved from an
``nn.DataParallel`` wrapper by a pre-0.4.1 PyTorch: keys ``module.dncnn.<i>.*`` and no BatchNorm
``num_batches_tracked``. The result is ``{'params': state_dict}``, which ``path: pretrain_network_g`` loads with
``strict_load_g: true``. A file that does not fit the architecture is refused with the list of differences and
nothing is written.
"""
import argparse
import os
import sys

import torch

from usaid.archs import USAID
from usaid.checkpoint import check_fits, load_checkpoint, save_atomically
from usaid.errors import CheckpointError


def to_basicsr(checkpoint, path='checkpoint', **arch_opt):
    """Return ``(state_dict, already_basicsr)`` for ``USAID(**arch_opt)``, or raise
    :class:`~usaid.errors.CheckpointError` naming ``path`` and the keys and shapes that do not fit."""
    already_basicsr = isinstance(checkpoint, dict) and 'params' in checkpoint
    state = checkpoint['params'] if already_basicsr else checkpoint
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f'{path}: not a state dict of tensors (nor {{"params": state dict}}).')
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    net = USAID(**arch_opt)
    expected = net.state_dict()
    for key, value in expected.items():  # BN counters that pre-0.4.1 PyTorch did not save
        if key.endswith('num_batches_tracked') and key not in state:
            state[key] = torch.zeros_like(value)
    check_fits(net, state, path)
    return {k: state[k] for k in expected}, already_basicsr


def convert(in_path, out_path, overwrite=False, **arch_opt):
    """Convert ``in_path`` to ``out_path``; returns a one-line report. Writes nothing on any error."""
    if os.path.exists(out_path) and os.path.samefile(in_path, out_path):
        raise FileExistsError(f'{out_path} is the input file; expected another OUTPUT: the converted checkpoint never '
                              'replaces the file it is made from (even with --force).')
    if os.path.exists(out_path) and not overwrite:
        raise FileExistsError(f'{out_path} exists; pass --force to overwrite it.')
    state, already_basicsr = to_basicsr(load_checkpoint(in_path), in_path, **arch_opt)
    if already_basicsr:
        return f'{in_path} is already in BasicSR format for USAID; nothing written.'
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    save_atomically({'params': state}, out_path)
    return f'{in_path} -> {out_path}: {len(state)} tensors, BasicSR format (params) for USAID.'


def main(argv=None):
    parser = argparse.ArgumentParser(prog='usaid-convert', description=__doc__.splitlines()[0])
    parser.add_argument('input', help='released checkpoint, e.g. USAID.pth')
    parser.add_argument('output', help='BasicSR checkpoint to write, e.g. experiments/pretrained_models/USAID.pth')
    parser.add_argument('--num-in-ch', type=int, default=3)
    parser.add_argument('--num-feat', type=int, default=64)
    parser.add_argument('--num-layers', type=int, default=20)
    parser.add_argument('--no-bn', action='store_true', help='the network has no BatchNorm')
    parser.add_argument('--force', action='store_true', help='overwrite OUTPUT')
    args = parser.parse_args(argv)
    try:
        print(convert(args.input, args.output, overwrite=args.force, num_in_ch=args.num_in_ch,
                      num_out_ch=args.num_in_ch, num_feat=args.num_feat, num_layers=args.num_layers,
                      use_bn=not args.no_bn))
    except (CheckpointError, FileExistsError) as error:
        sys.exit(f'usaid-convert: {error}')


if __name__ == '__main__':
    main()

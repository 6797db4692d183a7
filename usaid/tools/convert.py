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

from usaid.archs import USAID
from usaid.checkpoint import canonical_state_dict, load_checkpoint, save_atomically, stored_param_key
from usaid.errors import CheckpointError


def convert(in_path, out_path, overwrite=False, **arch_opt):
    """Convert ``in_path`` to ``out_path``; returns a one-line report. Writes nothing on any error."""
    if os.path.exists(out_path) and os.path.samefile(in_path, out_path):
        raise FileExistsError(f'{out_path} is the input file; expected another OUTPUT: the converted checkpoint never '
                              'replaces the file it is made from (even with --force).')
    if os.path.exists(out_path) and not overwrite:
        raise FileExistsError(f'{out_path} exists; pass --force to overwrite it.')
    checkpoint = load_checkpoint(in_path)
    state = canonical_state_dict(in_path, allow_bare=True, net=USAID(**arch_opt), checkpoint=checkpoint)
    if stored_param_key(checkpoint, in_path, allow_bare=True) is not None:
        return f'{in_path} is already in BasicSR format for USAID; nothing written.'
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    save_atomically({'params': state}, out_path)
    return f'{in_path} -> {out_path}: {len(state)} tensors, BasicSR format (params) for USAID.'


def main(argv=None):
    parser = argparse.ArgumentParser(prog='usaid-convert', description=__doc__.splitlines()[0])
    parser.add_argument('input', help='released checkpoint, e.g. USAID.pth')
    parser.add_argument('output', help='BasicSR checkpoint to write, e.g. experiments/pretrained_models/USAID.pth')
    defaults = USAID.Options()
    parser.add_argument('--num-in-ch', type=int, default=defaults.num_in_ch)
    parser.add_argument('--num-feat', type=int, default=defaults.num_feat)
    parser.add_argument('--num-layers', type=int, default=defaults.num_layers)
    parser.add_argument('--no-bn', action='store_true', help='the network has no BatchNorm')
    parser.add_argument('--force', action='store_true', help='overwrite OUTPUT')
    args = parser.parse_args(argv)
    try:
        print(convert(args.input, args.output, overwrite=args.force, num_in_ch=args.num_in_ch,
                      num_out_ch=args.num_in_ch, num_feat=args.num_feat, num_layers=args.num_layers,
                      use_bn=not args.no_bn))
    except (CheckpointError, FileExistsError, ValueError) as error:  # ValueError: USAID's options
        sys.exit(f'usaid-convert: {error}')


if __name__ == '__main__':
    main()

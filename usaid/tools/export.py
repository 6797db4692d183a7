"""``usaid-export MODEL OUTPUT``: a denoiser for spandrel (chaiNNer, ComfyUI), ONNX, safetensors or torch.export.

MODEL is what the other tools take: a released model's name (``usaid``, ``ssaid``, ``cdncnn-b``), a checkpoint, an
option file or an experiment folder (any BasicSR ``network_g``). The format follows OUTPUT's extension (``.pth`` and
``.pt``: spandrel; ``.onnx``; ``.safetensors``: BasicSR's layout; ``.pt2``) or ``--format``. The export is run by the
program that will load it and compared with the source network before it is written; the tool prints what it wrote
and the measured difference. Formats and checks: :mod:`usaid.export`.
"""
import argparse
import sys

from usaid.denoiser import read_network_opt
from usaid.errors import CheckpointError, MissingExtraError
from usaid.export import FORMATS, export


def main(argv=None):
    parser = argparse.ArgumentParser(prog='usaid-export', description=__doc__.splitlines()[0])
    parser.add_argument('model', help='a released model by name (usaid, ssaid, cdncnn-b), a checkpoint, an option '
                        'file or an experiment folder')
    parser.add_argument('output', help='the file to write: .pth (spandrel), .onnx, .safetensors (BasicSR layout), '
                        '.pt2')
    parser.add_argument('-f', '--format', choices=FORMATS, help='the format (default: from the extension of OUTPUT; '
                        'spandrel also writes .safetensors)')
    parser.add_argument('-opt', help='option file whose network_g builds the network of a bare checkpoint')
    parser.add_argument('--param-key', choices=('params', 'params_ema'), help="the checkpoint's entry to export "
                        '(default: params_ema when stored, else params; safetensors keeps both)')
    parser.add_argument('--fp16', action='store_true', help='onnx: float16 inputs, weights and outputs')
    parser.add_argument('--opset', type=int, help="onnx: the opset (default: torch's exporter's)")
    parser.add_argument('--force', action='store_true', help='replace OUTPUT if it exists')
    args = parser.parse_args(argv)
    try:
        network_opt = read_network_opt(args.opt) if args.opt else None
        report = export(args.model, args.output, args.format, network_opt, args.param_key, args.fp16, args.opset,
                        args.force)
    except (ValueError, OSError, CheckpointError, MissingExtraError) as error:
        sys.exit(f'usaid-export: {error}')
    except KeyboardInterrupt:
        sys.exit('usaid-export: interrupted; nothing was written.')
    print(report)


if __name__ == '__main__':
    main()

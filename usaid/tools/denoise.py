"""``usaid-denoise INPUT OUTPUT -w WEIGHTS``: denoise photographs with a trained or converted checkpoint.

INPUT is an image or a folder of images; OUTPUT is an image file for one image (its extension picks the format:
.png, .jpg, .tif, ...) or a folder, which gets one PNG per input, named after it. 8-bit images stay 8-bit and 16-bit
images stay 16-bit (a format that cannot hold the bit depth or the alpha channel, such as JPEG for a 16-bit PNG, is
refused). Gray images are denoised as three equal channels and written back gray; RGBA images keep their alpha
channel untouched. EXIF orientation is applied: results are upright, as viewers show the input, and carry no
orientation tag. Files of several frames (animated GIF, PNG or WebP, multi-page TIFF) are refused. Large images are
processed in overlapping tiles (``--tile``), so memory is bounded by the tile size, not the image size.

Nothing is overwritten without ``--overwrite``: no existing file, and no input (OUTPUT the input file, or the input
folder, a folder inside it or one that contains it). Inputs that would give the same output name (``x.jpg`` and
``x.png``) are refused before anything is written. Each result is written under a temporary name and renamed, so an
output file is complete or absent.

The network runs through :class:`usaid.inference.InferenceNetwork` (BatchNorm folded, Winograd convolutions on the
CPU, same results to float rounding); ``--precision bf16`` is a faster opt-in with a small PSNR cost.

The tool is a wrapper of the Python API around image files: the network is loaded by ``usaid.load_denoiser`` and each
image denoised by ``usaid.denoise`` and converted back to its bit depth by :func:`usaid.api.as_image`; reading and
writing the files (EXIF orientation, 16-bit, alpha, the output names) is done here and in :mod:`usaid.image_io`.
"""
import argparse
import os
import sys
from os import path as osp

import cv2
import numpy as np
import torch
from basicsr.metrics import calculate_psnr, calculate_ssim
from tqdm import tqdm

from usaid import api
from usaid.allocator import keep_freed_memory
from usaid.arguments import check_at_least, check_seed, check_sigma, resolve_device
from usaid.data.data_util import IMAGE_EXTENSIONS, PROTOCOL_NOISE_SEED, add_protocol_noise
from usaid.data.image_scan import scan_file
from usaid.denoiser import MIN_TILE, check_tiling, read_network_opt
from usaid.errors import CheckpointError
from usaid.image_io import check_format, read_image, single_image_orientation, write_image
from usaid.inference import add_inference_arguments, inference_options
from usaid.paths import check_writable, relation

MAX_THREADS = 1024
SIDE_BY_SIDE = '_side_by_side.png'


def list_images(input_path):
    if osp.isdir(input_path):
        names = sorted(n for n in os.listdir(input_path) if n.lower().endswith(IMAGE_EXTENSIONS))
        if not names:
            raise ValueError(f'{input_path}: no images ({", ".join(IMAGE_EXTENSIONS)}) in this folder.')
        return [osp.join(input_path, n) for n in names]
    if not osp.isfile(input_path):
        raise FileNotFoundError(f'{input_path}: no such file or folder.')
    return [input_path]


def names_an_image_file(output):
    """Whether ``output`` is a file name with an image extension (one OpenCV can write, or one of ours)."""
    extension = osp.splitext(output)[1].lower()
    return extension in IMAGE_EXTENSIONS or (extension != '' and cv2.haveImageWriter('x' + extension))


def plan_outputs(input_path, output, side_by_side=False, overwrite=False):
    """``[(input image, output file, side-by-side file or None)]``, checked before anything is written: OUTPUT an
    image file for one image, else a folder (one PNG per input, named after it); an output path that is an input, or
    an output folder that is, lies inside or contains the input folder, only with ``overwrite``; existing output
    files only with ``overwrite``; two inputs that would be written to one file, never. ``ValueError`` says which."""
    paths = list_images(input_path)
    folder_input = osp.isdir(input_path)
    to_file = not folder_input and names_an_image_file(output) and not osp.isdir(output)
    if to_file and osp.splitext(output)[1].lower() not in IMAGE_EXTENSIONS:
        raise ValueError(f'OUTPUT {output}: usaid-denoise writes {", ".join(IMAGE_EXTENSIONS)} files; expected one '
                         'of these extensions (or a folder).')
    if folder_input and names_an_image_file(output) and not osp.isdir(output):
        raise ValueError(f'OUTPUT {output}: INPUT {input_path} is a folder, so OUTPUT is a folder, but this is an '
                         'image file name; expected a folder name.')
    if osp.isfile(output) and not to_file:
        raise ValueError(f'OUTPUT {output}: exists and is a file; expected a folder (for several images) or an image '
                         'file name.')
    check_writable(output, 'OUTPUT')
    jobs = []
    for path in paths:
        out_path = output if to_file else osp.join(output, osp.splitext(osp.basename(path))[0] + '.png')
        jobs.append((path, out_path, osp.splitext(out_path)[0] + SIDE_BY_SIDE if side_by_side else None))

    if not overwrite:
        if folder_input and relation(output, input_path):
            raise ValueError(f'OUTPUT {output} is {relation(output, input_path)} INPUT {input_path}: the results would '
                             'be written among the inputs; expected an output folder apart from the input folder, or '
                             '--overwrite to allow it.')
        inputs = {osp.realpath(path) for path in paths}
        for path, *outs in jobs:
            if any(out and osp.realpath(out) in inputs for out in outs):
                raise ValueError(f'OUTPUT {output}: would replace the input {path}; expected another output name, '
                                 'or --overwrite to replace it.')
        existing = [out for _, *outs in jobs for out in outs if out and osp.lexists(out)]
        if existing:
            shown = ', '.join(existing[:3]) + (f' and {len(existing) - 3} more' if len(existing) > 3 else '')
            raise ValueError(f'OUTPUT {output}: {len(existing)} output file(s) exist already: {shown}; expected new '
                             'names, or --overwrite to replace them.')
    written_by = {}
    for path, *outs in jobs:
        for out in filter(None, outs):
            written_by.setdefault(osp.realpath(out), []).append(path)
    clashes = [(out, sources) for out, sources in written_by.items() if len(sources) > 1]
    if clashes:
        out, sources = clashes[0]
        raise ValueError(f'{len(clashes)} output file(s) would each be written from several inputs, e.g. {out} from '
                         f'{" and ".join(sources)}; nothing was written. Expected inputs with distinct names (without '
                         'their extension, and none named like another\'s <name>_side_by_side.png): rename or move '
                         'them.')
    unusable = [f'{info.path} {info.problem}' for info in map(scan_file, paths) if info.problem]
    if unusable:  # from the headers and end markers, before any image is written
        raise ValueError(f'{len(unusable)} of the {len(paths)} input image(s) cannot be read: '
                         f'{"; ".join(unusable[:3])}{" ..." if len(unusable) > 3 else ""}; expected readable image '
                         'files (move the others away); nothing was written.')
    for path in paths:  # from the headers: an animation is refused before any image is written
        single_image_orientation(path, 'input')
    return jobs


def in_bgr_order(image):
    """An RGB(A) or gray image array in OpenCV's channel order, for writing."""
    if image.ndim == 2:
        return image
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)


def denoise_file(net, path, out_path, tile=None, overlap=32, add_noise=None, seed=0, side_by_side=False):
    """Denoise one image file into ``out_path`` (and ``<name>_side_by_side.png`` beside it); with ``add_noise``,
    returns the PSNR/SSIM of input and output."""
    rgb, dtype, gray, alpha = read_image(path)
    check_format(out_path, dtype, 1 if gray else 3 if alpha is None else 4, path)
    clean = None
    if add_noise is not None:
        clean, rgb = rgb, add_protocol_noise(rgb, add_noise, seed).astype(np.float32)
    result = api.denoise(rgb, net, tile, overlap)  # float in, float out: the noisy input is not quantized
    write_image(in_bgr_order(api.as_image(result, dtype, gray, alpha)), out_path)
    if side_by_side:
        pair = np.concatenate([api.as_image(rgb, dtype, gray), api.as_image(result, dtype, gray)], axis=1)
        write_image(in_bgr_order(pair), osp.splitext(out_path)[0] + SIDE_BY_SIDE)
    if clean is None:
        return None
    reference = api.as_image(clean, np.uint8)
    scores = {}
    for name, image in (('input', rgb), ('output', result)):
        img = api.as_image(image, np.uint8)
        scores[name] = (calculate_psnr(img, reference, 0), calculate_ssim(img, reference, 0))
    return scores


def main(argv=None):
    parser = argparse.ArgumentParser(prog='usaid-denoise', description=__doc__.splitlines()[0])
    parser.add_argument('input', help='an image or a folder of images (EXIF orientation is applied; animations and '
                        'multi-page files are refused)')
    parser.add_argument('output', help='an image file for one image (.png, .jpg, .tif, ...: the extension picks the '
                        'format) or a folder (one PNG per input)')
    parser.add_argument('-w', '--weights', default='usaid', help='a released model by name (usaid, ssaid, cdncnn-b: '
                        'fetched once into the torch hub cache), a BasicSR checkpoint or a released file (USAID.pth), '
                        'an option file or an experiment folder (as usaid.load_denoiser takes them); default: usaid')
    parser.add_argument('-opt', help="option file whose network_g builds the network (default: USAID's defaults)")
    parser.add_argument('--tile', type=int, default=512,
                        help=f'tile size in pixels, at least {MIN_TILE}; 0 for the whole image at once')
    parser.add_argument('--tile-overlap', type=int, default=32, help='context pixels around each tile, >= 0')
    parser.add_argument('--device', default='auto', help='auto (a GPU when there is one), cpu, cuda, cuda:1, ...')
    parser.add_argument('--add-noise', type=float, metavar='SIGMA', help='add Gaussian noise (0-255 scale) first '
                        'and report PSNR/SSIM against the clean input')
    parser.add_argument('--seed', type=int, default=PROTOCOL_NOISE_SEED,
                        help='seed of --add-noise (default: the test protocol\'s, %(default)s)')
    parser.add_argument('--side-by-side', action='store_true', help='also write <name>_side_by_side.png')
    parser.add_argument('--overwrite', action='store_true', help='replace existing output files, and allow OUTPUT '
                        'to be the input, or a folder that is, lies inside or contains the input folder')
    speed = add_inference_arguments(parser)
    speed.add_argument('--threads', type=int, help='CPU threads (default: torch\'s, one per core)')
    speed.add_argument('--no-keep-freed-memory', dest='keep_freed_memory', action='store_false',
                       help='return freed memory to the OS at once (slower: see usaid/allocator.py)')
    args = parser.parse_args(argv)
    try:  # every check that needs no network first: a mistake costs nothing and writes nothing
        check_tiling(args.tile, args.tile_overlap, '--tile', '--tile-overlap')
        check_sigma(args.add_noise)
        check_seed(args.seed)
        if args.threads is not None:
            check_at_least(args.threads, 1, '--threads')
            if args.threads > MAX_THREADS:  # OpenMP crashes on absurd counts instead of refusing them
                raise ValueError(f'--threads {args.threads}: expected at most {MAX_THREADS}.')
        device = resolve_device(args.device)
        network_opt = read_network_opt(args.opt) if args.opt else None
        jobs = plan_outputs(args.input, args.output, args.side_by_side, args.overwrite)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f'usaid-denoise: {error}')

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        keep_freed_memory()
    written = 0
    try:
        net = api.load_denoiser(args.weights, device, network_opt, **inference_options(args))
        for path, out_path, _ in tqdm(jobs, unit='image', disable=len(jobs) == 1):
            scores = denoise_file(net, path, out_path, args.tile, args.tile_overlap, args.add_noise, args.seed,
                                  args.side_by_side)
            written += 1
            if scores:
                (psnr_in, ssim_in), (psnr_out, ssim_out) = scores['input'], scores['output']
                tqdm.write(f'{osp.basename(path)}: noisy {psnr_in:.2f} dB / SSIM {ssim_in:.4f} -> '
                           f'denoised {psnr_out:.2f} dB / SSIM {ssim_out:.4f}')
    except (ValueError, OSError, CheckpointError) as error:
        done = f' ({written} of {len(jobs)} image(s) written before.)' if written else ''
        sys.exit(f'usaid-denoise: {error}{done}')
    print(f'{len(jobs)} image(s) denoised on {device} ({args.precision}, {net.conv_algo} convolutions) '
          f'-> {args.output}')


if __name__ == '__main__':
    main()

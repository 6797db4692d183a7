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
"""
import argparse
import os
import sys
from os import path as osp

import cv2
import numpy as np
import torch
from basicsr.archs import build_network
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils import img2tensor, tensor2img
from tqdm import tqdm

import usaid  # noqa: F401  (registers U-SAID's archs)
from usaid import yaml_io
from usaid.allocator import keep_freed_memory
from usaid.arguments import check_at_least, check_seed, check_sigma, resolve_device
from usaid.checkpoint import check_fits, load_checkpoint, network_state
from usaid.data.gaussian_noise_dataset import IMAGE_EXTENSIONS, add_protocol_noise
from usaid.data.image_scan import scan_file
from usaid.errors import CheckpointError
from usaid.image_io import read_upright, single_image_orientation
from usaid.inference import InferenceNetwork, add_inference_arguments, inference_options
from usaid.paths import check_writable, relation
from usaid.tools.convert import to_basicsr

DEFAULT_NETWORK = {'type': 'USAID'}
# below this a tile with its context on every side computes each pixel many times over ((16 + 2 * 32)^2 / 16^2 = 25
# times at the default overlap) for no gain: memory is bounded well before
MAX_THREADS = 1024
MIN_TILE = 16
SIDE_BY_SIDE = '_side_by_side.png'


def load_denoiser(weights, network_opt=None, device='cpu'):
    """A network in eval mode from a BasicSR checkpoint (``params_ema`` preferred, else ``params``) or a released
    one."""
    network_opt = dict(network_opt or DEFAULT_NETWORK)
    checkpoint = load_checkpoint(weights)
    if network_opt['type'] == 'USAID' and not (isinstance(checkpoint, dict) and 'params_ema' in checkpoint):
        arch = {k: v for k, v in network_opt.items() if k != 'type'}
        state = to_basicsr(checkpoint, weights, **arch)[0]  # also accepts the authors' released files
    else:
        state = network_state(checkpoint, weights, 'params_ema')
    net = build_network(network_opt)
    check_fits(net, state, weights)
    net.load_state_dict(state, strict=True)
    return net.eval().to(device)


def read_image(path):
    """Image as float32 RGB (H, W, 3) in [0, 1], its integer dtype, whether it was gray (then 3 equal channels), and
    its alpha channel (or None). EXIF orientation is applied; a file of several frames is refused."""
    img = read_upright(path, 'input')
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f'{path}: {img.dtype} images are not supported; expected 8-bit or 16-bit.')
    dtype, alpha, gray = img.dtype, None, img.ndim == 2
    if gray:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img, alpha = img[..., :3], img[..., 3]
    elif img.shape[2] != 3:
        raise ValueError(f'{path}: {img.shape[2]} channels; expected gray, RGB or RGBA.')
    rgb = img[..., ::-1].astype(np.float32) / np.iinfo(dtype).max
    return rgb, dtype, gray, alpha


def to_image(tensor, dtype, gray=False, alpha=None):
    """A (1, 3, H, W) result as a BGR(A) or gray array of ``dtype``, through BasicSR's ``tensor2img``."""
    if dtype == np.uint8:
        img = tensor2img(tensor)
    else:
        img = (tensor2img(tensor, out_type=np.float32) * np.iinfo(dtype).max).round().astype(dtype)
    if gray:
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    return img if alpha is None else np.dstack([img, alpha])


@torch.inference_mode()
def denoise(net, image, tile=None, overlap=32, device='cpu'):
    """Denoise a (1, C, H, W) CPU tensor; the result stays on the CPU. With ``tile``, the image is processed in
    ``tile`` x ``tile`` pieces, each read with ``overlap`` extra pixels of context on every side, which are dropped
    again: with ``overlap`` at least the network's receptive radius (20 for the default USAID) the result equals the
    untiled one up to float rounding. For a network that takes only sizes that are multiples of some number
    (:attr:`InferenceNetwork.size_multiple`: SwinIR's window, RRDBNet's unshuffle), ``tile`` and ``overlap`` are
    rounded up to multiples of it, so that every piece starts on the grid the whole image would use."""
    check_tiling(tile or 0, overlap)
    _, _, height, width = image.shape
    if not tile or (height <= tile and width <= tile):
        return net(image.to(device)).cpu()
    if isinstance(net, InferenceNetwork):
        multiple = net.prepare(image[..., :64, :64].to(device))
        tile, overlap = -(-tile // multiple) * multiple, -(-overlap // multiple) * multiple
    output = torch.empty_like(image)
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(top + tile, height), min(left + tile, width)
            y0, x0 = max(top - overlap, 0), max(left - overlap, 0)
            y1, x1 = min(bottom + overlap, height), min(right + overlap, width)
            piece = net(image[..., y0:y1, x0:x1].to(device)).cpu()
            output[..., top:bottom, left:right] = piece[..., top - y0:bottom - y0, left - x0:right - x0]
    return output


def check_tiling(tile, overlap):
    """Refuse a tile size or overlap that would give a wrong or useless result: a negative tile covers nothing (the
    output would be uninitialised memory), a tiny one recomputes each pixel many times, a negative overlap drops
    pixels."""
    if tile < 0 or 0 < tile < MIN_TILE:
        why = ('a negative size covers no pixel' if tile < 0 else f'a {tile}-pixel tile reads (tile + 2 x overlap)^2 = '
               f'{(tile + 2 * max(overlap, 0)) ** 2} pixels to make {tile * tile}')
        raise ValueError(f'--tile {tile}: expected 0 (the whole image at once) or a tile size >= {MIN_TILE} pixels; '
                         f'{why}.')
    check_at_least(overlap, 0, '--tile-overlap', ' (the context read around each tile, in pixels)')


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


def check_format(path, dtype, channels, source):
    """Refuse to write an image of ``dtype`` and ``channels`` (1 gray, 3 RGB, 4 RGBA) to the format of ``path``'s
    extension if the format would drop bits or the alpha channel (JPEG holds 8-bit images without alpha): a tiny
    image of the same kind is encoded and read back."""
    extension = osp.splitext(path)[1].lower()
    probe = np.zeros((4, 4, channels) if channels > 1 else (4, 4), dtype)
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # not OpenCV's warning: the message below
    try:
        encoded, data = cv2.imencode(extension, probe)
    except cv2.error:
        encoded = False
    finally:
        cv2.utils.logging.setLogLevel(level)
    back = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if encoded else None
    if back is None or back.dtype != dtype or (back.shape[2] if back.ndim == 3 else 1) < channels:
        kind = {1: 'gray', 3: 'RGB', 4: 'RGBA'}[channels]
        raise ValueError(f'{path}: {extension} cannot hold a {8 * np.dtype(dtype).itemsize}-bit {kind} image without '
                         f'loss, and {source} is one; expected an output name ending with .png or .tif.')


def write_image(img, path):
    """Write ``img`` in the format of ``path``'s extension through a temporary file in the same folder, renamed over
    ``path`` once complete: ``path`` is the whole new image or what it was before, never a part."""
    folder, name = osp.split(osp.abspath(path))
    partial = osp.join(folder, f'.{name}.partial')
    try:
        os.makedirs(folder, exist_ok=True)
        encoded, data = cv2.imencode(osp.splitext(name)[1], img)
        if not encoded:
            raise OSError(f'OpenCV could not encode it as {osp.splitext(name)[1]}')
        with open(partial, 'wb') as f:
            f.write(data.tobytes())
        os.replace(partial, path)
    except OSError as error:
        if osp.exists(partial):
            os.remove(partial)
        raise OSError(f'{path}: could not be written ({error.strerror or error}); the images written before it are '
                      'kept. Check the free disk space and that the folder can be written.') from None


def denoise_file(net, path, out_path, tile=None, overlap=32, device='cpu', add_noise=None, seed=0,
                 side_by_side=False):
    """Denoise one image file into ``out_path`` (and ``<name>_side_by_side.png`` beside it); with ``add_noise``,
    returns the PSNR/SSIM of input and output."""
    rgb, dtype, gray, alpha = read_image(path)
    check_format(out_path, dtype, 1 if gray else 3 if alpha is None else 4, path)
    clean = None
    if add_noise is not None:
        clean, rgb = rgb, add_protocol_noise(rgb, add_noise, seed).astype(np.float32)
    noisy = img2tensor(rgb, bgr2rgb=False, float32=True).unsqueeze(0)
    result = denoise(net, noisy, tile, overlap, device)
    write_image(to_image(result, dtype, gray, alpha), out_path)
    if side_by_side:
        write_image(np.concatenate([to_image(noisy, dtype, gray), to_image(result, dtype, gray)], axis=1),
                    osp.splitext(out_path)[0] + SIDE_BY_SIDE)
    if clean is None:
        return None
    reference = tensor2img(img2tensor(clean, bgr2rgb=False).unsqueeze(0))
    scores = {}
    for name, tensor in (('input', noisy), ('output', result)):
        img = tensor2img(tensor)
        scores[name] = (calculate_psnr(img, reference, 0), calculate_ssim(img, reference, 0))
    return scores


def main(argv=None):
    parser = argparse.ArgumentParser(prog='usaid-denoise', description=__doc__.splitlines()[0])
    parser.add_argument('input', help='an image or a folder of images (EXIF orientation is applied; animations and '
                        'multi-page files are refused)')
    parser.add_argument('output', help='an image file for one image (.png, .jpg, .tif, ...: the extension picks the '
                        'format) or a folder (one PNG per input)')
    parser.add_argument('-w', '--weights', required=True, help='BasicSR checkpoint, or a released one (USAID.pth)')
    parser.add_argument('-opt', help="option file whose network_g builds the network (default: USAID's defaults)")
    parser.add_argument('--tile', type=int, default=512,
                        help=f'tile size in pixels, at least {MIN_TILE}; 0 for the whole image at once')
    parser.add_argument('--tile-overlap', type=int, default=32, help='context pixels around each tile, >= 0')
    parser.add_argument('--device', default='auto', help='auto (a GPU when there is one), cpu, cuda, cuda:1, ...')
    parser.add_argument('--add-noise', type=float, metavar='SIGMA', help='add Gaussian noise (0-255 scale) first '
                        'and report PSNR/SSIM against the clean input')
    parser.add_argument('--seed', type=int, default=0, help='seed of --add-noise (the test protocol uses 0)')
    parser.add_argument('--side-by-side', action='store_true', help='also write <name>_side_by_side.png')
    parser.add_argument('--overwrite', action='store_true', help='replace existing output files, and allow OUTPUT '
                        'to be the input, or a folder that is, lies inside or contains the input folder')
    speed = add_inference_arguments(parser)
    speed.add_argument('--threads', type=int, help='CPU threads (default: torch\'s, one per core)')
    speed.add_argument('--no-keep-freed-memory', dest='keep_freed_memory', action='store_false',
                       help='return freed memory to the OS at once (slower: see usaid/allocator.py)')
    args = parser.parse_args(argv)
    try:  # every check that needs no network first: a mistake costs nothing and writes nothing
        check_tiling(args.tile, args.tile_overlap)
        check_sigma(args.add_noise)
        check_seed(args.seed)
        if args.threads is not None:
            check_at_least(args.threads, 1, '--threads')
            if args.threads > MAX_THREADS:  # OpenMP crashes on absurd counts instead of refusing them
                raise ValueError(f'--threads {args.threads}: expected at most {MAX_THREADS}.')
        device = resolve_device(args.device)
        jobs = plan_outputs(args.input, args.output, args.side_by_side, args.overwrite)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f'usaid-denoise: {error}')

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        keep_freed_memory()
    network_opt = None
    if args.opt:
        with open(args.opt) as f:
            network_opt = yaml_io.load(f)['network_g']
    written = 0
    try:
        net = InferenceNetwork(load_denoiser(args.weights, network_opt, device), **inference_options(args))
        for path, out_path, _ in tqdm(jobs, unit='image', disable=len(jobs) == 1):
            scores = denoise_file(net, path, out_path, args.tile, args.tile_overlap, device, args.add_noise,
                                  args.seed, args.side_by_side)
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

"""``usaid-denoise INPUT OUTPUT -w WEIGHTS``: denoise photographs with a trained or converted checkpoint.

INPUT is an image or a folder of images; OUTPUT is a PNG file (for one image) or a folder. 8-bit images stay 8-bit
and 16-bit images stay 16-bit. Gray images are denoised as three equal channels and written back gray; RGBA images
keep their alpha channel untouched. Large images are processed in overlapping tiles (``--tile``), so memory is
bounded by the tile size, not the image size.

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
import yaml
from basicsr.archs import build_network
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils import img2tensor, imwrite, tensor2img
from basicsr.utils.options import ordered_yaml
from tqdm import tqdm

import usaid  # noqa: F401  (registers U-SAID's archs)
from usaid.allocator import keep_freed_memory
from usaid.checkpoint import check_fits, load_checkpoint, network_state
from usaid.data.gaussian_noise_dataset import IMAGE_EXTENSIONS, add_protocol_noise
from usaid.errors import CheckpointError
from usaid.inference import CONV_ALGOS, PRECISIONS, InferenceNetwork
from usaid.tools.convert import to_basicsr

DEFAULT_NETWORK = {'type': 'USAID'}


def load_denoiser(weights, network_opt=None, device='cpu'):
    """A network in eval mode from a BasicSR checkpoint (``params_ema`` preferred, else ``params``) or a released one."""
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
    its alpha channel (or None)."""
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f'{path}: cannot be read as an image.')
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
    untiled one up to float rounding."""
    _, _, height, width = image.shape
    if not tile or (height <= tile and width <= tile):
        return net(image.to(device)).cpu()
    output = torch.empty_like(image)
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(top + tile, height), min(left + tile, width)
            y0, x0 = max(top - overlap, 0), max(left - overlap, 0)
            y1, x1 = min(bottom + overlap, height), min(right + overlap, width)
            piece = net(image[..., y0:y1, x0:x1].to(device)).cpu()
            output[..., top:bottom, left:right] = piece[..., top - y0:bottom - y0, left - x0:right - x0]
    return output


def list_images(input_path):
    if osp.isdir(input_path):
        names = sorted(n for n in os.listdir(input_path) if n.lower().endswith(IMAGE_EXTENSIONS))
        if not names:
            raise ValueError(f'{input_path}: no images ({", ".join(IMAGE_EXTENSIONS)}) in this folder.')
        return [osp.join(input_path, n) for n in names]
    if not osp.isfile(input_path):
        raise FileNotFoundError(f'{input_path}: no such file or folder.')
    return [input_path]


def output_path_for(image_path, input_path, output):
    if osp.isdir(input_path) or not output.lower().endswith('.png'):
        return osp.join(output, osp.splitext(osp.basename(image_path))[0] + '.png')
    return output


def denoise_file(net, path, out_path, tile=None, overlap=32, device='cpu', add_noise=None, seed=0,
                 side_by_side=False):
    """Denoise one image file into ``out_path``; with ``add_noise``, returns the PSNR/SSIM of input and output."""
    rgb, dtype, gray, alpha = read_image(path)
    clean = None
    if add_noise is not None:
        clean, rgb = rgb, add_protocol_noise(rgb, add_noise, seed).astype(np.float32)
    noisy = img2tensor(rgb, bgr2rgb=False, float32=True).unsqueeze(0)
    result = denoise(net, noisy, tile, overlap, device)
    imwrite(to_image(result, dtype, gray, alpha), out_path)
    if side_by_side:
        imwrite(np.concatenate([to_image(noisy, dtype, gray), to_image(result, dtype, gray)], axis=1),
                osp.splitext(out_path)[0] + '_side_by_side.png')
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
    parser.add_argument('input', help='an image or a folder of images')
    parser.add_argument('output', help='output PNG (for one image) or folder')
    parser.add_argument('-w', '--weights', required=True, help='BasicSR checkpoint, or a released one (USAID.pth)')
    parser.add_argument('-opt', help="option file whose network_g builds the network (default: USAID's defaults)")
    parser.add_argument('--tile', type=int, default=512, help='tile size in pixels; 0 for the whole image at once')
    parser.add_argument('--tile-overlap', type=int, default=32, help='context pixels around each tile')
    parser.add_argument('--device', default='auto', help='auto (a GPU when there is one), cpu, cuda, cuda:1, ...')
    parser.add_argument('--add-noise', type=float, metavar='SIGMA', help='add Gaussian noise (0-255 scale) first '
                        'and report PSNR/SSIM against the clean input')
    parser.add_argument('--seed', type=int, default=0, help='seed of --add-noise (the test protocol uses 0)')
    parser.add_argument('--side-by-side', action='store_true', help='also write <name>_side_by_side.png')
    speed = parser.add_argument_group('speed (defaults: the fastest settings that keep the float32 results)')
    speed.add_argument('--precision', choices=PRECISIONS, default='fp32',
                       help='bf16: bfloat16 autocast, faster on CPUs with bf16 instructions and on GPUs, '
                       'about 0.1 dB lower PSNR (docs/benchmarks.md)')
    speed.add_argument('--conv-algo', choices=CONV_ALGOS, default='auto',
                       help='winograd: NNPACK (float32 CPU); direct: oneDNN / cuDNN; auto: winograd where it applies')
    speed.add_argument('--no-fold-bn', dest='fold_bn', action='store_false',
                       help='keep BatchNorm layers instead of folding them into the convolutions')
    speed.add_argument('--no-channels-last', dest='channels_last', action='store_false',
                       help='NCHW instead of channels_last tensors for direct convolutions')
    speed.add_argument('--threads', type=int, help='CPU threads (default: torch\'s, one per core)')
    speed.add_argument('--no-keep-freed-memory', dest='keep_freed_memory', action='store_false',
                       help='return freed memory to the OS at once (slower: see usaid/allocator.py)')
    args = parser.parse_args(argv)

    device = ('cuda' if torch.cuda.is_available() else 'cpu') if args.device == 'auto' else args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        keep_freed_memory()
    network_opt = None
    if args.opt:
        with open(args.opt) as f:
            network_opt = yaml.load(f, Loader=ordered_yaml()[0])['network_g']
    try:
        net = InferenceNetwork(load_denoiser(args.weights, network_opt, device), args.fold_bn, args.conv_algo,
                               args.channels_last, args.precision)
        paths = list_images(args.input)
        for path in tqdm(paths, unit='image', disable=len(paths) == 1):
            out_path = output_path_for(path, args.input, args.output)
            scores = denoise_file(net, path, out_path, args.tile, args.tile_overlap, device, args.add_noise,
                                  args.seed, args.side_by_side)
            if scores:
                (psnr_in, ssim_in), (psnr_out, ssim_out) = scores['input'], scores['output']
                tqdm.write(f'{osp.basename(path)}: noisy {psnr_in:.2f} dB / SSIM {ssim_in:.4f} -> '
                           f'denoised {psnr_out:.2f} dB / SSIM {ssim_out:.4f}')
    except (ValueError, FileNotFoundError, CheckpointError) as error:
        sys.exit(f'usaid-denoise: {error}')
    print(f'{len(paths)} image(s) denoised on {device} ({args.precision}, {net.conv_algo} convolutions) '
          f'-> {args.output}')


if __name__ == '__main__':
    main()

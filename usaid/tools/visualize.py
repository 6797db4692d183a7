"""``usaid-visualize IMAGE -w A.pth [B.pth ...] --add-noise 25 -o figure.png``: what the USA module sees.

One PNG figure (matplotlib), one row per image: the noisy input, the clean image (with ``--add-noise``), and each
model's output. Each row shows the image with the zoom window outlined, the zoomed crop, the USA network's
segmentation map (arg-max over its K classes, K distinct colours) and its uncertainty map ``1 - p*`` (``p*``: the
arg-max probability, with a colour bar). Titles give PSNR and SSIM against the clean image, computed by BasicSR's
``calculate_psnr`` and ``calculate_ssim`` on 8-bit images as the test pipeline does.

The image is the clean reference when ``--add-noise SIGMA`` is given (noise by the test protocol: seeded, unclipped);
without it the image is taken as the noisy input and no metric is shown. The USA network is a :class:`USANet` built
like the recipes' (ResNet-101, ImageNet backbone, ``init_seed`` 0); ``--usa-pretrained none`` uses a random backbone
when torchvision's ImageNet weights are not available.
"""
import argparse
import sys
from os import path as osp

import matplotlib

matplotlib.use('Agg')  # files only: no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from basicsr.metrics import calculate_psnr, calculate_ssim  # noqa: E402
from basicsr.utils import tensor2img  # noqa: E402
from matplotlib.backend_bases import FigureCanvasBase  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from usaid.archs.usanet_arch import BACKBONES  # noqa: E402
from usaid.arguments import check_at_least, check_seed, check_sigma, resolve_device  # noqa: E402
from usaid.data.data_util import PROTOCOL_NOISE_SEED, add_protocol_noise  # noqa: E402
from usaid.denoiser import denoise, load_denoiser, read_network_opt  # noqa: E402
from usaid.errors import CheckpointError  # noqa: E402
from usaid.image_io import read_image  # noqa: E402
from usaid.inference import InferenceNetwork, add_inference_arguments, inference_options  # noqa: E402
from usaid.losses.usa_loss import USALoss  # noqa: E402
from usaid.paths import check_writable, relation  # noqa: E402
from usaid.visual import class_colours  # noqa: E402

PANEL_INCHES = 3.0
DPI = 100


def default_crop(height, width):
    """A centred square a quarter of the shorter side."""
    size = max(8, min(height, width) // 4)
    return (height - size) // 2, (width - size) // 2, size


def check_crop(crop, height, width):
    """``crop`` (top, left, size) if the window lies inside an image of ``height`` x ``width`` pixels."""
    top, left, size = crop
    if size < 1 or top < 0 or left < 0 or top + size > height or left + size > width:
        problem = (f'a window of size {size} holds no pixel' if size < 1 else f'the window (rows {top} to '
                   f'{top + size - 1}, columns {left} to {left + size - 1}) is not inside the image')
        raise ValueError(f'--crop {top} {left} {size}: {problem}; the image is {height} x {width} pixels (height x '
                         f'width): expected SIZE >= 1, 0 <= TOP <= {height} - SIZE and 0 <= LEFT <= {width} - SIZE.')
    return crop


def check_figure_path(out_path, inputs):
    """Refuse, before any work, a figure path that is one of the ``inputs`` (the image, a checkpoint), that cannot be
    made, or whose extension matplotlib does not write."""
    for path in inputs:
        if relation(out_path, path) == 'the same path as':
            raise ValueError(f'--output {out_path}: is the input {path}, which the figure would replace; expected '
                             'another file name.')
    extension = osp.splitext(out_path)[1][1:].lower()
    formats = FigureCanvasBase.get_supported_filetypes()
    if extension not in formats:
        raise ValueError(f'--output {out_path}: matplotlib does not write {extension or "files without an extension"}'
                         f'; expected a name ending with one of .{", .".join(sorted(formats))}.')
    check_writable(out_path, '--output')


def visualize(image_path, weights, names=None, out_path='usaid_visualize.png', add_noise=None, seed=0,
              network_opt=None, usa_opt=None, crop=None, device='cpu', inference=None):
    """Write the figure; returns ``rows``: for each row (noisy, clean, then each model) a dict with ``name``,
    ``image`` (H x W x 3 uint8 RGB), ``labels``, ``uncertainty`` and, with a clean reference, ``psnr`` and
    ``ssim``. ``inference``: keyword arguments of :class:`~usaid.inference.InferenceNetwork`."""
    rgb, _, _, _ = read_image(image_path)
    names = list(names or [osp.splitext(osp.basename(w))[0] for w in weights])
    if len(names) != len(weights):
        raise ValueError(f'--names: {len(names)} names for {len(weights)} checkpoints; expected one per checkpoint.')
    crop = default_crop(*rgb.shape[:2]) if crop is None else check_crop(crop, *rgb.shape[:2])
    clean = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
    noisy = clean if add_noise is None else torch.from_numpy(
        add_protocol_noise(rgb, add_noise, seed).astype(np.float32)).permute(2, 0, 1)[None]

    usa_loss = USALoss(network={'type': 'USANet', **(usa_opt or {})}).to(device)
    images = [('noisy input' if add_noise is not None else 'input', noisy)]
    if add_noise is not None:
        images.append(('clean', clean))
    for name, weight in zip(names, weights):
        net = InferenceNetwork(load_denoiser(weight, network_opt, device), **(inference or {}))
        with torch.inference_mode():
            images.append((name, denoise(net, noisy, tile=512, device=device)))

    reference = tensor2img(clean, rgb2bgr=False) if add_noise is not None else None
    rows = []
    for name, tensor in images:
        row = {'name': name, 'image': tensor2img(tensor, rgb2bgr=False)}
        labels, uncertainty = usa_loss.segmentation_maps(tensor.to(device))
        row['labels'], row['uncertainty'] = labels[0].cpu().numpy(), uncertainty[0].cpu().numpy()
        if reference is not None and name != 'clean':
            row['psnr'] = calculate_psnr(row['image'], reference, crop_border=0, input_order='HWC')
            row['ssim'] = calculate_ssim(row['image'], reference, crop_border=0, input_order='HWC')
        rows.append(row)
    draw(rows, usa_loss.net.num_classes, crop, out_path)
    return rows


def draw(rows, num_classes, crop, out_path):
    """Four panels per row: image with the crop outlined, the crop, segmentation, uncertainty with a colour bar."""
    top, left, size = crop
    colours = class_colours(num_classes)
    fig, axes = plt.subplots(len(rows), 4, figsize=(4 * PANEL_INCHES, len(rows) * PANEL_INCHES), dpi=DPI,
                             squeeze=False, layout='constrained')
    for ax_row, row in zip(axes, rows):
        title = row['name'] + (f"\n{row['psnr']:.2f} dB, SSIM {row['ssim']:.4f}" if 'psnr' in row else '')
        ax_row[0].imshow(row['image'])
        ax_row[0].add_patch(Rectangle((left - 0.5, top - 0.5), size, size, fill=False, edgecolor='yellow', lw=1.5))
        ax_row[0].set_title(title, fontsize=9)
        ax_row[1].imshow(row['image'][top:top + size, left:left + size], interpolation='nearest')
        ax_row[1].set_title(f'{row["name"]}: zoom', fontsize=9)
        ax_row[2].imshow(row['labels'], cmap=colours, vmin=-0.5, vmax=num_classes - 0.5, interpolation='nearest')
        ax_row[2].set_title(f'segmentation ({len(np.unique(row["labels"]))} of {num_classes} classes)', fontsize=9)
        shown = ax_row[3].imshow(row['uncertainty'], cmap='magma', vmin=0, vmax=1)
        ax_row[3].set_title(f'uncertainty 1 - p* (mean {row["uncertainty"].mean():.3f})', fontsize=9)
        fig.colorbar(shown, ax=ax_row[3], fraction=0.046)
        for ax in ax_row:
            ax.set_axis_off()
    fig.savefig(out_path, dpi=DPI)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(prog='usaid-visualize', description=__doc__.splitlines()[0])
    parser.add_argument('image', help='the clean image (with --add-noise) or a noisy one')
    parser.add_argument('-w', '--weights', nargs='+', required=True,
                        help='released models by name (usaid, ssaid, cdncnn-b), BasicSR checkpoints or released files')
    parser.add_argument('--names', nargs='+', help='a name per checkpoint (default: the file names)')
    parser.add_argument('-o', '--output', default='usaid_visualize.png', help='the PNG figure to write')
    parser.add_argument('--add-noise', type=float, metavar='SIGMA',
                        help='add Gaussian noise (0-255 scale) by the test protocol; the image is then the clean one')
    parser.add_argument('--seed', type=int, default=PROTOCOL_NOISE_SEED,
                        help='seed of --add-noise (default: the test protocol\'s, %(default)s)')
    parser.add_argument('-opt', help="option file whose network_g builds the networks (default: USAID's defaults)")
    parser.add_argument('--crop', type=int, nargs=3, metavar=('TOP', 'LEFT', 'SIZE'), help='the zoom window')
    parser.add_argument('--usa-backbone', choices=BACKBONES, default='resnet101')
    parser.add_argument('--usa-pretrained', default='imagenet', help="imagenet, none, or a ResNet state dict file")
    parser.add_argument('--usa-init-seed', type=int, default=0, help="USANet's init_seed (the recipes use 0)")
    parser.add_argument('--num-classes', type=int, default=21)
    parser.add_argument('--device', default='auto', help='auto (a GPU when there is one), cpu, cuda, cuda:1, ...')
    add_inference_arguments(parser)
    args = parser.parse_args(argv)
    try:  # the checks that cost nothing first (the crop is checked against the image once it is read)
        check_sigma(args.add_noise)
        check_seed(args.seed)
        check_at_least(args.num_classes, 1, '--num-classes')
        device = resolve_device(args.device)
        check_figure_path(args.output, [args.image, *args.weights] + ([args.opt] if args.opt else []))
        network_opt = read_network_opt(args.opt) if args.opt else None
    except (ValueError, OSError) as error:
        sys.exit(f'usaid-visualize: {error}')
    usa_opt = {'backbone': args.usa_backbone, 'pretrained': args.usa_pretrained, 'init_seed': args.usa_init_seed,
               'num_classes': args.num_classes}
    try:
        rows = visualize(args.image, args.weights, args.names, args.output, args.add_noise, args.seed, network_opt,
                         usa_opt, args.crop, device, inference_options(args))
    except (ValueError, CheckpointError, RuntimeError, OSError) as error:
        sys.exit(f'usaid-visualize: {error}')
    for row in rows:
        metrics = f"  {row['psnr']:.2f} dB  SSIM {row['ssim']:.4f}" if 'psnr' in row else ''
        print(f"{row['name']:<20}{metrics}  mean uncertainty {row['uncertainty'].mean():.4f}")
    print(f'Figure: {osp.abspath(args.output)}')


if __name__ == '__main__':
    main()

"""``make demo`` (``python -m usaid.demo``): train U-SAID on CPU for a few minutes, then show what it learnt.

1. Writes colour photographs shipped with scikit-image to ``datasets/demo/{train,val}`` (no download).
2. Trains with BasicSR's ``train_pipeline`` from ``options/demo_usaid_cpu.yml`` (extra arguments, such as
   ``--auto_resume``, are passed on to it), validating on the way.
3. Denoises the validation images with the final weights, prints the PSNR of the noisy input and of the output,
   and writes ``experiments/<name>/demo_noisy_denoised_clean.png`` (noisy | denoised | clean, one row per image).
"""
import os
import sys
from os import path as osp

import cv2
import numpy as np
import skimage.data
import torch

import usaid  # noqa: F401  (registers U-SAID)
from basicsr.archs import build_network
from basicsr.data import build_dataset
from basicsr.metrics import calculate_psnr
from basicsr.train import train_pipeline
from basicsr.utils import imwrite, tensor2img

from usaid import yaml_io
from usaid.checkpoint import canonical_state_dict

DEMO_OPTIONS = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'options', 'demo_usaid_cpu.yml')
TRAIN_IMAGES = {
    'astronaut': skimage.data.astronaut,
    'coffee': skimage.data.coffee,
    'rocket': skimage.data.rocket,
    'hubble_deep_field': skimage.data.hubble_deep_field,
    'immunohistochemistry': skimage.data.immunohistochemistry,
    'retina': skimage.data.retina,
    'motorcycle_left': lambda: skimage.data.stereo_motorcycle()[0],
}
VAL_IMAGES = {
    'chelsea': skimage.data.chelsea,
    'motorcycle_right': lambda: skimage.data.stereo_motorcycle()[1],
}
VAL_SIZE = 256


def write_demo_images(root):
    """Write the training photographs and 256x256 centre crops for validation as PNG under ``root``."""
    for subset, images, crop in (('train', TRAIN_IMAGES, None), ('val', VAL_IMAGES, VAL_SIZE)):
        os.makedirs(osp.join(root, subset), exist_ok=True)
        for name, load in images.items():
            path = osp.join(root, subset, f'{name}.png')
            if osp.exists(path):
                continue
            rgb = load()[..., :3]
            if crop:
                top, left = (rgb.shape[0] - crop) // 2, (rgb.shape[1] - crop) // 2
                rgb = rgb[top:top + crop, left:left + crop]
            cv2.imwrite(path, np.ascontiguousarray(rgb[..., ::-1]))


@torch.inference_mode()
def evaluate(opt, weights_path):
    """PSNR of the noisy and the denoised validation images, and their side-by-side rows (8-bit BGR)."""
    net = build_network(opt['network_g'])
    net.load_state_dict(canonical_state_dict(weights_path, net=net))
    net.eval()
    dataset_opt = dict(opt['datasets']['val'], phase='val')
    rows, results = [], []
    for sample in build_dataset(dataset_opt):
        noisy, clean = sample['lq'].unsqueeze(0), sample['gt'].unsqueeze(0)
        denoised = net(noisy)
        images = [tensor2img(t) for t in (noisy, denoised, clean)]
        results.append((osp.basename(sample['gt_path']), calculate_psnr(images[0], images[2], 0),
                        calculate_psnr(images[1], images[2], 0)))
        rows.append(np.concatenate(images, axis=1))
    return results, rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if '-opt' not in argv:
        argv = ['-opt', DEMO_OPTIONS] + argv
    with open(argv[argv.index('-opt') + 1]) as f:
        opt = yaml_io.load(f)
    write_demo_images(osp.dirname(opt['datasets']['train']['dataroot_gt']))

    sys.argv = [sys.argv[0]] + argv  # BasicSR's parse_options reads the command line
    train_pipeline(os.getcwd())

    experiment = osp.join(os.getcwd(), 'experiments', opt['name'])
    results, rows = evaluate(opt, osp.join(experiment, 'models', 'net_g_latest.pth'))
    print(f"\nU-SAID demo, sigma {opt['datasets']['val']['sigma']}, PSNR (dB) on held-out photographs:")
    print(f"{'image':<24}{'noisy':>8}{'denoised':>10}")
    for name, noisy_psnr, denoised_psnr in results:
        print(f'{name:<24}{noisy_psnr:>8.2f}{denoised_psnr:>10.2f}')
    mean_noisy, mean_denoised = np.mean([r[1] for r in results]), np.mean([r[2] for r in results])
    print(f"{'mean':<24}{mean_noisy:>8.2f}{mean_denoised:>10.2f}")
    figure = osp.join(experiment, 'demo_noisy_denoised_clean.png')
    imwrite(np.concatenate(rows, axis=0), figure)
    print(f'Side by side (noisy | denoised | clean): {figure}')
    return mean_noisy, mean_denoised


if __name__ == '__main__':
    main()

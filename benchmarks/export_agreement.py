"""How closely each export computes U-SAID: ``python benchmarks/export_agreement.py [--model usaid] [--images DIR]``

Exports ``--model`` (a released name, checkpoint, option file or experiment folder) in every format with
``usaid-export``'s library into a temporary folder, loads each file with the program it is for (spandrel,
onnxruntime, ``torch.export.load``, this package's loader), and denoises every image of ``--images`` (default:
Kodak24 beside this repository) at sigma 25 with the test protocol's noise. Prints the mean PSNR against the clean
images, the largest per-image PSNR difference from PyTorch, and the seconds per image; the figures of
docs/export.md.
"""
import argparse
import os
import tempfile
import time
from os import path as osp

import cv2
import numpy as np
import torch
from basicsr.metrics import calculate_psnr

from usaid.data.data_util import add_protocol_noise
from usaid.denoiser import load_denoiser, resolve_model
from usaid.export import export

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def loaders():
    """(label, output name, export options, load(path) -> a function of a 1 x 3 x H x W float32 tensor)."""
    import onnxruntime
    import spandrel

    def onnx_session(path, dtype):
        session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
        return lambda x: torch.from_numpy(session.run(None, {'input': x.numpy().astype(dtype)})[0]).float()
    return [
        ('spandrel (.pth)', 'model.pth', {}, lambda p: spandrel.ModelLoader().load_from_file(p).eval()),
        ('onnx fp32 (onnxruntime)', 'model.onnx', {}, lambda p: onnx_session(p, np.float32)),
        ('onnx fp16 (onnxruntime)', 'model_fp16.onnx', {'fp16': True}, lambda p: onnx_session(p, np.float16)),
        ('safetensors (usaid)', 'model.safetensors', {}, lambda p: load_denoiser(p)),
        ('pt2 (torch.export.load)', 'model.pt2', {}, lambda p: torch.export.load(p).module()),
    ]


def psnr(output, clean):
    return calculate_psnr((output[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round(), clean, 0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='usaid')
    parser.add_argument('--images', default=osp.join(REPO, '..', 'shared', 'testsets', 'Kodak24'))
    parser.add_argument('--sigma', type=float, default=25)
    args = parser.parse_args()
    names = sorted(n for n in os.listdir(args.images) if n.lower().endswith('.png'))
    network_opt, weights, param_key = resolve_model(args.model)
    source = load_denoiser(weights, network_opt, 'cpu', param_key or 'params_ema')
    images = []
    for name in names:
        clean = cv2.cvtColor(cv2.imread(osp.join(args.images, name)), cv2.COLOR_BGR2RGB)
        noisy = add_protocol_noise(clean.astype(np.float32) / 255, args.sigma).astype(np.float32)
        images.append((clean, torch.from_numpy(noisy).permute(2, 0, 1)[None].contiguous()))
    print(f'{args.model} on {len(names)} images of {args.images}, sigma {args.sigma:g}, '
          f'torch {torch.__version__}, {torch.get_num_threads()} threads')
    with torch.inference_mode():
        reference = [psnr(source(x), clean) for clean, x in images]
    print(f'{"runtime":26s} {"mean PSNR":>10s} {"max |dPSNR|":>12s} {"s/image":>8s}')
    print(f'{"PyTorch (source)":26s} {np.mean(reference):10.3f} {0:12.4f}')
    with tempfile.TemporaryDirectory() as folder:
        for label, name, options, load in loaders():
            path = osp.join(folder, name)
            export(args.model, path, **options)
            run = load(path)
            start = time.perf_counter()
            with torch.inference_mode():
                scores = [psnr(run(x), clean) for clean, x in images]
            seconds = (time.perf_counter() - start) / len(images)
            worst = max(abs(a - b) for a, b in zip(scores, reference))
            print(f'{label:26s} {np.mean(scores):10.3f} {worst:12.4f} {seconds:8.2f}')


if __name__ == '__main__':
    main()

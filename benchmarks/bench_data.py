"""Training data speed: ``python benchmarks/bench_data.py [--images 96] [--only jpeg png lmdb] [--folder DIR]``

Makes VOC-sized photos (500 x 375 and 375 x 500, smooth random content with texture) in a temporary folder, as JPEG
files, PNG files and an LMDB (``usaid-make-lmdb``'s library code: PNG, compression level 1), then measures the
patches per second of :class:`~usaid.data.GaussianNoiseDataset` at the recipes' settings (48 x 48 crops,
flips and rotations, sigma 25, batches of 64, sample numbers from ``ResumableSampler``) for:

  - before: ``cache_bytes: 0``, every patch decodes its image (the path of the previous version, which also
    converted the whole image to float before cropping, was measured apart: docs/benchmarks.md);
  - after: the decoded images in the shared-memory cache (its construction time is printed apart);
  - clean: the cache, without the noise: the most that adding the noise on the GPU could gain;

each per core (one thread, ``num_workers: 0``; per second of this process's CPU time, which other programs on the
machine do not change, and of wall-clock time) and through a DataLoader with 1 and 2 worker processes (persistent
workers, wall-clock time from the first batch on: the steady state); medians of 3 rounds. ``--folder`` adds a
folder or LMDB of your own (CBSD68, VOC). Figures go to docs/benchmarks.md.
"""
import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from os import path as osp

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import usaid  # noqa: E402,F401  (applies usaid.compat before BasicSR is used)
from usaid.data import GaussianNoiseDataset  # noqa: E402
from usaid.data.resumable_sampler import ResumableSampler  # noqa: E402
from usaid.tools.make_lmdb import make_lmdb  # noqa: E402

BATCH, GT_SIZE = 64, 48


def photo(rng, height, width):
    """Smooth colour fields plus mid- and high-frequency texture: compresses like a photograph."""
    coarse = cv2.resize(rng.random((6, 8, 3)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    middle = cv2.resize(rng.random((height // 8, width // 8, 3)).astype(np.float32), (width, height))
    fine = rng.standard_normal((height, width, 3)).astype(np.float32)
    img = 0.6 * coarse + 0.3 * middle + 0.03 * fine
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def make_images(root, count):
    rng = np.random.default_rng(0)
    for ext in ('jpg', 'png'):
        os.makedirs(osp.join(root, ext))
    for i in range(count):
        img = photo(rng, *((375, 500) if i % 3 else (500, 375)))
        cv2.imwrite(osp.join(root, 'jpg', f'{i:04d}.jpg'), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        cv2.imwrite(osp.join(root, 'png', f'{i:04d}.png'), img)
    make_lmdb(osp.join(root, 'png'), osp.join(root, 'photos.lmdb'))


class CleanPatches(GaussianNoiseDataset):
    """The dataset without its noise (the seed is still drawn): what the loader would do if the model added it."""

    @staticmethod
    def _noisy(gt, sigma, seed):
        return gt


def build(source, cache_bytes, kind=GaussianNoiseDataset):
    started = time.perf_counter()
    dataset = kind({'name': osp.basename(source), 'type': 'GaussianNoiseDataset', 'phase': 'train',
                    'dataroot_gt': source, 'io_backend': {'type': 'lmdb' if source.endswith('.lmdb') else 'disk'},
                    'gt_size': GT_SIZE, 'use_hflip': True, 'use_rot': True, 'sigma_type': 'fixed', 'sigma': 25,
                    'cache_bytes': cache_bytes})
    return dataset, time.perf_counter() - started


def patches_per_second(dataset, workers, batches, clock=time.perf_counter, rounds=3):
    """Median over ``rounds`` of the patches per second of ``batches`` batches, after a first batch that pays for
    starting the workers, by ``clock``."""
    sampler = ResumableSampler(dataset, 1, 0, ratio=-(-(rounds * batches + 1) * BATCH // len(dataset)))
    loader = DataLoader(dataset, BATCH, sampler=sampler, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0)
    iterator = iter(loader)
    next(iterator)
    figures = []
    for _ in range(rounds):
        started = clock()
        for _ in range(batches):
            next(iterator)
        figures.append(batches * BATCH / (clock() - started))
    del iterator, loader
    return statistics.median(figures)


def positive(text):
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f'{text!r}: expected an integer of at least 1')
    return value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=positive, default=96, help='photos of each kind (default 96)')
    parser.add_argument('--only', nargs='+', choices=('jpeg', 'png', 'lmdb'), default=('jpeg', 'png', 'lmdb'))
    parser.add_argument('--folder', action='append', default=[], help='also a folder (or *.lmdb) of your images')
    parser.add_argument('--workers', nargs='+', type=positive, default=(1, 2), help='DataLoader workers (default 1 2)')
    args = parser.parse_args()
    for folder in args.folder:
        if not osp.isdir(folder):
            parser.error(f'--folder {folder}: not a folder; expected a folder of images or an LMDB (*.lmdb)')
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    print(f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, '
          f'OpenCV {cv2.__version__}, Python {platform.python_version()}')
    print(f'{args.images} photos of 500x375 / 375x500 per kind; crops {GT_SIZE}, flips and rotations, sigma 25, '
          f'batch {BATCH}')
    with tempfile.TemporaryDirectory(prefix='usaid-bench-data-') as root:
        make_images(root, args.images)
        sources = {name: osp.join(root, folder) for name, folder in
                   (('jpeg', 'jpg'), ('png', 'png'), ('lmdb', 'photos.lmdb')) if name in args.only}
        sources.update({osp.basename(folder.rstrip('/')): folder.rstrip('/') for folder in args.folder})
        columns = ['core, CPU', 'core, wall'] + [f'{w} worker{"s" * (w > 1)}' for w in args.workers]
        print(f'\n{"data":8} {"path":7} ' + ' '.join(f'{c:>10}' for c in columns) + '   patches/s; construction')
        for name, source in sources.items():
            for path, cache_bytes, kind, batches in (('before', 0, GaussianNoiseDataset, 2),
                                                     ('after', 8 * 2**30, GaussianNoiseDataset, 15),
                                                     ('clean', 8 * 2**30, CleanPatches, 15)):
                dataset, built = build(source, cache_bytes, kind)
                figures = [patches_per_second(dataset, 0, batches, time.process_time),
                           patches_per_second(dataset, 0, batches)]
                if path != 'clean':  # clean tells what the noise costs a core; workers add nothing to that
                    figures += [patches_per_second(dataset, w, batches * w) for w in args.workers]
                print(f'{name[:8]:8} {path:7} ' + ' '.join(f'{f:10,.0f}' for f in figures)
                      + ' ' * 11 * (len(columns) - len(figures)) + f'   {built:.2f} s', flush=True)
                del dataset  # its LMDB environment closes: one process may open an LMDB once


if __name__ == '__main__':
    main()

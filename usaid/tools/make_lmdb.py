"""``usaid-make-lmdb SOURCE OUT.lmdb``: a BasicSR-format LMDB (``data.mdb`` + ``meta_info.txt``) of clean images.

SOURCE is a folder of images (searched recursively), or, with ``--list``, the folder that holds the images a list
file names (VOC 2012: ``--list ImageSets/Segmentation/train.txt --filename-tmpl '{}.jpg'`` over ``JPEGImages``).
Images are stored as PNG with BasicSR's own encoder (16-bit PNGs stay 16-bit), keyed by their path relative to
SOURCE without extension. The LMDB is written under a temporary name and renamed only once complete, so an
interrupted run never leaves an ``OUT.lmdb`` that looks finished; an existing ``OUT.lmdb`` is kept unless
``--overwrite`` is given.
"""
import argparse
import os
import shutil
import sys
from os import path as osp

import lmdb
from basicsr.utils import scandir
from basicsr.utils.lmdb_util import LmdbMaker, read_img_worker
from PIL import Image
from tqdm import tqdm

from usaid.data.gaussian_noise_dataset import IMAGE_EXTENSIONS

# PNG at any compression level stores at most the raw samples plus one filter byte per row and small headers
PNG_OVERHEAD_BYTES = 4096
LMDB_SLACK = 1.1


def list_images(source, list_file=None, filename_tmpl='{}'):
    """``(key, path)`` pairs: every image under ``source``, or the ones ``list_file`` names (first word per line)."""
    if not osp.isdir(source):
        raise FileNotFoundError(f'{source}: no such folder.')
    if list_file:
        with open(list_file) as f:
            names = [filename_tmpl.format(line.split()[0]) for line in f if line.strip()]
    else:
        names = sorted(p for p in scandir(source, recursive=True) if p.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise ValueError(f'{list_file or source}: no images to store.')
    pairs = [(osp.splitext(name)[0], osp.join(source, name)) for name in names]
    missing = [path for _, path in pairs if not osp.isfile(path)]
    if missing:
        raise FileNotFoundError(f'{len(missing)} listed image(s) do not exist, e.g. {missing[0]}.')
    dotted = [key for key, _ in pairs if '.' in key]
    if dotted:
        raise ValueError(f'key {dotted[0]!r}: BasicSR reads LMDB keys up to the first dot; rename such images.')
    return pairs


def upper_bound_bytes(path):
    """An upper bound of the PNG size of an image, from its header alone (no decoding)."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            bytes_per_sample = 2 if img.mode.startswith('I;16') or img.mode in ('I', 'F') else 1
            channels = len(img.getbands())
    except OSError as error:
        raise ValueError(f'{path}: cannot be read as an image ({error}).') from None
    return height * (width * channels * bytes_per_sample + 1) + PNG_OVERHEAD_BYTES


def make_lmdb(source, out, list_file=None, filename_tmpl='{}', overwrite=False, compress_level=1):
    """Write the LMDB ``out`` (must end with ``.lmdb``); returns ``(number of images, bytes stored)``."""
    out = osp.abspath(out)
    if not out.endswith('.lmdb'):
        raise ValueError(f"{out}: an LMDB folder name must end with '.lmdb' (BasicSR's convention).")
    if osp.exists(out) and not overwrite:
        raise FileExistsError(f'{out} exists; pass --overwrite to replace it.')
    pairs = list_images(source, list_file, filename_tmpl)
    map_size = int(sum(upper_bound_bytes(path) for _, path in pairs) * LMDB_SLACK) + (1 << 20)

    partial = osp.join(osp.dirname(out), f'.{osp.basename(out)[:-len(".lmdb")]}.partial.lmdb')
    shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted run
    os.makedirs(osp.dirname(out), exist_ok=True)
    stored = 0
    maker = LmdbMaker(partial, map_size=map_size, compress_level=compress_level)
    try:
        for key, path in tqdm(pairs, unit='image', desc=osp.basename(out)):
            try:
                _, img_byte, shape = read_img_worker(path, key, compress_level)
            except AttributeError:  # cv2.imread returned None
                raise ValueError(f'{path}: cannot be read as an image.') from None
            maker.put(img_byte.tobytes(), key, shape)
            stored += len(img_byte)
        maker.close()
    except (lmdb.Error, OSError) as error:  # a full disk surfaces as "mdb_txn_commit: Input/output error"
        shutil.rmtree(partial, ignore_errors=True)
        kept = f'the existing {out} is kept' if osp.exists(out) else f'no {osp.basename(out)} was made'
        raise OSError(f'{out}: the LMDB could not be written ({error}); {kept}. Check the free disk space.') from error
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if osp.exists(out):
        shutil.rmtree(out)
    os.replace(partial, out)
    return len(pairs), stored


def main(argv=None):
    parser = argparse.ArgumentParser(prog='usaid-make-lmdb', description=__doc__.splitlines()[0])
    parser.add_argument('source', help='folder of images')
    parser.add_argument('out', help='LMDB folder to create, ending with .lmdb')
    parser.add_argument('--list', help='only the images this file names (first word per line)')
    parser.add_argument('--filename-tmpl', default='{}', help="file name of each listed name, e.g. '{}.jpg'")
    parser.add_argument('--compress-level', type=int, default=1, help='PNG compression level, 0-9')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing OUT')
    args = parser.parse_args(argv)
    try:
        count, stored = make_lmdb(args.source, args.out, args.list, args.filename_tmpl, args.overwrite,
                                  args.compress_level)
    except (ValueError, OSError) as error:
        sys.exit(f'usaid-make-lmdb: {error}')
    print(f'Wrote {count} images ({stored / 2**20:.1f} MiB of PNG) to {osp.abspath(args.out)} '
          f"with meta_info.txt; read it with io_backend: {{type: lmdb}}, dataroot_gt: {args.out}")


if __name__ == '__main__':
    main()

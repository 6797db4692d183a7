"""``usaid-make-lmdb SOURCE OUT.lmdb``: a BasicSR-format LMDB (``data.mdb`` + ``meta_info.txt``) of clean images.

SOURCE is a folder of images (searched recursively), or, with ``--list``, the folder that holds the images a list
file names (VOC 2012: ``--list ImageSets/Segmentation/train.txt --filename-tmpl '{}.jpg'`` over ``JPEGImages``).
Images are stored as PNG with BasicSR's own encoder (16-bit PNGs stay 16-bit), keyed by their path relative to
SOURCE without extension; EXIF orientation is applied, as BasicSR's folder readers (OpenCV) apply it, so the LMDB holds
the images that the folder gives. Keys must be ASCII without white space (BasicSR encodes keys as ASCII, and its
``meta_info.txt`` line ``name (h,w,c) level`` is split at spaces): other names are refused, listed, for renaming.

The LMDB is written under a temporary name and renamed only once complete, so an interrupted run never leaves an
``OUT.lmdb`` that looks finished. An existing ``OUT.lmdb`` is kept unless ``--overwrite`` is given, which replaces only
an LMDB as this tool writes it (``data.mdb``, ``meta_info.txt`` and LMDB's ``lock.mdb``, nothing else). OUT is never
SOURCE, inside it or around it. A lock (``.OUT.lmdb.lock`` beside it) keeps a second build of the same OUT from
starting while one runs.
"""
import argparse
import os
import shutil
import sys
import tempfile
from os import path as osp

import cv2
import lmdb
from basicsr.utils import scandir
from basicsr.utils.lmdb_util import LmdbMaker
from PIL import Image
from tqdm import tqdm

from usaid.data.data_util import IMAGE_EXTENSIONS
from usaid.errors import USAIDError
from usaid.image_io import read_upright
from usaid.paths import check_writable, output_lock, relation

# PNG at any compression level stores at most the raw samples plus one filter byte per row and small headers
PNG_OVERHEAD_BYTES = 4096
LMDB_SLACK = 1.1
# what an LMDB of this tool holds: --overwrite deletes such a folder and nothing else
LMDB_FILES = ('data.mdb', 'meta_info.txt')
LMDB_OPTIONAL_FILES = ('lock.mdb',)  # made by LMDB itself when the database is opened for writing
_LISTED = 5  # names quoted in a message


def _listed(names):
    return ', '.join(map(repr, names[:_LISTED])) + (f' and {len(names) - _LISTED} more' if len(names) > _LISTED else '')


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
    spaced = [path for key, path in pairs if any(c.isspace() for c in key)]
    if spaced:
        raise ValueError(f'{len(spaced)} image name(s) hold white space: {_listed(spaced)}; BasicSR\'s meta_info.txt '
                         '(a line is "name (h,w,c) level") is split at spaces, so training could not read them back. '
                         'Expected names without spaces: rename them (e.g. spaces to _); nothing was written.')
    non_ascii = [path for key, path in pairs if not key.isascii()]
    if non_ascii:
        raise ValueError(f'{len(non_ascii)} image name(s) are not ASCII: {_listed(non_ascii)}; BasicSR encodes LMDB '
                         'keys as ASCII to write and to read them. Expected ASCII names: rename them; nothing was '
                         'written.')
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


def encode_png(path, compress_level):
    """``(PNG bytes, (h, w, c))`` of an image file, upright (EXIF orientation applied) as BasicSR's folder readers
    see it, with its bit depth, gray and alpha kept."""
    img = read_upright(path, 'an image of an LMDB')
    _, data = cv2.imencode('.png', img, [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
    return data, (*img.shape[:2], 1 if img.ndim == 2 else img.shape[2])


def check_replaceable(out, overwrite):
    """Raise ``FileExistsError`` if ``out`` exists, unless ``overwrite`` is given and it is an LMDB as this tool
    writes it, the only thing ``--overwrite`` may delete."""
    if not osp.lexists(out):
        return
    if not overwrite:
        raise FileExistsError(f'{out} exists; pass --overwrite to replace it.')
    if osp.islink(out) or not osp.isdir(out):
        kind = f'a symbolic link to {os.readlink(out)}' if osp.islink(out) else 'a file'
        raise FileExistsError(f'{out} exists and is {kind}, not an LMDB folder; --overwrite replaces only an LMDB '
                              'written by usaid-make-lmdb. Remove it yourself, or choose another OUT.')
    entries = sorted(os.listdir(out))
    others = [e for e in entries if e not in LMDB_FILES + LMDB_OPTIONAL_FILES or not osp.isfile(osp.join(out, e))
              or osp.islink(osp.join(out, e))]
    missing = [name for name in LMDB_FILES if name not in entries]
    if others or missing:
        found = f'it also holds {_listed(others)}' if others else f'it has no {" and ".join(missing)}'
        raise FileExistsError(f'{out} exists and is not an LMDB written by usaid-make-lmdb ({found}); --overwrite '
                              f'replaces only a folder of {" and ".join(LMDB_FILES)} (and lock.mdb), so nothing of '
                              'yours is deleted. Move it away yourself, or choose another OUT.')
    try:  # the names alone do not make an LMDB: its data.mdb must open as one
        lmdb.open(out, readonly=True, lock=False, readahead=False).close()
    except lmdb.Error as error:
        raise FileExistsError(f'{out} exists, but its data.mdb is not an LMDB ({error}); --overwrite replaces only an '
                              'LMDB written by usaid-make-lmdb. Move it away yourself, or choose another '
                              'OUT.') from None


def make_lmdb(source, out, list_file=None, filename_tmpl='{}', overwrite=False, compress_level=1):
    """Write the LMDB ``out`` (must end with ``.lmdb``); returns ``(number of images, bytes stored)``."""
    out = osp.abspath(out)
    if not out.endswith('.lmdb'):
        raise ValueError(f"{out}: an LMDB folder name must end with '.lmdb' (BasicSR's convention).")
    if not 0 <= compress_level <= 9:
        raise ValueError(f'--compress-level {compress_level}: expected a PNG compression level from 0 to 9.')
    for what, path in (('SOURCE', source), ('--list', list_file)):
        where = path and relation(out, path)
        if where and (what == 'SOURCE' or where != 'inside'):
            raise ValueError(f'OUT {out} is {where} {what} {path}: the LMDB would be written over what it is made '
                             'from (and --overwrite would delete it); expected an OUT outside it, that does not hold '
                             'it either.')
    check_writable(out, 'OUT')
    check_replaceable(out, overwrite)
    if filename_tmpl.count('{}') != 1 or filename_tmpl.replace('{}', '', 1).count('{') + \
            filename_tmpl.replace('{}', '', 1).count('}'):
        raise ValueError(f'--filename-tmpl {filename_tmpl!r}: expected a file name with one {{}} for the listed name '
                         "and no other braces, e.g. '{}.jpg'")
    pairs = list_images(source, list_file, filename_tmpl)
    keys = {}
    for key, path in pairs:
        keys.setdefault(key, []).append(path)
    clashes = {key: paths for key, paths in keys.items() if len(paths) > 1}
    if clashes:  # one LMDB record per key: a second image of the same key would replace the first
        raise ValueError(f'{len(clashes)} LMDB key(s) would hold more than one image (BasicSR keys images by their '
                         f'name without extension): {_listed([k + ": " + ", ".join(v) for k, v in clashes.items()])}; '
                         'expected one image per name: rename or leave out the others (or list each once)')
    map_size = int(sum(upper_bound_bytes(path) for _, path in pairs) * LMDB_SLACK) + (1 << 20)

    os.makedirs(osp.dirname(out), exist_ok=True)
    with output_lock(out, 'usaid-make-lmdb'):  # from here on, no other build of the same OUT runs
        check_replaceable(out, overwrite)  # again: another build may have made OUT meanwhile
        # written inside a fresh folder of our own (BasicSR's LmdbMaker exits if its folder exists): nothing
        # someone else made is ever touched or deleted
        work = tempfile.mkdtemp(prefix=f'.{osp.basename(out)}.partial-', dir=osp.dirname(out))
        partial = osp.join(work, 'partial.lmdb')
        stored = 0
        maker = LmdbMaker(partial, map_size=map_size, compress_level=compress_level)
        try:
            for key, path in tqdm(pairs, unit='image', desc=osp.basename(out)):
                img_byte, shape = encode_png(path, compress_level)
                maker.put(img_byte.tobytes(), key, shape)
                stored += len(img_byte)
            maker.close()
        except (lmdb.Error, OSError) as error:  # a full disk surfaces as "mdb_txn_commit: Input/output error"
            shutil.rmtree(work, ignore_errors=True)
            kept = f'the existing {out} is kept' if osp.exists(out) else f'no {osp.basename(out)} was made'
            raise OSError(f'{out}: the LMDB could not be written ({error}); {kept}. Check the free disk space.') \
                from error
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        if osp.lexists(out):  # the old LMDB is moved aside, into our folder, until the new one has its name
            os.replace(out, osp.join(work, 'replaced.lmdb'))
        os.replace(partial, out)
        shutil.rmtree(work)
    return len(pairs), stored


def main(argv=None):
    parser = argparse.ArgumentParser(prog='usaid-make-lmdb', description=__doc__.splitlines()[0])
    parser.add_argument('source', help='folder of images')
    parser.add_argument('out', help='LMDB folder to create, ending with .lmdb')
    parser.add_argument('--list', help='only the images this file names (first word per line)')
    parser.add_argument('--filename-tmpl', default='{}', help="file name of each listed name, e.g. '{}.jpg'")
    parser.add_argument('--compress-level', type=int, default=1, help='PNG compression level, 0-9')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace an existing OUT, if it is an LMDB that this tool wrote (nothing else is deleted)')
    args = parser.parse_args(argv)
    try:
        count, stored = make_lmdb(args.source, args.out, args.list, args.filename_tmpl, args.overwrite,
                                  args.compress_level)
    except (ValueError, OSError, USAIDError) as error:
        sys.exit(f'usaid-make-lmdb: {error}')
    print(f'Wrote {count} images ({stored / 2**20:.1f} MiB of PNG) to {osp.abspath(args.out)} '
          f"with meta_info.txt; read it with io_backend: {{type: lmdb}}, dataroot_gt: {args.out}")


if __name__ == '__main__':
    main()

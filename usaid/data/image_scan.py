"""What a dataset's images are, read from their headers (and LMDB metadata) without decoding them.

:func:`scan_folder_images` and :func:`scan_lmdb_images` run once per dataset at construction: they find the files
that cannot be used (missing, unreadable, not an image, truncated) and each image's size, channels and bit depth,
so that option checking and the dataset can decide about them before training starts. Results are cached per
process, because the option check and the dataset scan the same files.
"""
import functools
import os
from dataclasses import dataclass
from os import path as osp

import lmdb
from PIL import Image, UnidentifiedImageError

# a complete file ends with these bytes (JPEG's end-of-image marker, PNG's IEND chunk)
_TRAILERS = {'JPEG': b'\xff\xd9', 'PNG': b'IEND\xaeB`\x82'}
_GRAY_MODES = ('1', 'L', 'LA', 'I', 'I;16', 'I;16B', 'I;16L', 'F')
_ALPHA_MODES = ('LA', 'PA', 'RGBA')


@dataclass(frozen=True)
class ImageInfo:
    """One image: ``problem`` says why it cannot be used (None if it can); the rest comes from its header."""
    path: str
    problem: str = None
    height: int = 0
    width: int = 0
    gray: bool = False
    alpha: bool = False
    bits: int = 8


def _png_bit_depth(header):
    """Bits per sample from a PNG's IHDR chunk (PIL reports 16-bit colour PNGs as 8-bit RGB)."""
    return header[24] if len(header) > 24 and header[12:16] == b'IHDR' else 8


def scan_file(path):
    """:class:`ImageInfo` of one image file, from its header and its last bytes."""
    try:
        with open(path, 'rb') as f:
            header = f.read(32)
            with Image.open(f) as img:
                height, width, mode, fmt = img.height, img.width, img.mode, img.format
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16))
            tail = f.read().rstrip(b'\x00\r\n ')  # some writers pad after the end marker
    except FileNotFoundError:
        return ImageInfo(path, 'does not exist')
    except UnidentifiedImageError:
        return ImageInfo(path, 'is not an image file that can be read')
    except OSError as error:
        return ImageInfo(path, f'cannot be read ({error.strerror or error})')
    if fmt in _TRAILERS and not tail.endswith(_TRAILERS[fmt]):
        return ImageInfo(path, f'is truncated (a {fmt} file without its end marker)')
    bits = 16 if mode.startswith('I;16') or (fmt == 'PNG' and _png_bit_depth(header) == 16) else 8
    return ImageInfo(path, None, height, width, mode in _GRAY_MODES, mode in _ALPHA_MODES, bits)


def _signature(path):
    """What tells a changed file from the one scanned before."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def scan_folder_images(paths):
    """:class:`ImageInfo` of each file in ``paths``."""
    return _scan_files(tuple((path, _signature(path)) for path in paths))


@functools.lru_cache(maxsize=16)
def _scan_files(signed_paths):
    return tuple(scan_file(path) for path, _ in signed_paths)


def _parse_shape(text):
    """``(h,w,c)`` of a BasicSR ``meta_info.txt`` line, or None."""
    try:
        height, width, channels = (int(v) for v in text.strip('()').split(','))
    except ValueError:
        return None
    return height, width, channels


def scan_lmdb_images(root):
    """``(infos, unlisted)`` of a BasicSR LMDB: an :class:`ImageInfo` per key of its ``meta_info.txt`` (in order; the
    size from the listed shape, the bit depth from the stored PNG's header) and the number of keys the LMDB holds
    that ``meta_info.txt`` does not list.

    Raises ``ValueError`` naming the file when ``root`` is not a readable BasicSR LMDB.
    """
    return _scan_lmdb(root, _signature(osp.join(root, 'meta_info.txt')), _signature(osp.join(root, 'data.mdb')))


@functools.lru_cache(maxsize=16)
def _scan_lmdb(root, *_signatures):
    meta_info = osp.join(root, 'meta_info.txt')
    for required in (osp.join(root, 'data.mdb'), meta_info):
        if not osp.isfile(required):
            raise ValueError(f'{root} is not an LMDB made for BasicSR: {required} does not exist; expected '
                             'data.mdb and meta_info.txt (usaid-make-lmdb writes both)')
    listed = []
    with open(meta_info) as f:
        for line in f:
            if line.strip():
                name, shape = (line.split() + [''])[:2]
                listed.append((name.split('.')[0], _parse_shape(shape)))  # BasicSR's key: up to the first dot
    try:
        env = lmdb.open(root, readonly=True, lock=False, readahead=False)
    except lmdb.Error as error:
        raise ValueError(f'{root} cannot be opened as an LMDB ({error}); expected an LMDB written by '
                         'usaid-make-lmdb') from None
    with env, env.begin(buffers=True) as txn:  # buffers: each value's header is read in place, not copied
        stored = {bytes(key).decode(): _png_bit_depth(bytes(value[:32])) for key, value in txn.cursor()}
    infos = []
    for key, shape in listed:
        if key not in stored:
            infos.append(ImageInfo(key, f'is listed in {meta_info} but not stored in the LMDB'))
        elif shape is None:
            infos.append(ImageInfo(key, None))  # no shape listed: known only when decoded
        else:
            height, width, channels = shape
            infos.append(ImageInfo(key, None, height, width, channels in (1, 2), channels in (2, 4), stored[key]))
    return tuple(infos), len(stored.keys() - {key for key, _ in listed})


def image_sizes(options, paths):
    """``(path, height, width)`` of the dataset images ``paths`` (as :func:`collect_images` returns them for a
    dataset's parsed ``options``) whose size is known without decoding: from the headers, or an LMDB's
    meta_info.txt."""
    if options.io_backend.type == 'lmdb':
        infos = scan_lmdb_images(osp.abspath(options.dataroot_gt))[0]
    else:
        infos = scan_folder_images(tuple(paths))
    wanted = set(paths)
    return [(info.path, info.height, info.width) for info in infos if info.path in wanted and info.height]

"""Image files read and written for the tools: photographs as viewers show them (EXIF orientation applied, files of
several frames refused), 8-bit and 16-bit, gray and alpha kept, written whole or not at all.

A camera stores a portrait photo as landscape pixels plus an EXIF orientation tag; viewers, and OpenCV's
``cv2.imread`` with ``IMREAD_COLOR`` (so the datasets' readers), turn the pixels upright. ``IMREAD_UNCHANGED``, which
the tools need to keep 16-bit samples, gray and alpha, does not: the tag is read here (PIL, from the header) and
applied to the pixels instead, so every tool sees the image the same way.
"""
import os
from os import path as osp

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

EXIF_ORIENTATION = 0x0112
# EXIF orientation -> (transpose first, then flip rows, flip columns): the pixels turned upright
_UPRIGHT = {2: (False, False, True), 3: (False, True, True), 4: (False, True, False), 5: (True, False, False),
            6: (True, False, True), 7: (True, True, True), 8: (True, True, False)}


def frames_and_orientation(path):
    """``(number of frames, EXIF orientation)`` of an image file, from its header; ``(1, 1)`` for a file PIL does not
    read (OpenCV may; if it cannot either, its reader says so)."""
    try:
        with Image.open(path) as img:
            return getattr(img, 'n_frames', 1), img.getexif().get(EXIF_ORIENTATION, 1)
    except (UnidentifiedImageError, OSError, SyntaxError):  # PIL raises SyntaxError for some broken headers
        return 1, 1


def upright(img, orientation):
    """``img`` (H x W or H x W x C) turned as EXIF ``orientation`` (1-8) says; other values leave it unchanged."""
    if orientation not in _UPRIGHT:
        return img
    transpose, flip_rows, flip_columns = _UPRIGHT[orientation]
    if transpose:
        img = img.swapaxes(0, 1)
    return np.ascontiguousarray(img[::-1 if flip_rows else 1, ::-1 if flip_columns else 1])


def single_image_orientation(path, what='image'):
    """The EXIF orientation of an image file, after checking from its header that it holds one frame: of an animated
    GIF, PNG or WebP or a multi-page TIFF only the first frame would be read, silently. ``ValueError`` otherwise."""
    frames, orientation = frames_and_orientation(path)
    if frames > 1:
        raise ValueError(f'{path}: holds {frames} frames (an animation or a multi-page file), and only single '
                         f'images can be used as {what}; expected one image per file: save the frames as separate '
                         'images (e.g. ffmpeg -i in.gif frame_%03d.png) and give those.')
    return orientation


def read_upright(path, what='image'):
    """An image file as ``cv2.imread(path, IMREAD_UNCHANGED)`` reads it (bit depth, gray, alpha kept), EXIF
    orientation applied. ``ValueError`` for a file that cannot be read or that holds several frames."""
    orientation = single_image_orientation(path, what)
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f'{path}: cannot be read as an image.')
    return upright(img, orientation)


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

"""Photographs as viewers show them: EXIF orientation applied, files of several frames refused.

A camera stores a portrait photo as landscape pixels plus an EXIF orientation tag; viewers, and OpenCV's
``cv2.imread`` with ``IMREAD_COLOR`` (so the datasets' readers), turn the pixels upright. ``IMREAD_UNCHANGED``, which
the tools need to keep 16-bit samples, gray and alpha, does not: the tag is read here (PIL, from the header) and
applied to the pixels instead, so every tool sees the image the same way.
"""
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

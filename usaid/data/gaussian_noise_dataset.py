import logging
import os
import random
from contextlib import contextmanager
from os import path as osp

import cv2
import numpy as np
import torch
from basicsr.data.transforms import augment
from basicsr.utils import FileClient, img2tensor, scandir
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from usaid.data.image_scan import scan_folder_images, scan_lmdb_images

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')
SIGMA_TYPES = ('fixed', 'uniform', 'choice')
IO_BACKENDS = ('disk', 'lmdb')
_EXAMPLES = 3  # file names quoted in a message


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# Noise levels are on the 0-255 scale: a standard deviation beyond the data range leaves nothing to restore.
MAX_SIGMA = 255


def check_sigma(sigma_type, sigma):
    """``sigma`` as floats (0-255 scale) if it fits ``sigma_type``; else ``ValueError`` naming the key and what was
    expected."""
    if sigma_type not in SIGMA_TYPES:
        raise ValueError(f'sigma_type: found {sigma_type!r}; expected one of {", ".join(SIGMA_TYPES)}')
    def valid(value):  # NaN and infinity fail the comparison
        return _number(value) and 0 <= value <= MAX_SIGMA

    if sigma_type == 'fixed' and valid(sigma):
        return float(sigma)
    if sigma_type in ('uniform', 'choice') and isinstance(sigma, (list, tuple)) and sigma and all(
            valid(s) for s in sigma) and (sigma_type == 'choice' or (len(sigma) == 2 and sigma[0] <= sigma[1])):
        return [float(s) for s in sigma]
    expected = {'fixed': f'a number from 0 to {MAX_SIGMA}',
                'uniform': f'[low, high] with 0 <= low <= high <= {MAX_SIGMA}',
                'choice': f'a non-empty list of numbers from 0 to {MAX_SIGMA}'}
    raise ValueError(f'sigma: found {sigma!r}, which does not fit sigma_type {sigma_type!r}; expected '
                     f'{expected[sigma_type]} (0-255 scale)')


def _examples(infos, describe):
    shown = '; '.join(describe(info) for info in infos[:_EXAMPLES])
    return shown + (f'; and {len(infos) - _EXAMPLES} more' if len(infos) > _EXAMPLES else '')


def collect_images(opt):
    """The images a :class:`GaussianNoiseDataset` with options ``opt`` reads, after checking them from their headers.

    Returns ``(paths, warnings)``: file paths (LMDB keys for an LMDB) and the messages the dataset logs. Raises
    ``ValueError`` starting with the option key at fault: missing ``dataroot_gt``/``meta_info_file``/LMDB, no
    images, files a list names that do not exist, images smaller than ``gt_size`` (training), and, for validation
    and test, any image that cannot be used. Training skips unreadable, corrupt and truncated images with a warning
    (one bad file among thousands must not stop a run); validation and test refuse them, because an average over
    part of a test set does not compare with published tables. Gray and RGBA images are used (gray repeated to
    three channels, alpha dropped) with a counted warning; 16-bit images are read at full precision.
    """
    phase = opt.get('phase', 'test')
    root = opt.get('dataroot_gt')
    backend = (opt.get('io_backend') or {}).get('type', 'disk')
    if backend not in IO_BACKENDS:
        raise ValueError(f'io_backend:type: found {backend!r}; expected one of {", ".join(IO_BACKENDS)}')
    if not isinstance(root, str) or not root:
        raise ValueError(f'dataroot_gt: found {root!r}; expected the path of a folder of images or of an LMDB')
    if not osp.isdir(root):
        raise ValueError(f'dataroot_gt: {root} does not exist or is not a folder; expected a folder of images'
                         + (' or an LMDB (*.lmdb)' if backend == 'lmdb' else ''))
    warnings = []
    if backend == 'lmdb':
        if not root.rstrip('/').endswith('.lmdb'):
            raise ValueError(f"dataroot_gt: {root} with io_backend lmdb; expected an LMDB folder whose name ends "
                             "with '.lmdb' (BasicSR's convention; make one with usaid-make-lmdb)")
        try:
            infos, unlisted = scan_lmdb_images(osp.abspath(root))
        except ValueError as error:
            raise ValueError(f'dataroot_gt: {error}') from None
        if unlisted:
            warnings.append(f'{unlisted} image(s) stored in the LMDB {root} are not listed in its meta_info.txt and '
                            'are not used')
        missing = [info for info in infos if info.problem and 'not stored' in info.problem]
        if missing:
            raise ValueError(f'dataroot_gt: {len(missing)} key(s) of {osp.join(root, "meta_info.txt")} are not in '
                             f'the LMDB: {_examples(missing, lambda i: i.path)}; expected a meta_info.txt written '
                             'with the LMDB (usaid-make-lmdb)')
    else:
        meta_info_file = opt.get('meta_info_file')
        if meta_info_file:
            if not osp.isfile(meta_info_file):
                raise ValueError(f'meta_info_file: {meta_info_file} does not exist; expected a text file naming one '
                                 'image per line')
            tmpl = opt.get('filename_tmpl', '{}')
            with open(meta_info_file) as fin:
                paths = [osp.join(root, tmpl.format(line.split()[0])) for line in fin if line.strip()]
            absent = [p for p in paths if not osp.exists(p)]
            if absent:
                raise ValueError(
                    f'meta_info_file: {len(absent)} of the {len(paths)} images that {meta_info_file} names do not '
                    f'exist under dataroot_gt {root}, e.g. {absent[0]}; expected existing files (filename_tmpl '
                    f"{tmpl!r} makes the file names; VOC's lists need '{{}}.jpg')")
            source = meta_info_file
        else:
            found = sorted(scandir(root, recursive=True))
            paths = [osp.join(root, p) for p in found if p.lower().endswith(IMAGE_EXTENSIONS)]
            if not paths:
                others = sorted({osp.splitext(p)[1] or p for p in found})
                raise ValueError(f'dataroot_gt: {root} holds no images'
                                 + (f' (only {len(found)} file(s) of kinds {", ".join(others[:5])})' if found else
                                    ' (it is empty)')
                                 + f'; expected image files ({", ".join(IMAGE_EXTENSIONS)})')
            source = root
        if not paths:
            raise ValueError(f'meta_info_file: {source} names no images; expected one image name per line')
        infos = scan_folder_images(tuple(paths))

    bad = [info for info in infos if info.problem]
    if bad:
        described = _examples(bad, lambda i: f'{i.path} {i.problem}')
        if phase != 'train':
            raise ValueError(f'dataroot_gt: {len(bad)} of {len(infos)} images cannot be used: {described}; '
                             'expected every image of a validation or test set to be readable')
        if len(bad) == len(infos):
            raise ValueError(f'dataroot_gt: none of the {len(infos)} images can be used: {described}; expected '
                             'readable image files')
        warnings.append(f'skipping {len(bad)} of {len(infos)} training images that cannot be used: {described}')
    good = [info for info in infos if not info.problem]
    gt_size = opt.get('gt_size')
    if phase == 'train' and _number(gt_size):
        small = [info for info in good if info.height and min(info.height, info.width) < gt_size]
        if small:
            raise ValueError(f'gt_size: {gt_size} is larger than {len(small)} of the {len(infos)} images: '
                             f'{_examples(small, lambda i: f"{i.path} ({i.height}x{i.width})")}; expected a crop '
                             'that fits every image (lower gt_size, or leave those images out)')
    in_ch = opt.get('in_ch', 3)
    for flag, what in (('gray', 'gray (used with the channel repeated to RGB)'), ('alpha', 'with an alpha channel '
                                                                                           '(alpha dropped)')):
        flagged = [info for info in good if getattr(info, flag)]
        if flagged and not (flag == 'gray' and in_ch == 1):
            warnings.append(f'{len(flagged)} of {len(infos)} images are {what}, e.g. {flagged[0].path}')
    return [info.path for info in good], warnings


def add_protocol_noise(rgb, sigma, seed=0):
    """The literature's test noise: ``rgb + normal(0, sigma / 255)`` drawn over the whole H x W x C float array by a
    generator seeded with ``seed`` (the numbers of ``np.random.seed(seed); np.random.normal(...)``), unclipped."""
    return rgb + np.random.RandomState(seed).normal(0, sigma / 255., rgb.shape)


@contextmanager
def python_random_seeded(seed):
    """Run a block on Python's ``random`` seeded with ``seed``, restoring the previous state afterwards."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def decode_image(content, path, in_ch=3):
    """Decode image bytes to an H x W x ``in_ch`` float32 array in [0, 1], BGR like BasicSR's ``imfrombytes``.

    Unlike ``imfrombytes(float32=True)``, 16-bit images keep their precision (divided by 65535, not 255).
    Colour images become gray for ``in_ch`` 1, gray images are repeated for ``in_ch`` 3, alpha is dropped.
    """
    if content is None:  # FileClient's LMDB answer for a key it does not hold
        raise ValueError(f'{path}: not stored in the LMDB.')
    flag = cv2.IMREAD_ANYDEPTH | (cv2.IMREAD_GRAYSCALE if in_ch == 1 else cv2.IMREAD_COLOR)
    img = cv2.imdecode(np.frombuffer(content, np.uint8), flag)
    if img is None:
        raise ValueError(f'{path}: cannot be decoded as an image (corrupt or truncated).')
    if np.issubdtype(img.dtype, np.integer):
        img = img.astype(np.float32) / np.iinfo(img.dtype).max
    else:
        img = img.astype(np.float32)
    return img[..., None] if img.ndim == 2 else img


@DATASET_REGISTRY.register()
class GaussianNoiseDataset(data.Dataset):
    """Clean images with additive white Gaussian noise (AWGN), for training and testing denoisers.

    Returns ``lq`` (noisy), ``gt`` (clean), ``lq_path``, ``gt_path`` and ``sigma`` (0-255 scale). Images are read
    through BasicSR's ``FileClient`` from a folder, from a folder restricted to a ``meta_info_file``, or from an LMDB
    (``io_backend: {type: lmdb}``, keys from the LMDB's ``meta_info.txt``).

    Training (``phase: train``): a random ``gt_size`` crop, BasicSR's flip/rotation augmentation, then noise of a
    sigma drawn per image, all on the fly. The noise is not clipped. With BasicSR's training pipeline the sampler
    (:class:`~usaid.data.resumable_sampler.ResumableSampler`) numbers every sample of the run, and all of a sample's
    randomness comes from a generator seeded with that number and with a base seed drawn at construction (after
    BasicSR seeded the process with ``manual_seed + rank``): the same data whatever the number of workers, and the
    same data after a resume. Given a plain image index (another sampler), it draws from Python's ``random``.

    Validation and test: exactly the literature's protocol, so results compare with published tables: for each
    image, a generator seeded with ``noise_seed`` draws ``normal(0, sigma / 255)`` over the whole H x W x C RGB float
    array, the same numbers as ``np.random.seed(noise_seed); np.random.normal(0, sigma / 255, img.shape)``,
    without touching the global random state. No clipping, no quantisation.

    Args:
        opt (dict): Options:
            dataroot_gt (str): Folder of clean images, or an LMDB folder (``*.lmdb``).
            io_backend (dict): BasicSR's ``FileClient`` options: ``type`` disk or lmdb.
            meta_info_file (str, optional): For disk: read only the images named (first word per line).
            filename_tmpl (str): For disk with ``meta_info_file``: file name of each listed name, e.g. ``'{}.jpg'``
                for VOC's ``ImageSets`` lists, which name images without extension. Default: ``'{}'``.
            gt_size (int): Training crop size.
            use_hflip (bool): Training: random horizontal flips. Default: False.
            use_rot (bool): Training: random vertical flips and 90-degree rotations. Default: False.
            in_ch (int): 3 for colour, 1 for gray. Default: 3.
            sigma_type (str): fixed, uniform or choice. Default: fixed.
            sigma (float | list): A number for fixed, ``[low, high]`` for uniform, a list for choice (0-255 scale).
            noise_seed (int): Validation/test seed, the same for every image. Default: 0.
            phase (str): train, val or test (set by BasicSR from the datasets key).
    """

    def __init__(self, opt):
        super().__init__()
        self.opt = opt
        self.phase = opt.get('phase', 'test')
        self.in_ch = int(opt.get('in_ch', 3))
        if self.in_ch not in (1, 3):
            raise ValueError(f"datasets: {opt.get('name')}: in_ch must be 1 or 3, got {self.in_ch}.")
        self.sigma_type = opt.get('sigma_type', 'fixed')
        try:
            self.sigma = check_sigma(self.sigma_type, opt.get('sigma'))
            self.paths, warnings = collect_images(opt)
        except ValueError as error:
            raise ValueError(f"datasets: {opt.get('name')}: {error}.") from None
        self.noise_seed = int(opt.get('noise_seed', 0))
        self.gt_size = opt.get('gt_size')
        self.sample_numbers = self.phase == 'train'  # asks ResumableSampler for sample numbers
        self.base_seed = random.getrandbits(63) if self.sample_numbers else None
        if self.phase == 'train' and not self.gt_size:
            raise ValueError(f"datasets: {opt.get('name')}: gt_size is required for training.")
        if self.phase != 'train' and self.sigma_type != 'fixed':
            raise ValueError(f"datasets: {opt.get('name')}: sigma_type {self.sigma_type!r}: validation and test "
                             "need sigma_type fixed (one sigma per dataset, as in published tables).")
        # not get_root_logger: it must first be called by BasicSR's pipeline, which gives it the log file
        for warning in warnings:
            logging.getLogger('basicsr').warning(f"datasets: {opt.get('name')}: {warning}.")
        self.undecodable = set()  # training images found corrupt while reading, in this process

        self.file_client = None
        self.io_backend_opt = {'type': 'disk', **(opt.get('io_backend') or {})}
        if self.io_backend_opt['type'] == 'lmdb':
            self.io_backend_opt['db_paths'] = [opt['dataroot_gt']]
            self.io_backend_opt['client_keys'] = ['gt']

    def _draw_sigma(self):
        if self.sigma_type == 'fixed':
            return self.sigma
        if self.sigma_type == 'uniform':
            return random.uniform(*self.sigma)
        return random.choice(self.sigma)

    def __getitem__(self, index):
        if self.file_client is None:  # opened in the worker process, as BasicSR's datasets do
            self.file_client = FileClient(self.io_backend_opt.pop('type'), **self.io_backend_opt)
        sample_number, index = divmod(index, len(self.paths)) if self.sample_numbers else (0, index)
        path, img = self._read(index)

        if self.phase == 'train':
            if sample_number:
                with python_random_seeded((self.base_seed << 64) + sample_number):
                    gt, lq, sigma = self._training_pair(img, path)
            else:
                gt, lq, sigma = self._training_pair(img, path)
        else:
            sigma = self.sigma
            gt = img2tensor(img, bgr2rgb=True, float32=True)
            rgb = gt.permute(1, 2, 0).numpy()
            noisy = add_protocol_noise(rgb, sigma, self.noise_seed)
            lq = torch.from_numpy(noisy.astype(np.float32)).permute(2, 0, 1).contiguous()
        return {'lq': lq, 'gt': gt, 'lq_path': path, 'gt_path': path, 'sigma': sigma}

    def _read(self, index):
        """``(path, image)`` of image ``index``. In training, an image that fails to decode (corrupt past its header)
        is replaced by the next good one, with a warning the first time; validation and test stop with an error."""
        if self.phase != 'train':
            path = self.paths[index]
            try:
                return path, decode_image(self.file_client.get(path, 'gt'), path, self.in_ch)
            except (ValueError, OSError) as error:
                raise ValueError(f"datasets: {self.opt.get('name')}: {error}") from None
        for offset in range(len(self.paths)):
            path = self.paths[(index + offset) % len(self.paths)]
            if path in self.undecodable:
                continue
            try:
                return path, decode_image(self.file_client.get(path, 'gt'), path, self.in_ch)
            except (ValueError, OSError) as error:
                self.undecodable.add(path)
                logging.getLogger('basicsr').warning(
                    f"datasets: {self.opt.get('name')}: {error} Skipped; {len(self.undecodable)} image(s) skipped "
                    f'so far in process {os.getpid()}.')
        raise ValueError(f"datasets: {self.opt.get('name')}: none of the {len(self.paths)} images can be decoded.")

    def _training_pair(self, img, path):
        """Random crop, augmentation and noise, all drawn from Python's ``random``."""
        h, w = img.shape[:2]
        if h < self.gt_size or w < self.gt_size:
            raise ValueError(f'{path}: {h}x{w} is smaller than gt_size {self.gt_size}.')
        top, left = random.randint(0, h - self.gt_size), random.randint(0, w - self.gt_size)
        img = img[top:top + self.gt_size, left:left + self.gt_size]
        img = augment(img, self.opt.get('use_hflip', False), self.opt.get('use_rot', False))
        gt = img2tensor(np.ascontiguousarray(img), bgr2rgb=True, float32=True)
        sigma = self._draw_sigma()
        noise = torch.randn(gt.shape, generator=torch.Generator().manual_seed(random.getrandbits(63)))
        return gt, gt + noise * (sigma / 255.), sigma

    def __len__(self):
        return len(self.paths)

    def __iter__(self):
        # explicit, because indices past len() are sample numbers in training (see ResumableSampler)
        return (self[index] for index in range(len(self)))

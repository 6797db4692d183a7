import random
from contextlib import contextmanager
from os import path as osp

import cv2
import numpy as np
import torch
from basicsr.data.data_util import paths_from_lmdb
from basicsr.data.transforms import augment
from basicsr.utils import FileClient, img2tensor, scandir
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')
SIGMA_TYPES = ('fixed', 'uniform', 'choice')


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
    flag = cv2.IMREAD_ANYDEPTH | (cv2.IMREAD_GRAYSCALE if in_ch == 1 else cv2.IMREAD_COLOR)
    img = cv2.imdecode(np.frombuffer(content, np.uint8), flag)
    if img is None:
        raise ValueError(f'{path}: cannot be decoded as an image.')
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
        self.sigma = self._check_sigma(opt.get('sigma'))
        self.noise_seed = int(opt.get('noise_seed', 0))
        self.gt_size = opt.get('gt_size')
        self.sample_numbers = self.phase == 'train'  # asks ResumableSampler for sample numbers
        self.base_seed = random.getrandbits(63) if self.sample_numbers else None
        if self.phase == 'train' and not self.gt_size:
            raise ValueError(f"datasets: {opt.get('name')}: gt_size is required for training.")
        if self.phase != 'train' and self.sigma_type != 'fixed':
            raise ValueError(f"datasets: {opt.get('name')}: sigma_type {self.sigma_type!r}: validation and test "
                             "need sigma_type fixed (one sigma per dataset, as in published tables).")

        self.file_client = None
        self.io_backend_opt = dict(opt.get('io_backend') or {'type': 'disk'})
        root = opt['dataroot_gt']
        if self.io_backend_opt['type'] == 'lmdb':
            self.io_backend_opt['db_paths'] = [root]
            self.io_backend_opt['client_keys'] = ['gt']
            self.paths = paths_from_lmdb(root)
        elif opt.get('meta_info_file'):
            with open(opt['meta_info_file']) as fin:
                tmpl = opt.get('filename_tmpl', '{}')
                self.paths = [osp.join(root, tmpl.format(line.split()[0])) for line in fin if line.strip()]
        else:
            self.paths = sorted(
                osp.join(root, p) for p in scandir(root, recursive=True) if p.lower().endswith(IMAGE_EXTENSIONS))
        if not self.paths:
            raise ValueError(f"datasets: {opt.get('name')}: no images found in dataroot_gt {root}.")

    def _check_sigma(self, sigma):
        name = self.opt.get('name')
        if self.sigma_type not in SIGMA_TYPES:
            raise ValueError(f"datasets: {name}: sigma_type {self.sigma_type!r}: expected one of {SIGMA_TYPES}.")
        if self.sigma_type == 'fixed' and isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
            return float(sigma)
        if (self.sigma_type == 'uniform' and isinstance(sigma, (list, tuple)) and len(sigma) == 2
                and all(isinstance(s, (int, float)) for s in sigma) and sigma[0] <= sigma[1]):
            return [float(s) for s in sigma]
        if (self.sigma_type == 'choice' and isinstance(sigma, (list, tuple)) and sigma
                and all(isinstance(s, (int, float)) for s in sigma)):
            return [float(s) for s in sigma]
        expected = {'fixed': 'a number', 'uniform': '[low, high] with low <= high', 'choice': 'a non-empty list'}
        raise ValueError(f'datasets: {name}: sigma {sigma!r} does not fit sigma_type {self.sigma_type!r}: expected '
                         f'{expected[self.sigma_type]} on the 0-255 scale.')

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
        path = self.paths[index]
        img = decode_image(self.file_client.get(path, 'gt'), path, self.in_ch)

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

import logging
import os
import random
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from os import path as osp
from typing import Literal, get_args

import cv2
import numpy as np
import torch
from basicsr.data.transforms import augment
from basicsr.utils import FileClient, img2tensor, scandir
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from usaid.basicsr_sections import LoaderOptions
from usaid.data.data_util import IMAGE_EXTENSIONS, PROTOCOL_NOISE_SEED, add_protocol_noise
from usaid.data.image_cache import ImageCache, cache_limit, format_bytes
from usaid.data.image_scan import scan_folder_images, scan_lmdb_images
from usaid.declarations import REQUIRED, Declaration, declared, option

SigmaType = Literal['fixed', 'uniform', 'choice']
IOBackendType = Literal['disk', 'lmdb']
SIGMA_TYPES = get_args(SigmaType)
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


def collect_images(options):
    """The images a :class:`GaussianNoiseDataset` with ``options`` (its parsed :class:`GaussianNoiseDataset.Options`)
    reads, after checking them from their headers.

    Returns ``(paths, warnings)``: file paths (LMDB keys for an LMDB) and the messages the dataset logs. Raises
    ``ValueError`` starting with the option key at fault: missing ``dataroot_gt``/``meta_info_file``/LMDB, no
    images, files a list names that do not exist, images smaller than ``gt_size`` (training), and, for validation
    and test, any image that cannot be used. Training skips unreadable, corrupt and truncated images with a warning
    (one bad file among thousands must not stop a run); validation and test refuse them, because an average over
    part of a test set does not compare with published tables. Gray and RGBA images are used (gray repeated to
    three channels, alpha dropped) with a counted warning; 16-bit images are read at full precision.
    """
    phase, root, backend = options.phase, options.dataroot_gt, options.io_backend.type
    if not root:
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
        meta_info_file = options.meta_info_file
        if meta_info_file:
            if not osp.isfile(meta_info_file):
                raise ValueError(f'meta_info_file: {meta_info_file} does not exist; expected a text file naming one '
                                 'image per line')
            tmpl = options.filename_tmpl
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
    gt_size = options.gt_size
    if phase == 'train' and gt_size is not None:
        small = [info for info in good if info.height and min(info.height, info.width) < gt_size]
        if small:
            raise ValueError(f'gt_size: {gt_size} is larger than {len(small)} of the {len(infos)} images: '
                             f'{_examples(small, lambda i: f"{i.path} ({i.height}x{i.width})")}; expected a crop '
                             'that fits every image (lower gt_size, or leave those images out)')
    in_ch = options.in_ch
    for flag, what in (('gray', 'gray (used with the channel repeated to RGB)'), ('alpha', 'with an alpha channel '
                                                                                           '(alpha dropped)')):
        flagged = [info for info in good if getattr(info, flag)]
        if flagged and not (flag == 'gray' and in_ch == 1):
            warnings.append(f'{len(flagged)} of {len(infos)} images are {what}, e.g. {flagged[0].path}')
    return [info.path for info in good], warnings


def decoded_bytes(options, paths):
    """``{path: bytes}``: what :func:`decode_raw` will make of each of ``paths`` (as :func:`collect_images` returns
    them for the parsed ``options``), from the headers or an LMDB's meta_info.txt; images of unknown size are left
    out."""
    if options.io_backend.type == 'lmdb':
        infos = scan_lmdb_images(osp.abspath(options.dataroot_gt))[0]
    else:
        infos = scan_folder_images(tuple(paths))
    channels = 1 if options.in_ch == 1 else 3
    wanted = set(paths)
    return {info.path: info.height * info.width * channels * (2 if info.bits == 16 else 1) for info in infos
            if info.path in wanted and info.height}


@contextmanager
def python_random_seeded(seed):
    """Run a block on Python's ``random`` seeded with ``seed``, restoring the previous state afterwards."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def decode_raw(content, path, in_ch=3):
    """Decode image bytes as OpenCV does, BGR: H x W x 3 (H x W for ``in_ch`` 1), uint8, uint16 for 16-bit files.

    Colour images become gray for ``in_ch`` 1, gray images are repeated for ``in_ch`` 3, alpha is dropped.
    """
    if content is None:  # FileClient's LMDB answer for a key it does not hold
        raise ValueError(f'{path}: not stored in the LMDB.')
    flag = cv2.IMREAD_ANYDEPTH | (cv2.IMREAD_GRAYSCALE if in_ch == 1 else cv2.IMREAD_COLOR)
    img = cv2.imdecode(np.frombuffer(content, np.uint8), flag)
    if img is None:
        raise ValueError(f'{path}: cannot be decoded as an image (corrupt or truncated).')
    return img


def to_float(img):
    """A decoded image (or a crop of one) as a new H x W x C float32 array in [0, 1]: integers divided by their
    type's maximum (16-bit images keep their precision, unlike ``imfrombytes(float32=True)``); element by element,
    so converting a crop equals cropping the converted image."""
    if np.issubdtype(img.dtype, np.integer):
        img = img.astype(np.float32) / np.iinfo(img.dtype).max
    else:
        img = img.astype(np.float32)
    return img[..., None] if img.ndim == 2 else img


def decode_image(content, path, in_ch=3):
    """Decode image bytes to an H x W x ``in_ch`` float32 array in [0, 1], BGR like BasicSR's ``imfrombytes``
    (:func:`decode_raw`, then :func:`to_float`)."""
    return to_float(decode_raw(content, path, in_ch))


@dataclass(frozen=True, kw_only=True)
class IOBackendOptions(Declaration):
    """A dataset's ``io_backend``: BasicSR's ``FileClient`` options."""
    owner, kind = 'io_backend', 'option'
    type: IOBackendType = option('disk', "BasicSR's FileClient backend: disk (files) or lmdb")
    readonly: bool = option(True, 'lmdb: open the environment read-only')
    lock: bool = option(False, 'lmdb: lock the environment')
    readahead: bool = option(False, 'lmdb: let the OS read ahead')

    def rules(self):
        for key in ('readonly', 'lock', 'readahead'):
            if self.type == 'disk' and getattr(self, key) != self.__dataclass_fields__[key].default:
                yield key, f'is an option of the lmdb backend; expected type: lmdb, or no {key}'

    def file_client_options(self):
        """The keyword arguments of BasicSR's ``FileClient`` for this backend (disk takes none)."""
        return asdict(self) if self.type == 'lmdb' else {'type': 'disk'}


# what BasicSR's loader reads from the same options: not the dataset's
_LOADER_KEYS = {f.name for f in fields(LoaderOptions)} - {'phase'} | {'type', 'resume'}  # resume: usaid.compat's


@DATASET_REGISTRY.register()
@declared
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
    The training images are decoded once, at construction, into memory shared with the loader's workers (up to
    ``cache_bytes``; :class:`~usaid.data.image_cache.ImageCache`), and a patch is a crop of it: the same samples as
    decoding the image for each patch, at a fraction of the cost. The log says which images were cached and why.

    Validation and test: exactly the literature's protocol, so results compare with published tables: for each
    image, a generator seeded with ``noise_seed`` draws ``normal(0, sigma / 255)`` over the whole H x W x C RGB float
    array, the same numbers as ``np.random.seed(noise_seed); np.random.normal(0, sigma / 255, img.shape)``,
    without touching the global random state. No clipping, no quantisation.

    Args:
        opt (dict): BasicSR's loader keys and these options:
    """

    @dataclass(frozen=True, kw_only=True)
    class Options(Declaration):
        kind = 'option'
        dataroot_gt: str = option(REQUIRED, 'Folder of clean images, or an LMDB folder (*.lmdb)')
        io_backend: IOBackendOptions | None = option(None, "BasicSR's FileClient options; default: disk")
        meta_info_file: str | None = option(None, 'disk: read only the images it names (first word per line)')
        filename_tmpl: str = option('{}', "disk with meta_info_file: file name of each listed name, e.g. '{}.jpg' "
                                          "for VOC's ImageSets lists")
        gt_size: int | None = option(None, 'Training crop size (required for training)', minimum=1)
        use_hflip: bool = option(False, 'Training: random horizontal flips')
        use_rot: bool = option(False, 'Training: random vertical flips and 90-degree rotations')
        in_ch: Literal[1, 3] = option(3, '3 for colour, 1 for gray')
        sigma_type: SigmaType = option('fixed', 'fixed, uniform or choice')
        sigma: float | tuple[float, ...] = option(REQUIRED, 'Noise level(s), 0-255 scale: a number for fixed, '
                                                            '[low, high] for uniform, a list for choice')
        noise_seed: int = option(PROTOCOL_NOISE_SEED, 'Validation/test seed, the same for every image', minimum=0)
        cache_bytes: int = option(8 * 2**30, 'Training: keep decoded images (uint8) in memory shared by the loader '
                                             'workers, up to this many bytes per process (and half the available '
                                             'memory); the rest are decoded for each patch. 0: no cache', minimum=0)
        phase: str = option('test', 'train, val or test: set by BasicSR from the datasets key')

        def __post_init__(self):
            if self.io_backend is None:
                object.__setattr__(self, 'io_backend', IOBackendOptions())  # frozen: set once, here

        def rules(self):
            try:
                check_sigma(self.sigma_type, self.sigma)
            except ValueError as error:
                key, _, text = str(error).partition(': ')
                yield key, text
            if self.phase != 'train' and self.sigma_type != 'fixed':
                yield 'sigma_type', (f'found {self.sigma_type!r}; expected fixed: validation and test need sigma_type '
                                     'fixed (one sigma per dataset, as in published tables)')
            if self.phase == 'train' and self.gt_size is None:
                yield 'gt_size', 'missing; expected an integer: training crops gt_size x gt_size patches'

    def __init__(self, opt):
        super().__init__()
        self.opt = opt
        options = self.Options.parse(opt, f"datasets: {opt.get('name')}", ignore=_LOADER_KEYS)
        self.options = options
        self.phase, self.in_ch, self.sigma_type = options.phase, options.in_ch, options.sigma_type
        self.sigma = check_sigma(options.sigma_type, options.sigma)
        try:
            self.paths, warnings = collect_images(options)
        except ValueError as error:
            raise ValueError(f"datasets: {opt.get('name')}: {error}.") from None
        self.noise_seed = options.noise_seed
        self.gt_size = options.gt_size
        self.sample_numbers = self.phase == 'train'  # asks ResumableSampler for sample numbers
        self.base_seed = random.getrandbits(63) if self.sample_numbers else None
        # not get_root_logger: it must first be called by BasicSR's pipeline, which gives it the log file
        for warning in warnings:
            logging.getLogger('basicsr').warning(f"datasets: {opt.get('name')}: {warning}.")
        self.undecodable = set()  # training images found corrupt while reading, in this process

        self.file_client = None
        self.io_backend_opt = options.io_backend.file_client_options()
        if self.io_backend_opt['type'] == 'lmdb':
            self.io_backend_opt['db_paths'] = [opt['dataroot_gt']]
            self.io_backend_opt['client_keys'] = ['gt']
        self.cache = None
        if self.phase == 'train':
            message = self._build_cache(options)
            logging.getLogger('basicsr').info(f"datasets: {opt.get('name')}: {message}.")

    def _build_cache(self, options):
        """Decode the training images into :attr:`cache` (up to the byte limit); returns the log line saying which
        data path was chosen and why."""
        if options.cache_bytes == 0:
            return 'cache off (cache_bytes 0): each patch decodes its image'
        planned = decoded_bytes(options, self.paths)
        needed = sum(planned.values())
        limit, why = cache_limit(options.cache_bytes)
        backend = dict(self.io_backend_opt)
        client = FileClient(backend.pop('type'), **backend)  # closed after: workers open theirs (LMDB: not forked)

        def read(path):
            return decode_raw(client.get(path, 'gt'), path, self.in_ch)

        try:
            self.cache = ImageCache(self.paths, planned, limit, read, threads=min(8, os.cpu_count() or 1))
        except OSError as error:
            return (f'cache off: {format_bytes(min(needed, limit))} of memory cannot be reserved ({error}): each '
                    'patch decodes its image')
        finally:
            for env in getattr(client.client, '_client', {}).values():  # LMDB environments
                env.close()
        cache = self.cache
        if not len(cache):
            self.cache = None
            return f'cache off: no image fits the limit of {format_bytes(limit)} ({why}): each patch decodes its image'
        text = (f'cache: {len(cache):,} of {len(self.paths):,} images, {format_bytes(cache.size)} in shared memory, '
                f'decoded in {cache.seconds:.1f} s (limit {format_bytes(limit)}: {why})')
        if cache.skipped:
            text += (f'; {cache.skipped:,} image(s) beyond the limit or of unknown size (those known: '
                     f'{format_bytes(max(needed - cache.size, 0))}) are decoded for each patch')
        return text

    def _draw_sigma(self):
        if self.sigma_type == 'fixed':
            return self.sigma
        if self.sigma_type == 'uniform':
            return random.uniform(*self.sigma)
        return random.choice(self.sigma)

    def __getitem__(self, index):
        if self.file_client is None:  # opened in the worker process, as BasicSR's datasets do
            self.file_client = FileClient(self.io_backend_opt.pop('type'), **self.io_backend_opt)
            if self.cache is not None and self.cache.unreachable:
                logging.getLogger('basicsr').warning(
                    f"datasets: {self.opt.get('name')}: the image cache cannot be opened in process {os.getpid()} "
                    f'({self.cache.unreachable}); it decodes each patch\'s image (the same data, slower).')
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
        """``(path, image)`` of image ``index``: as :func:`decode_image` makes it for validation and test; for training
        as :func:`decode_raw` does, from the cache where it holds the image. In training, an image that fails to decode
        (corrupt past its header) is replaced by the next good one, with a warning the first time; validation and test
        stop with an error."""
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
            cached = self.cache.get(path) if self.cache is not None else None
            if cached is not None:
                return path, cached
            try:
                return path, decode_raw(self.file_client.get(path, 'gt'), path, self.in_ch)
            except (ValueError, OSError) as error:
                self.undecodable.add(path)
                logging.getLogger('basicsr').warning(
                    f"datasets: {self.opt.get('name')}: {error} Skipped; {len(self.undecodable)} image(s) skipped "
                    f'so far in process {os.getpid()}.')
        raise ValueError(f"datasets: {self.opt.get('name')}: none of the {len(self.paths)} images can be decoded.")

    def _training_pair(self, img, path):
        """Random crop of the decoded image ``img`` (:func:`decode_raw`), augmentation and noise, all drawn from
        Python's ``random``. The crop is converted to float, not the image: the same numbers, a patch's worth of
        work; and a copy, because ``augment`` flips in place and the cache is read-only."""
        h, w = img.shape[:2]
        if h < self.gt_size or w < self.gt_size:
            raise ValueError(f'{path}: {h}x{w} is smaller than gt_size {self.gt_size}.')
        top, left = random.randint(0, h - self.gt_size), random.randint(0, w - self.gt_size)
        patch = to_float(img[top:top + self.gt_size, left:left + self.gt_size])
        patch = augment(patch, self.options.use_hflip, self.options.use_rot)
        gt = img2tensor(np.ascontiguousarray(patch), bgr2rgb=True, float32=True)
        sigma = self._draw_sigma()
        return gt, self._noisy(gt, sigma, random.getrandbits(63)), sigma

    @staticmethod
    def _noisy(gt, sigma, seed):
        """``gt`` plus Gaussian noise of ``sigma`` (0-255 scale) from a generator seeded with ``seed``."""
        noise = torch.randn(gt.shape, generator=torch.Generator().manual_seed(seed))
        return noise.mul_(sigma / 255.).add_(gt)  # in place: no temporaries; the sum is gt + noise * sigma / 255

    def __len__(self):
        return len(self.paths)

    def __iter__(self):
        # explicit, because indices past len() are sample numbers in training (see ResumableSampler)
        return (self[index] for index in range(len(self)))

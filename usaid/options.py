"""Checks an option file before BasicSR runs it, so that a mistake gets one message naming the key instead of a
``KeyError`` deep in a traceback after the experiment folder was made.

:func:`check_options` walks a loaded option file: U-SAID's own keys and the BasicSR keys the training and test
pipelines read (they index ``opt['datasets']``, ``opt['path']``, ``opt['train']['total_iter']``, ... directly).
Every problem found is collected into one :class:`~usaid.errors.OptionError`. :func:`install` makes BasicSR's
``train_pipeline`` and ``test_pipeline`` call it first, whichever script started them.

What is checked: required keys and their types; ``type`` names against BasicSR's registries (arch, loss, model,
dataset, metric) and ``torch.optim``, with the closest registered names; every other key of a registered class or
function against its signature (unknown names, values whose type differs from the default's, missing required
arguments); numbers that YAML 1.1 reads as strings (``lr: 2e-4``); data paths and the images themselves (via
:func:`~usaid.data.gaussian_noise_dataset.collect_images`); ``num_gpu`` and ``prefetch_mode: cuda`` against the
GPUs present; ``in_ch`` against the network.
"""
import difflib
import inspect
import math
import os
import re
import sys
from os import path as osp

import torch
from basicsr.models import lr_scheduler
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY

from usaid import yaml_io
from usaid.archs.usanet_arch import batch_statistics_problem
from usaid.data.gaussian_noise_dataset import GaussianNoiseDataset, check_sigma, collect_images
from usaid.data.image_scan import image_sizes
from usaid.checkpoint import check_fits, load_checkpoint, network_state
from usaid.errors import CheckpointError, OptionError, USAIDError
from usaid.inference import CONV_ALGOS, PRECISIONS, InferenceNetwork
from usaid.metric_sizes import size_problem
from usaid.network_probe import MAX_DATA_RANGE_OFFSET, probe_network

# What YAML 1.1 (PyYAML) leaves a string although it reads as a number: 2e-4, 1e3, 1.0e3 (no dot, or no exponent sign)
_NUMBER_LIKE = re.compile(r'^[-+]?(\d[\d_]*\.?[\d_]*|\.\d[\d_]*)([eE][-+]?\d+)?$')
_STRING_KEYS = ('name', 'suffix', 'filename_tmpl', 'project', 'resume_id', 'entity', 'port', 'type')
# BasicSR 1.4.2's SRModel.setup_schedulers: the scheduler types it builds, and from which class
_SCHEDULERS = {'MultiStepLR': lr_scheduler.MultiStepRestartLR, 'MultiStepRestartLR': lr_scheduler.MultiStepRestartLR,
               'CosineAnnealingRestartLR': lr_scheduler.CosineAnnealingRestartLR}
_OPTIMIZERS = {name: cls for name, cls in vars(torch.optim).items()
               if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer}
# keys BasicSR's data pipeline reads from a dataset's options (basicsr/data/__init__.py, basicsr/train.py)
_LOADER_KEYS = {'name', 'type', 'phase', 'scale', 'num_worker_per_gpu', 'batch_size_per_gpu', 'dataset_enlarge_ratio',
                'prefetch_mode', 'pin_memory', 'persistent_workers', 'use_shuffle', 'num_prefetch_queue', 'resume'}
_GAUSSIAN_NOISE_KEYS = {'dataroot_gt', 'io_backend', 'meta_info_file', 'filename_tmpl', 'gt_size', 'use_hflip',
                        'use_rot', 'in_ch', 'sigma_type', 'sigma', 'noise_seed'}
# what BasicSR's FileClient backends take besides type (basicsr/utils/file_client.py)
_IO_BACKEND_KEYS = {'disk': {'type'}, 'lmdb': {'type', 'readonly', 'lock', 'readahead'}}
MAX_NAME_BYTES = 200  # a folder or file name; file systems take 255 bytes, BasicSR adds suffixes
_NON_FINITE_ACTIONS = ('stop', 'skip')


def load_option_file(option_file):
    """The option file as BasicSR's ``parse_options`` loads it (ordered YAML, read by :mod:`usaid.yaml_io`'s safe
    loader); an ``OptionError`` if it cannot be."""
    try:
        with open(option_file) as f:
            opt = yaml_io.load(f)
    except OSError as error:
        raise OptionError(option_file, [f'cannot be read ({error.strerror or error})']) from None
    if not isinstance(opt, dict):
        raise OptionError(option_file, [f'found {type(opt).__name__} at the top level; expected a mapping of '
                                        'options (name, model_type, datasets, network_g, ...)'])
    return opt


def check_option_file(option_file, is_train):
    """Load and check an option file; returns the options or raises one :class:`~usaid.errors.OptionError`."""
    opt = load_option_file(option_file)
    check_options(opt, option_file, is_train)
    return opt


def check_options(opt, option_file, is_train):
    """Raise one :class:`~usaid.errors.OptionError` listing every problem of ``opt`` (loaded from ``option_file``)
    for a training (``is_train``) or test run; return None if there is none."""
    checker = _Checker()
    checker.run(opt, is_train)
    if checker.problems:
        raise OptionError(option_file, checker.problems)


def _type_name(value):
    return {bool: 'a boolean', int: 'an integer', float: 'a number', str: 'a string', list: 'a list',
            tuple: 'a list', dict: 'a mapping'}.get(type(value), type(value).__name__)


def _found(value):
    return f'found {value!r} ({_type_name(value)})' if value is not None else 'found nothing (null)'


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _closest(name, names):
    """The registered names closest to ``name``, for a message; the first few names if none is close."""
    close = difflib.get_close_matches(str(name), [str(n) for n in names], n=3, cutoff=0.5)
    if close:
        return f" (closest: {', '.join(close)})"
    names = sorted(str(n) for n in names)
    return f" (one of: {', '.join(names[:12])}{', ...' if len(names) > 12 else ''})"


def _as_yaml11_float(text):
    """``text`` spelled so that YAML 1.1 reads a float: 2e-4 -> 2.0e-4, 1e3 -> 1.0e+3."""
    mantissa, _, exponent = text.replace('E', 'e').partition('e')
    if '.' not in mantissa:
        mantissa += '.0'
    if exponent and exponent[0] not in '+-':
        exponent = '+' + exponent
    return f'{mantissa}e{exponent}' if exponent else mantissa


class _Checker:
    """Collects problems as ``'key:path: found ...; expected ...'`` lines."""

    def __init__(self):
        self.problems = []
        self.in_ch = 3  # the datasets' channels, for running the network
        self.gt_sizes = {}  # training crop sizes, by option key
        self.image_sizes = {}  # (path, height, width) of the validation and test images, by dataset option key

    def problem(self, key, text):
        self.problems.append(f'{key}: {text}')

    # ---- generic checks -------------------------------------------------------------------------------------------
    def mapping(self, opt, key, path, required=True):
        """``opt[key]`` if it is a mapping; records a problem (and returns None) otherwise."""
        value = opt.get(key)
        if isinstance(value, dict):
            return value
        if value is None and not required:
            return None
        if value is None and key not in opt:
            close = difflib.get_close_matches(key, [str(k) for k in opt], n=1, cutoff=0.7)
            self.problem(path, 'missing; expected a mapping' + (f' (is {close[0]!r} a misspelling?)' if close else ''))
        else:
            self.problem(path, f'{_found(value)}; expected a mapping')
        return None

    def number(self, opt, key, path, required=False, integer=False, minimum=None, maximum=None):
        value = opt.get(key)
        if value is None:
            if required or key in opt:  # BasicSR reads these with .get(key, default): null is not the default
                self.problem(path, f"{'missing' if key not in opt else 'found nothing (null)'}; expected "
                                   f"{'an integer' if integer else 'a number'}")
            return None
        if isinstance(value, str) and _NUMBER_LIKE.match(value):
            return None  # reported once, by the walk over strings
        if not (_is_int(value) if integer else _is_number(value)):
            self.problem(path, f"{_found(value)}; expected {'an integer' if integer else 'a number'}")
            return None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = ' and '.join(f'{op} {bound}' for op, bound in (('>=', minimum), ('<=', maximum))
                                  if bound is not None)
            self.problem(path, f'found {value}; expected a number {bounds}')
            return None
        return value

    def boolean(self, opt, key, path):
        value = opt.get(key)
        if value is not None and not isinstance(value, bool):
            self.problem(path, f'{_found(value)}; expected true or false')

    def choice(self, opt, key, path, choices, default=None):
        value = opt.get(key, default)
        if value not in choices:
            self.problem(path, f"{_found(value)}; expected one of {', '.join(map(str, choices))}")
            return None
        return value

    def registered(self, opt, path, registry, what):
        """The class or function ``opt['type']`` names in ``registry`` (BasicSR's suffix rule included), or None."""
        name = opt.get('type')
        if not isinstance(name, str):
            self.problem(f'{path}:type', f'{_found(name)}; expected the name of a registered {what}')
            return None
        if name in registry or f'{name}_basicsr' in registry:
            return registry.get(name)
        self.problem(f'{path}:type', f'{name!r} is not a registered {what}; expected a name registered in BasicSR\'s '
                                     f'{what} registry{_closest(name, registry.keys())}')
        return None

    def typed(self, opt, path, classes, expected, passed=()):
        """The class ``classes[opt['type']]`` (a name table that is not a BasicSR registry), with the other keys
        checked against its signature; records a problem naming ``expected`` and returns None otherwise."""
        name = opt.get('type')
        if not isinstance(name, str) or name not in classes:
            self.problem(f'{path}:type', f'{_found(name)}; expected {expected}')
            return None
        self.arguments(opt, path, classes[name], passed=passed)
        return classes[name]

    def arguments(self, opt, path, target, passed=(), skip=('type',)):
        """The keys of ``opt`` against the signature of ``target`` (a class or function): unknown names, values whose
        type differs from the default's, required arguments that are missing. ``passed`` arguments come from the
        caller (BasicSR), not from the options; ``skip`` keys are options that are not arguments."""
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            return
        params = [p for p in signature.parameters.values()
                  if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in passed]
        takes_any = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
        named = {p.name: p for p in params}
        name = getattr(target, '__name__', str(target))
        for key, value in opt.items():
            if key in skip:
                continue
            if key not in named:
                if not takes_any:
                    self.problem(f'{path}:{key}', f'is not an argument of {name}; expected one of '
                                                  f"{', '.join(named) or 'no arguments'}{_closest(key, named)}")
                continue
            self._default_type(f'{path}:{key}', value, named[key].default)
        for key, param in named.items():
            if param.default is param.empty and key not in opt:
                self.problem(f'{path}:{key}', f'missing; expected a value: {name} requires it')

    def _default_type(self, path, value, default):
        """A value against its parameter's default: same kind (numbers for numbers, lists for tuples, ...)."""
        if default is None or default is inspect.Parameter.empty:
            return
        if value is None:
            self.problem(path, f'found nothing (null); expected {_type_name(default)} like the default {default!r}')
            return
        if isinstance(value, str) and _NUMBER_LIKE.match(value):
            return  # reported by the walk over strings
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = _is_int(value)
        elif isinstance(default, float):
            ok = _is_number(value)
        elif isinstance(default, str):
            ok = isinstance(value, str)
        elif isinstance(default, (list, tuple)):
            ok = isinstance(value, (list, tuple)) and all(
                _is_number(v) for v in value if all(_is_number(d) for d in default))
        elif isinstance(default, dict):
            ok = isinstance(value, dict)
        else:
            ok = True
        if not ok:
            self.problem(path, f'{_found(value)}; expected {_type_name(default)} like the default {default!r}')

    def strings_that_are_numbers(self, value, path):
        """YAML 1.1 reads ``2e-4`` and ``1.0e3`` as strings; BasicSR then fails far from the option file."""
        if isinstance(value, dict):
            for key, item in value.items():
                if key not in _STRING_KEYS and key != 'path' and not str(key).startswith(('dataroot', 'meta_info')):
                    self.strings_that_are_numbers(item, f'{path}:{key}' if path else str(key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self.strings_that_are_numbers(item, f'{path}[{index}]')
        elif isinstance(value, str) and _NUMBER_LIKE.match(value.strip()) and any(c.isdigit() for c in value):
            self.problem(path, f'found the string {value!r}; expected a number (YAML 1.1 reads an exponent as a '
                               'number only after a decimal point and with a sign): write '
                               f'{_as_yaml11_float(value.strip())} or !!float {value.strip()}')

    # ---- the option file ------------------------------------------------------------------------------------------
    def run(self, opt, is_train):
        self.strings_that_are_numbers(opt, '')
        if not isinstance(opt.get('name'), str) or not opt.get('name'):
            self.problem('name', f"{_found(opt.get('name'))}; expected the experiment's name (a string)")
        else:
            self.folder_name(opt['name'], 'name', 'experiments/<name>, results/<name> and tb_logger/<name>')
        model_type = opt.get('model_type')
        if not isinstance(model_type, str):
            self.problem('model_type', f'{_found(model_type)}; expected a registered model, e.g. USAIDModel')
        elif model_type not in MODEL_REGISTRY and f'{model_type}_basicsr' not in MODEL_REGISTRY:
            self.problem('model_type', f'{model_type!r} is not a registered model; expected a name registered in '
                                       f"BasicSR's model registry{_closest(model_type, MODEL_REGISTRY.keys())}")
        self.num_gpu(opt)
        if opt.get('manual_seed') is not None:
            self.number(opt, 'manual_seed', 'manual_seed', integer=True, minimum=0)
        self.boolean(opt, 'keep_freed_memory', 'keep_freed_memory')
        network = self.network(opt)
        if self.mapping(opt, 'path', 'path') is not None:
            self.paths(opt['path'])
        datasets = self.mapping(opt, 'datasets', 'datasets')
        if datasets is not None:
            self.datasets(opt, datasets, is_train, network)
        if is_train:
            train = self.mapping(opt, 'train', 'train')
            if train is not None:
                self.train(train, model_type)
            logger = self.mapping(opt, 'logger', 'logger')
            if logger is not None:
                self.number(logger, 'print_freq', 'logger:print_freq', required=True, integer=True, minimum=1)
                self.number(logger, 'save_checkpoint_freq', 'logger:save_checkpoint_freq', required=True,
                            integer=True, minimum=1)
                self.boolean(logger, 'use_tb_logger', 'logger:use_tb_logger')
                self.mapping(logger, 'wandb', 'logger:wandb', required=False)
        self.val(opt, is_train)
        self.network_runs(opt, network)
        self.usa_batch_statistics(opt)

    def num_gpu(self, opt):
        value = opt.get('num_gpu')
        available = torch.cuda.device_count()
        if value == 'auto':
            return
        if not _is_int(value) or value < 0:
            self.problem('num_gpu', f"{_found(value) if 'num_gpu' in opt else 'missing'}; expected auto or an integer "
                                    f'>= 0 (this machine has {available} GPUs)')
        elif value > available:
            self.problem('num_gpu', f'found {value}, but this machine has {available} GPU{"s" * (available != 1)} '
                                    f'(torch.cuda.device_count()); expected at most {available}, or auto')

    def network(self, opt):
        """network_g's options and its class, or None."""
        network = self.mapping(opt, 'network_g', 'network_g')
        if network is None:
            return None
        arch = self.registered(network, 'network_g', ARCH_REGISTRY, 'architecture')
        if arch is not None:
            self.arguments(network, 'network_g', arch)
        return network, arch

    def paths(self, path_opt):
        for key, value in path_opt.items():
            if ('pretrain_network' in key or 'resume_state' in key) and value is not None:
                if not isinstance(value, str):
                    self.problem(f'path:{key}', f'{_found(value)}; expected the path of a file, or ~')
                elif not osp.isfile(osp.expanduser(value)):
                    self.problem(f'path:{key}', f'{value} does not exist; expected an existing '
                                                f"{'training state' if 'resume' in key else 'checkpoint'} file, or ~")
            elif key.startswith('strict_load'):
                self.boolean(path_opt, key, f'path:{key}')
            elif key.startswith('param_key') and value is not None and not isinstance(value, str):
                self.problem(f'path:{key}', f"{_found(value)}; expected a key of the checkpoint, e.g. params or "
                                            'params_ema')

    def datasets(self, opt, datasets, is_train, network):
        if not datasets:
            wanted = 'train and val datasets' if is_train else 'test datasets'
            self.problem('datasets', f'is empty; expected {wanted}')
        if is_train and 'train' not in datasets:
            self.problem('datasets:train', 'missing; expected the training dataset')
        named = {}  # validation and test datasets by name: their results are kept by name
        for phase_key, dataset_opt in datasets.items():
            path = f'datasets:{phase_key}'
            phase = str(phase_key).split('_')[0]
            if is_train and phase not in ('train', 'val'):
                self.problem(path, "is not a dataset BasicSR's training pipeline knows; expected train, val or "
                                   'val_<anything>')
                continue
            if not isinstance(dataset_opt, dict):
                self.problem(path, f'{_found(dataset_opt)}; expected a mapping of dataset options')
                continue
            name = dataset_opt.get('name')
            if not isinstance(name, str):
                self.problem(f'{path}:name', f"{_found(name)}; expected the dataset's name")
            elif phase != 'train':
                self.folder_name(name, f'{path}:name', 'visualization/<name> and <name>.csv in the results')
                if name in named:
                    self.problem(f'{path}:name', f'found {name!r}, the name of {named[name]} too; expected a name of '
                                                 "its own: each dataset's images, CSV and best values are kept by "
                                                 'name, so one would overwrite the other')
                named.setdefault(name, path)
            dataset_class = self.registered(dataset_opt, path, DATASET_REGISTRY, 'dataset')
            if phase == 'train':
                self.loader(opt, dataset_opt, path)
            if dataset_class is GaussianNoiseDataset:
                self.gaussian_noise_dataset(opt, dict(dataset_opt, phase=phase), path, network)
            elif dataset_class is not None:
                for key in ('dataroot_gt', 'dataroot_lq', 'meta_info_file'):
                    value = dataset_opt.get(key)
                    if isinstance(value, str) and not osp.exists(osp.expanduser(value)):
                        self.problem(f'{path}:{key}', f'{value} does not exist; expected an existing path')

    def loader(self, opt, dataset_opt, path):
        """The keys BasicSR's ``build_dataloader`` and training loop read from the training dataset."""
        self.number(dataset_opt, 'batch_size_per_gpu', f'{path}:batch_size_per_gpu', required=True, integer=True,
                    minimum=1)
        self.number(dataset_opt, 'num_worker_per_gpu', f'{path}:num_worker_per_gpu', required=True, integer=True,
                    minimum=0)
        self.number(dataset_opt, 'dataset_enlarge_ratio', f'{path}:dataset_enlarge_ratio', integer=True, minimum=1)
        prefetch = self.choice(dataset_opt, 'prefetch_mode', f'{path}:prefetch_mode', (None, 'cpu', 'cuda'))
        if prefetch == 'cuda':
            if not torch.cuda.is_available() or opt.get('num_gpu') == 0:
                self.problem(f'{path}:prefetch_mode', 'found cuda, but this run has no GPU; expected ~ or cpu')
            elif dataset_opt.get('pin_memory') is not True:
                self.problem(f'{path}:pin_memory', f"{_found(dataset_opt.get('pin_memory'))}; expected true: BasicSR's "
                                                   'CUDAPrefetcher needs pinned memory')
        for key in ('pin_memory', 'persistent_workers', 'use_shuffle'):
            self.boolean(dataset_opt, key, f'{path}:{key}')

    def gaussian_noise_dataset(self, opt, dataset_opt, path, network):
        known = _GAUSSIAN_NOISE_KEYS | _LOADER_KEYS
        for key in dataset_opt:
            if key not in known:
                self.problem(f'{path}:{key}', f'is not an option of GaussianNoiseDataset; expected one of its '
                                              f'options{_closest(key, known)}')
        in_ch = self.choice(dataset_opt, 'in_ch', f'{path}:in_ch', (1, 3), default=3)
        self.in_ch = in_ch or self.in_ch
        try:
            check_sigma(dataset_opt.get('sigma_type', 'fixed'), dataset_opt.get('sigma'))
        except ValueError as error:
            self.problems.append(f'{path}:{error}')
        if dataset_opt['phase'] != 'train' and dataset_opt.get('sigma_type', 'fixed') != 'fixed':
            self.problem(f'{path}:sigma_type', f"found {dataset_opt.get('sigma_type')!r}; expected fixed: validation "
                                               'and test use one sigma per dataset, as published tables do')
        self.number(dataset_opt, 'noise_seed', f'{path}:noise_seed', integer=True, minimum=0)
        for key in ('use_hflip', 'use_rot'):
            self.boolean(dataset_opt, key, f'{path}:{key}')
        if not isinstance(dataset_opt.get('io_backend', {}), dict):
            self.problem(f'{path}:io_backend', f"{_found(dataset_opt.get('io_backend'))}; expected a mapping such as "
                                               '{type: disk} or {type: lmdb}')
            return
        backend = dataset_opt.get('io_backend') or {}
        backend_type = backend.get('type', 'disk')
        known = _IO_BACKEND_KEYS.get(backend_type, {'type'}) if isinstance(backend_type, str) else {'type'}
        for key in backend:
            if key not in known:
                self.problem(f'{path}:io_backend:{key}', f'is not an option of the {backend.get("type", "disk")} '
                                                         f'backend; expected {", ".join(sorted(known))}')
        size_ok = True
        if dataset_opt['phase'] == 'train':
            size_ok = self.number(dataset_opt, 'gt_size', f'{path}:gt_size', required=True, integer=True,
                                  minimum=1) is not None
        if network is not None and in_ch is not None:
            self.channels(opt, in_ch, path, network)
        if size_ok:
            if isinstance(dataset_opt.get('dataroot_gt'), str):
                dataset_opt['dataroot_gt'] = osp.expanduser(dataset_opt['dataroot_gt'])
            try:
                paths, _ = collect_images(dataset_opt)
                if dataset_opt['phase'] == 'train':
                    self.gt_sizes[f'{path}:gt_size'] = dataset_opt['gt_size']
                    self.one_batch_at_least(opt, dataset_opt, path, len(paths))
                else:
                    self.image_sizes[path] = image_sizes(dataset_opt, paths)
            except ValueError as error:
                self.problems.append(f'{path}:{error}')

    def one_batch_at_least(self, opt, dataset_opt, path, images):
        """The training set fills one batch per process: BasicSR's training loader drops an incomplete batch, so a
        smaller set trains 0 iterations, says "End of training" and saves the untrained network."""
        batch, ratio = dataset_opt.get('batch_size_per_gpu'), dataset_opt.get('dataset_enlarge_ratio', 1)
        if not (_is_int(batch) and batch >= 1 and _is_int(ratio) and ratio >= 1):
            return  # reported by loader()
        processes = int(os.environ.get('WORLD_SIZE', '1'))  # torchrun sets it; the sampler splits the set among them
        num_gpu = torch.cuda.device_count() if opt.get('num_gpu') == 'auto' else opt.get('num_gpu')
        # one process on several GPUs (DataParallel) loads one batch of batch_size_per_gpu x num_gpu
        gpus = num_gpu if processes == 1 and _is_int(num_gpu) and num_gpu > 1 else 1
        samples = math.ceil(images * ratio / processes)
        if samples >= batch * gpus:
            return
        split = f' split among {processes} processes' if processes > 1 else ''
        gpu_text = f' x {gpus} GPUs' if gpus > 1 else ''
        most = samples // gpus
        self.problem(f'{path}:batch_size_per_gpu',
                     f'found {batch}, but {images} training image(s) x dataset_enlarge_ratio {ratio}{split} make '
                     f'{samples} sample(s) an epoch, fewer than one batch of {batch}{gpu_text}; expected '
                     + (f'batch_size_per_gpu at most {most}, or ' if most else '')
                     + f'dataset_enlarge_ratio at least {math.ceil(batch * gpus * processes / images)} (the loader '
                     'drops an incomplete batch: the run would train 0 iterations and save an untrained network)')

    def folder_name(self, name, path, where):
        """``name`` becomes a folder or file name (``where``): one path component, inside its output tree."""
        if any(c in name for c in '/\\') or name.startswith('.') or any(ord(c) < 32 for c in name):
            self.problem(path, f"found {name!r}; expected one folder name, without /, \\, .. or control characters "
                               f"and not starting with '.': it names {where}")
        elif len(name.encode()) > MAX_NAME_BYTES:
            self.problem(path, f'found a name of {len(name.encode())} bytes; expected at most {MAX_NAME_BYTES}: it '
                               f'names {where}, and file systems take 255 bytes with the suffixes added to it')

    def channels(self, opt, in_ch, path, network):
        network_opt, arch = network
        if arch is None:
            return
        params = inspect.signature(arch).parameters
        if 'num_in_ch' in params:
            net_in = network_opt.get('num_in_ch', params['num_in_ch'].default)
            if _is_int(net_in) and net_in != in_ch:
                self.problem(f'{path}:in_ch', f'found {in_ch}, but network_g:num_in_ch is {net_in}; expected the '
                                              'same number of channels')
        train = opt.get('train')
        if in_ch != 3 and isinstance(train, dict) and isinstance(train.get('usa_opt'), dict):
            self.problem(f'{path}:in_ch', f'found {in_ch}; expected 3: the USA loss (train:usa_opt) segments RGB '
                                          'images')

    def train(self, train, model_type):
        self.number(train, 'total_iter', 'train:total_iter', required=True, integer=True, minimum=1)
        self.number(train, 'warmup_iter', 'train:warmup_iter', integer=True, minimum=-1)
        self.number(train, 'ema_decay', 'train:ema_decay', minimum=0, maximum=1)
        for key in ('channels_last', 'compile'):
            self.boolean(train, key, f'train:{key}')
        if 'precision' in train:
            self.choice(train, 'precision', 'train:precision', PRECISIONS)
        optim = self.mapping(train, 'optim_g', 'train:optim_g')
        if optim is not None and self.typed(optim, 'train:optim_g', _OPTIMIZERS, 'an optimizer of torch.optim'
                                            f"{_closest(optim.get('type'), _OPTIMIZERS)}", passed=('params',)):
            self.number(optim, 'lr', 'train:optim_g:lr', required=True, minimum=0)
        scheduler = self.mapping(train, 'scheduler', 'train:scheduler')  # BasicSR's models all set one up
        if scheduler is not None and self.typed(scheduler, 'train:scheduler', _SCHEDULERS, "one of BasicSR's "
                                                f"schedulers: {', '.join(_SCHEDULERS)}", passed=('optimizer',)):
            milestones = scheduler.get('milestones', [])
            if not (isinstance(milestones, list) and all(_is_int(m) and m >= 0 for m in milestones)):
                self.problem('train:scheduler:milestones', f'{_found(milestones)}; expected a list of iterations')
        losses = [key for key in train if str(key).endswith('_opt')]
        if model_type == 'USAIDModel' and not isinstance(train.get('pixel_opt'), dict):
            self.problem('train:pixel_opt', f"{_found(train.get('pixel_opt')) if 'pixel_opt' in train else 'missing'}; "
                                            'expected the pixel loss USAIDModel requires, e.g. '
                                            '{type: BatchSSELoss, loss_weight: 0.5}')
        for key in losses:
            loss = self.mapping(train, key, f'train:{key}', required=False)
            if loss is None:
                continue
            loss_class = self.registered(loss, f'train:{key}', LOSS_REGISTRY, 'loss')
            if loss_class is not None:
                self.arguments(loss, f'train:{key}', loss_class)
            if self.mapping(loss, 'network', f'train:{key}:network', required=False) is not None:
                arch = self.registered(loss['network'], f'train:{key}:network', ARCH_REGISTRY, 'architecture')
                if arch is not None:
                    self.arguments(loss['network'], f'train:{key}:network', arch)
            if 'precision' in loss:
                self.choice(loss, 'precision', f'train:{key}:precision', PRECISIONS)
        non_finite = self.mapping(train, 'non_finite_loss', 'train:non_finite_loss', required=False)
        if non_finite is not None:
            for key in non_finite:
                if key not in ('action', 'max_skips'):
                    self.problem(f'train:non_finite_loss:{key}', 'is not an option; expected action or max_skips')
            self.choice(non_finite, 'action', 'train:non_finite_loss:action', _NON_FINITE_ACTIONS, default='stop')
            self.number(non_finite, 'max_skips', 'train:non_finite_loss:max_skips', integer=True, minimum=0)

    def metric_fits_images(self, metric, path):
        """Every validation or test image is large enough for the metric (:mod:`usaid.metric_sizes`)."""
        if not _is_int(metric.get('crop_border', 0)):
            return  # reported by the argument check
        for dataset_path, sizes in self.image_sizes.items():
            too_small = [(image, size_problem(metric, height, width)) for image, height, width in sizes
                         if size_problem(metric, height, width)]
            if too_small:
                image, why = too_small[0]
                self.problem(path, f'{why} ({image}); {len(too_small)} of the {len(sizes)} images of {dataset_path} '
                                   'are too small; expected larger images, or this metric left out')

    def usa_batch_statistics(self, opt):
        """The USA network with batch statistics can segment a training batch (:func:`~usaid.archs.usanet_arch.
        batch_statistics_problem`): a batch of one 32x32 crop cannot be normalised."""
        datasets, train = opt.get('datasets'), opt.get('train')
        train_set = datasets.get('train') if isinstance(datasets, dict) else None
        usa = train.get('usa_opt') if isinstance(train, dict) else None
        if not (isinstance(train_set, dict) and isinstance(usa, dict) and isinstance(usa.get('network'), dict)):
            return
        batch, gt_size = train_set.get('batch_size_per_gpu'), train_set.get('gt_size')
        if _is_int(batch) and _is_int(gt_size) and batch > 0 and gt_size > 0:
            problem = batch_statistics_problem(usa['network'].get('bn_mode', 'train'), batch, gt_size, gt_size)
            if problem:
                self.problem('datasets:train:batch_size_per_gpu', f'found {batch} with gt_size {gt_size}, but {problem}'
                             ' (or train:usa_opt:network:bn_mode: eval)')

    def checkpoint_fits(self, path_opt, network_opt, arch):
        """``path:pretrain_network_g`` fits network_g (keys and shapes, with ``param_key_g`` and ``strict_load_g``):
        checked here, because BasicSR loads it after making (and archiving) the run's folder."""
        weights = (path_opt or {}).get('pretrain_network_g') if isinstance(path_opt, dict) else None
        if not (isinstance(weights, str) and osp.isfile(osp.expanduser(weights))):
            return
        weights = osp.expanduser(weights)
        try:
            state = network_state(load_checkpoint(weights), weights, path_opt.get('param_key_g', 'params'))
            with torch.random.fork_rng(devices=[]):
                net = arch(**{k: v for k, v in network_opt.items() if k != 'type'})
            check_fits(net, state, weights, path_opt.get('strict_load_g', True) is not False)
        except CheckpointError as error:
            self.problem('path:pretrain_network_g', f'{error} (expected a checkpoint of network_g)')

    def network_runs(self, opt, network):
        """Build network_g and run it once on a small image (:mod:`usaid.network_probe`): it must restore an image
        at scale 1, take the training crops, and expect data in [0, 1]. Skipped if its options have problems."""
        if network is None or network[1] is None or any(p.startswith('network_g') for p in self.problems):
            return
        network_opt, arch = network
        name = network_opt['type']
        try:
            multiple, offset = probe_network(network_opt, self.in_ch)
        except ValueError as error:
            self.problem('network_g', str(error))
            return
        self.checkpoint_fits(opt.get('path'), network_opt, arch)
        if offset > MAX_DATA_RANGE_OFFSET:
            range_keys = [k for k in inspect.signature(arch).parameters if 'range' in k or 'mean' in k or 'std' in k]
            self.problem('network_g', f'{name} shifts an image in [0, 1] by {offset:.0f} on average at initialisation: '
                                      "it expects another data range; expected data in [0, 1], BasicSR's range"
                                      + (f' (its range options: {", ".join(range_keys)}; e.g. img_range: 1)'
                                         if range_keys else ''))
        for key, gt_size in self.gt_sizes.items():
            if _is_int(gt_size) and gt_size % multiple:
                self.problem(key, f'found {gt_size}, but {name} with these options takes sizes that are multiples of '
                                  f'{multiple}; expected a multiple of {multiple}')

    def val(self, opt, is_train):
        if is_train and opt.get('val') is None:
            return  # BasicSR then trains without validating
        val = self.mapping(opt, 'val', 'val')
        if val is None:
            return
        if is_train:
            self.number(val, 'val_freq', 'val:val_freq', required=True, integer=True, minimum=1)
        elif 'save_img' not in val:
            self.problem('val:save_img', "missing; expected true or false (BasicSR's test pipeline requires it)")
        for key in ('save_img', 'pbar'):
            self.boolean(val, key, f'val:{key}')
        metrics = self.mapping(val, 'metrics', 'val:metrics', required=False)
        for name, metric in (metrics or {}).items():
            if not isinstance(metric, dict):
                self.problem(f'val:metrics:{name}', f'{_found(metric)}; expected a mapping with a type')
                continue
            function = self.registered(metric, f'val:metrics:{name}', METRIC_REGISTRY, 'metric')
            if function is not None:  # BasicSR passes the images as img and img2, the rest from the options
                self.arguments(metric, f'val:metrics:{name}', function, passed=('img', 'img2'),
                               skip=('type', 'better'))
            self.choice(metric, 'better', f'val:metrics:{name}:better', ('higher', 'lower'), default='higher')
            self.metric_fits_images(metric, f'val:metrics:{name}')
        inference = self.mapping(val, 'inference', 'val:inference', required=False)
        if inference is not None:
            self.arguments(inference, 'val:inference', InferenceNetwork, passed=('net',), skip=())
            self.choice(inference, 'conv_algo', 'val:inference:conv_algo', CONV_ALGOS, default='auto')
            self.choice(inference, 'precision', 'val:inference:precision', PRECISIONS, default='fp32')


def install():
    """Make BasicSR's ``train_pipeline`` and ``test_pipeline`` check the option file before they parse it, whichever
    script runs them: ``usaid-train``, torchrun, and BasicSR's own ``train.py``/``test.py`` run as scripts (from a
    checkout or from the installed package), whose ``from basicsr.utils.options import parse_options`` runs after
    ``import basicsr`` has imported U-SAID (``usaid_autoload``), so the name is replaced at its source.

    A script run as ``__main__`` defines its own ``load_resume_state``, which no module-level fix reaches: the checked
    parser hands the calling script's namespace to :func:`usaid.compat.adopt_script`. An :class:`~usaid.errors.
    USAIDError` that such a script does not catch is printed as one message (exit status 1), as ``usaid-train`` does.
    """
    import basicsr.test
    import basicsr.train
    import basicsr.utils.options

    from usaid import compat

    parse = basicsr.utils.options.parse_options
    if getattr(parse, 'usaid_checked', False):
        return

    def parse_options_checked(root_path, is_train=True):
        compat.adopt_script(sys._getframe(1).f_globals)  # the namespace of the pipeline that called us
        check_option_file(_option_file_argument(), is_train)
        return parse(root_path, is_train)  # usaid.compat.force_yml_checked checks --force_yml's result

    parse_options_checked.__doc__ = f'{parse.__doc__ or ""}\n(Checked first by usaid.options.check_options.)'
    parse_options_checked.usaid_checked = True
    for module in (basicsr.utils.options, basicsr.train, basicsr.test):
        module.parse_options = parse_options_checked
    sys.excepthook = _message_for_usaid_errors(sys.excepthook)


def _message_for_usaid_errors(excepthook):
    """``excepthook`` that prints a :class:`~usaid.errors.USAIDError` as ``<program>: <message>`` (a mistake in the
    input, not a bug: no traceback) and leaves every other exception to ``excepthook``."""
    def print_message(kind, error, traceback):
        if isinstance(error, USAIDError):
            print(f'{osp.basename(sys.argv[0]) or "python"}: {error}', file=sys.stderr)
        else:
            excepthook(kind, error, traceback)

    return print_message


def _option_file_argument():
    """The ``-opt`` argument of the command line, as BasicSR's parser will read it."""
    import argparse
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('-opt', type=str, required=True)
    args, _ = parser.parse_known_args(sys.argv[1:])
    return args.opt

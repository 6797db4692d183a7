"""The rules of an option file that involve several sections, or the machine, or the data: each in one function.

A single component's rules are its declaration's (:mod:`usaid.declarations`); the rules here need more than one
section, so no component can state them: the network against the datasets, the metrics against the images, the
USA loss against the training batch, the run against the GPUs there are. Each takes the option file, the phase
(``is_train``) and an :class:`OptionFileFacts` the walk filled in, and reports to a :class:`~usaid.declarations.Check`.
"""
import dataclasses
import difflib
import inspect
import math
import os
from dataclasses import dataclass, field
from os import path as osp

import torch

from usaid.archs.usanet_arch import USANet, batch_statistics_problem
from usaid.checkpoint import canonical_state_dict
from usaid.data.gaussian_noise_dataset import collect_images
from usaid.data.image_scan import image_sizes
from usaid.declarations import found
from usaid.errors import CheckpointError
from usaid.metric_sizes import size_problem
from usaid.network_probe import MAX_DATA_RANGE_OFFSET, probe_network
from usaid.released import is_released_name, released_path

MAX_NAME_BYTES = 200  # a folder or file name; file systems take 255 bytes, BasicSR adds suffixes


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class OptionFileFacts:
    """What the walk learnt that the rules share: the parsed ``path``, ``train`` and ``val`` (None where they have
    problems), the network's options and class (None if they have problems), the datasets' channels, training crop
    sizes (by key) and the sizes of the validation and test images."""
    path: object = None
    train: object = None
    val: object = None
    network_opt: dict | None = None
    arch: type | None = None
    in_ch: int = 3
    gt_sizes: dict = field(default_factory=dict)
    image_sizes: dict = field(default_factory=dict)


def sections_present(opt, is_train, check):
    """The sections each pipeline indexes: ``train`` and ``logger`` to train, ``val`` (with ``val_freq``) to validate
    in training, ``val`` with ``save_img`` to validate or test; at least one dataset, and ``train`` among them to
    train."""
    for key in (('train', 'logger') if is_train else ('val',)):
        if opt.get(key) is None:  # a value of another kind is reported by the top level's declaration
            check.problem(key, f"{'found nothing (null)' if key in opt else 'missing'}; expected a mapping")
    val = opt.get('val')
    if isinstance(val, dict):
        misspelt = difflib.get_close_matches('val_freq', [str(k) for k in val], n=1, cutoff=0.7)
        if is_train and val.get('val_freq') is None and not misspelt:  # a misspelling is named by val's check
            check.problem('val:val_freq', 'missing; expected an integer')
        if 'save_img' not in val and (not is_train or val.get('val_freq') is not None):
            reader = 'training loop reads it at each validation' if is_train else 'test pipeline requires it'
            check.problem('val:save_img', f"missing; expected true or false (BasicSR's {reader})")
    datasets = opt.get('datasets')
    if isinstance(datasets, dict):
        if not datasets:
            check.problem('datasets', f"is empty; expected {'train and val datasets' if is_train else 'test datasets'}")
        if is_train and 'train' not in datasets:
            check.problem('datasets:train', 'missing; expected the training dataset')


def folder_name(name, key, where, check):
    """``name`` becomes a folder or file name (``where``): one path component, inside its output tree."""
    if not name or any(c in name for c in '/\\') or name.startswith('.') or any(ord(c) < 32 for c in name):
        check.problem(key, f"found {name!r}; expected one folder name, without /, \\, .. or control characters and "
                           f"not starting with '.': it names {where}")
    elif len(name.encode()) > MAX_NAME_BYTES:
        check.problem(key, f'found a name of {len(name.encode())} bytes; expected at most {MAX_NAME_BYTES}: it '
                           f'names {where}, and file systems take 255 bytes with the suffixes added to it')


def output_names(opt, check):
    """The experiment's name and each validation or test dataset's name become folders: one component each, and
    no two datasets share a name (their images, CSV and best values are kept by name)."""
    if isinstance(opt.get('name'), str):
        folder_name(opt['name'], 'name', 'experiments/<name>, results/<name> and tb_logger/<name>', check)
    named = {}
    datasets = opt.get('datasets') if isinstance(opt.get('datasets'), dict) else {}
    for phase_key, dataset_opt in datasets.items():
        name = dataset_opt.get('name') if isinstance(dataset_opt, dict) else None
        if str(phase_key).split('_')[0] == 'train' or not isinstance(name, str):
            continue
        path = f'datasets:{phase_key}:name'
        folder_name(name, path, 'visualization/<name> and <name>.csv in the results', check)
        if name in named:
            check.problem(path, f'found {name!r}, the name of {named[name]} too; expected a name of its own: each '
                                "dataset's images, CSV and best values are kept by name, so one would overwrite the "
                                'other')
        named.setdefault(name, f'datasets:{phase_key}')


def gpus_present(opt, check):
    """``num_gpu`` and ``prefetch_mode: cuda`` against the GPUs this machine has."""
    value, available = opt.get('num_gpu'), torch.cuda.device_count()
    if _is_int(value) and value > available:
        check.problem('num_gpu', f'found {value}, but this machine has {available} GPU{"s" * (available != 1)} '
                                 f'(torch.cuda.device_count()); expected at most {available}, or auto')
    train_set = opt['datasets'].get('train') if isinstance(opt.get('datasets'), dict) else None
    if isinstance(train_set, dict) and train_set.get('prefetch_mode') == 'cuda':
        if not torch.cuda.is_available() or value == 0:
            check.problem('datasets:train:prefetch_mode', 'found cuda, but this run has no GPU; expected ~ or cpu')
        elif train_set.get('pin_memory') is not True:
            was = found(train_set['pin_memory']) if 'pin_memory' in train_set else 'missing'
            check.problem('datasets:train:pin_memory', f"{was}; expected true: BasicSR's CUDAPrefetcher needs pinned "
                                                       'memory')


def dataset_images(opt, loader, options, key, facts, check):
    """The images a :class:`~usaid.data.gaussian_noise_dataset.GaussianNoiseDataset` with ``options`` reads, from
    their headers: they exist, are readable and fit ``gt_size``; and the training set fills one batch of the
    ``loader`` (its :class:`~usaid.basicsr_sections.LoaderOptions`)."""
    options = dataclasses.replace(options, dataroot_gt=osp.expanduser(options.dataroot_gt))
    try:
        paths, _ = collect_images(options)
    except ValueError as error:
        check.problems.append(f'{key}:{error}')
        return
    if options.phase == 'train':
        facts.gt_sizes[f'{key}:gt_size'] = options.gt_size
        one_batch_at_least(opt, loader, key, len(paths), check)
    else:
        facts.image_sizes[key] = image_sizes(options, paths)


def one_batch_at_least(opt, loader, key, images, check):
    """The training set fills one batch per process: BasicSR's training loader drops an incomplete batch, so a
    smaller set trains 0 iterations, says "End of training" and saves the untrained network."""
    batch, ratio = loader.batch_size_per_gpu, loader.dataset_enlarge_ratio
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
    check.problem(f'{key}:batch_size_per_gpu',
                  f'found {batch}, but {images} training image(s) x dataset_enlarge_ratio {ratio}{split} make '
                  f'{samples} sample(s) an epoch, fewer than one batch of {batch}{gpu_text}; expected '
                  + (f'batch_size_per_gpu at most {most}, or ' if most else '')
                  + f'dataset_enlarge_ratio at least {math.ceil(batch * gpus * processes / images)} (the loader '
                  'drops an incomplete batch: the run would train 0 iterations and save an untrained network)')


def channels(opt, in_ch, key, facts, check):
    """A dataset's ``in_ch`` is the network's ``num_in_ch``, and 3 where the USA loss segments the output."""
    if facts.arch is not None:
        params = inspect.signature(facts.arch).parameters
        if 'num_in_ch' in params:
            net_in = facts.network_opt.get('num_in_ch', params['num_in_ch'].default)
            if _is_int(net_in) and net_in != in_ch:
                check.problem(f'{key}:in_ch', f'found {in_ch}, but network_g:num_in_ch is {net_in}; expected the '
                                              'same number of channels')
    train = opt.get('train')
    if in_ch != 3 and isinstance(train, dict) and isinstance(train.get('usa_opt'), dict):
        check.problem(f'{key}:in_ch', f'found {in_ch}; expected 3: the USA loss (train:usa_opt) segments RGB images')


def metrics_fit_images(opt, facts, check):
    """Every validation or test image is large enough for each metric (:mod:`usaid.metric_sizes`)."""
    metrics = (opt.get('val') or {}).get('metrics') if isinstance(opt.get('val'), dict) else None
    for name, metric in (metrics or {}).items() if isinstance(metrics, dict) else ():
        if not isinstance(metric, dict) or not _is_int(metric.get('crop_border', 0)):
            continue  # reported by the metric's own check
        for dataset_key, sizes in facts.image_sizes.items():
            too_small = [(image, size_problem(metric, height, width)) for image, height, width in sizes
                         if size_problem(metric, height, width)]
            if too_small:
                image, why = too_small[0]
                check.problem(f'val:metrics:{name}', f'{why} ({image}); {len(too_small)} of the {len(sizes)} images '
                                                     f'of {dataset_key} are too small; expected larger images, or '
                                                     'this metric left out')


def micro_batch(opt):
    """``datasets:train:batch_size_per_gpu`` and ``train:accumulate`` (1 if not an integer: reported elsewhere)."""
    train_set = opt['datasets'].get('train') if isinstance(opt.get('datasets'), dict) else None
    batch = train_set.get('batch_size_per_gpu') if isinstance(train_set, dict) else None
    accumulate = opt['train'].get('accumulate', 1) if isinstance(opt.get('train'), dict) else 1
    return batch, accumulate if _is_int(accumulate) and accumulate > 0 else 1


def accumulate_divides_batch(opt, check):
    """``train:accumulate`` splits each batch into micro-batches of equal size (USAIDModel)."""
    batch, accumulate = micro_batch(opt)
    if _is_int(batch) and batch > 0 and batch % accumulate:
        check.problem('train:accumulate', f'found {accumulate}, which does not divide datasets:train:'
                                          f'batch_size_per_gpu {batch}; expected a divisor of it (each batch is split '
                                          'into accumulate micro-batches of equal size)')


def usa_batch_statistics(opt, check):
    """The USA network with batch statistics can segment a training batch (:func:`~usaid.archs.usanet_arch.
    batch_statistics_problem`): a batch of one 32x32 crop cannot be normalised. With ``train:accumulate`` it
    segments micro-batches."""
    datasets, train = opt.get('datasets'), opt.get('train')
    train_set = datasets.get('train') if isinstance(datasets, dict) else None
    usa = train.get('usa_opt') if isinstance(train, dict) else None
    network = usa.get('network') if isinstance(usa, dict) else None
    if not (isinstance(train_set, dict) and isinstance(network, dict) and network.get('type') == 'USANet') or any(
            p.startswith(('train:usa_opt', 'datasets:train')) for p in check.problems):
        return
    bn_mode = USANet.Options(**{k: v for k, v in network.items() if k != 'type'}).bn_mode
    (batch, accumulate), gt_size = micro_batch(opt), train_set.get('gt_size')
    if _is_int(batch) and _is_int(gt_size) and batch > 0 and gt_size > 0:
        problem = batch_statistics_problem(bn_mode, max(batch // accumulate, 1), gt_size, gt_size)
        if problem:
            split = f' split into {accumulate} micro-batches (train:accumulate)' if accumulate > 1 else ''
            check.problem('datasets:train:batch_size_per_gpu', f'found {batch}{split} with gt_size {gt_size}, but '
                                                               f'{problem} (or train:usa_opt:network:bn_mode: eval)')


def checkpoint_fits(opt, facts, check):
    """``path:pretrain_network_g`` fits network_g (keys and shapes, with ``param_key_g`` and ``strict_load_g``):
    checked here, because BasicSR loads it after making (and archiving) the run's folder."""
    path = facts.path
    if path is None or path.pretrain_network_g is None:
        return
    released = is_released_name(path.pretrain_network_g)
    try:
        weights = released_path(path.pretrain_network_g) if released else osp.expanduser(path.pretrain_network_g)
        with torch.random.fork_rng(devices=[]):
            net = facts.arch(**{k: v for k, v in facts.network_opt.items() if k != 'type'})
        canonical_state_dict(weights, path.param_key_g, allow_bare=released, net=net, strict=path.strict_load_g)
    except CheckpointError as error:
        check.problem('path:pretrain_network_g', f'{error} (expected a checkpoint of network_g)')


def network_runs(opt, facts, check):
    """Build network_g and run it once on a small image (:mod:`usaid.network_probe`): it must restore an image at
    scale 1, take the training crops, and expect data in [0, 1]; then its checkpoint must fit it."""
    if facts.arch is None:
        return
    name = facts.network_opt['type']
    try:
        multiple, offset = probe_network(facts.network_opt, facts.in_ch)
    except ValueError as error:
        check.problem('network_g', str(error))
        return
    checkpoint_fits(opt, facts, check)
    if offset > MAX_DATA_RANGE_OFFSET:
        range_keys = [k for k in inspect.signature(facts.arch).parameters if 'range' in k or 'mean' in k or 'std' in k]
        check.problem('network_g', f'{name} shifts an image in [0, 1] by {offset:.0f} on average at initialisation: '
                                   "it expects another data range; expected data in [0, 1], BasicSR's range"
                                   + (f' (its range options: {", ".join(range_keys)}; e.g. img_range: 1)'
                                      if range_keys else ''))
    for key, gt_size in facts.gt_sizes.items():
        if _is_int(gt_size) and gt_size % multiple:
            check.problem(key, f'found {gt_size}, but {name} with these options takes sizes that are multiples of '
                               f'{multiple}; expected a multiple of {multiple}')

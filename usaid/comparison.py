"""Several models on the same test sets, as ``usaid-compare -m NAME=MODEL ... -d DATASET ... -o OUT`` runs them.

Each MODEL is a checkpoint (``.pth``: U-SAID's architecture; the authors' released files work too), an option file
whose ``network_g`` and ``path: pretrain_network_g`` define any BasicSR architecture and its weights, or an
experiment folder of a training run (``experiments/<name>``: its option file and ``models/net_g_latest.pth``).
Each DATASET is a folder of clean images. For every model, dataset and sigma, BasicSR's test path runs (the
dataset, dataloader and model that ``usaid-test`` builds, and the model's ``validation``) with the literature's
protocol: ``GaussianNoiseDataset``, noise seeded with 0 per image, PSNR and SSIM on RGB without border crop, and
NIQE where every image holds two of NIQE's 96 x 96 blocks (usaid.metric_sizes; with one block it is undefined).

Written to OUT: ``compare.md`` (one row per dataset, sigma and metric, one column per model, the best in bold),
``compare.csv`` (the same numbers: the test pipeline's own averages), ``compare_images.csv`` (every image's values),
``compare_psnr.png`` (grouped bars), and ``compare_crops.png`` (the same crop of the first image of the first dataset
from every model). With ``--baseline NAME``, every other model is compared with NAME image by image
(:mod:`usaid.statistics`: the mean difference, its bootstrap 95 % interval, the Wilcoxon signed-rank p-value and
a verdict that knows NIQE's direction), in ``compare_paired.csv`` and a section of ``compare.md``. Results are cached
in ``OUT/cache``, keyed by content: the checkpoint's SHA-256, the network and inference options, the SHA-256 of every
image of the dataset, sigma and the protocol; a model evaluated before is not run again.

Model names and dataset folder names label the table and name files under OUT: each must be one file name (no
``/``, ``..``), and two models (or two datasets) with the same label are refused before anything runs. OUT must lie
apart from every dataset (not the same folder, not inside one, not around one).
"""
import copy
import csv
import hashlib
import json
import os
import tempfile
from os import path as osp

import matplotlib

matplotlib.use('Agg')  # files only: no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from basicsr.archs import build_network  # noqa: E402
from basicsr.data import build_dataloader, build_dataset  # noqa: E402
from basicsr.models import build_model  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from usaid.arguments import check_sigma  # noqa: E402
from usaid.checkpoint import canonical_state_dict, load_checkpoint, save_atomically  # noqa: E402
from usaid.data.data_util import PROTOCOL_NOISE_SEED, add_protocol_noise  # noqa: E402
from usaid.data.gaussian_noise_dataset import GaussianNoiseDataset, collect_images  # noqa: E402
from usaid.denoiser import resolve_model  # noqa: E402
from usaid.evaluation import paired_section, write_csv  # noqa: E402
from usaid.metrics.lpips_metric import lpips_network  # noqa: E402
from usaid.metric_sizes import size_problem  # noqa: E402
from usaid.options import check_options  # noqa: E402
from usaid.paths import check_label, file_sha256, relation  # noqa: E402
from usaid.statistics import paired_comparison  # noqa: E402

METRICS = {
    'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False},
    'ssim': {'type': 'calculate_ssim', 'crop_border': 0, 'test_y_channel': False},
    'niqe': {'type': 'calculate_niqe', 'crop_border': 0, 'better': 'lower'},
    'lpips': {'type': 'calculate_lpips', 'crop_border': 0, 'net': 'alex', 'better': 'lower'},  # usaid.metrics
}
# BasicSR's NIQE fits a covariance over 96 x 96 blocks: one block gives NaN; two in each direction are enough
PROTOCOL = {'noise_seed': PROTOCOL_NOISE_SEED, 'metrics': METRICS, 'version': 2}  # 2: per-image values cached


def canonical_checkpoint(name, weights, network_opt, param_key, folder):
    """``(path, SHA-256 of the file's bytes)``: ``weights`` read once, in whatever layout
    (:func:`~usaid.checkpoint.canonical_state_dict`: the authors' released files too), checked against
    ``network_opt`` and written into ``folder`` as a BasicSR checkpoint (``params``), the file BasicSR's test path
    loads for every job of this model."""
    if not osp.isfile(weights):
        raise ValueError(f'{name}: checkpoint {weights} does not exist.')
    with open(weights, 'rb') as f:
        content = f.read()
    digest = hashlib.sha256(content).hexdigest()
    try:
        net = build_network(copy.deepcopy(network_opt))
    except (KeyError, TypeError) as error:  # BasicSR's registry and the architecture's arguments
        raise ValueError(f'{name}: network_g {network_opt} cannot be built ({error}).') from None
    state = canonical_state_dict(weights, param_key, allow_bare=True, net=net,
                                 checkpoint=load_checkpoint(weights, content))
    path = osp.join(folder, f'{name}.pth')
    save_atomically({'params': state}, path)
    return path, digest


def dataset_key(root):
    """What identifies a test set's content: its files' names and the SHA-256 of their bytes (an image replaced by
    another of the same size is another test set)."""
    paths, _ = collect_images(GaussianNoiseDataset.Options(dataroot_gt=root, sigma=0))  # which sigma: no matter
    listing = [(osp.relpath(p, root), file_sha256(p)) for p in paths]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest(), paths


def dataset_label(root):
    """The name of a test set in the table and in file names: its folder's name (links resolved, so ``.`` too)."""
    return osp.basename(osp.realpath(root))


def check_jobs(models, datasets, sigmas, out_dir, crop_sigma):
    """Refuse, before anything runs, what would write outside ``out_dir`` or report one result under another's
    label: names that are not one file name, two datasets of one folder name, a sigma given twice or not a noise
    level, an ``out_dir`` that is, lies inside or contains a dataset."""
    for name in models:
        check_label(name, '--model NAME')
    labels = {}
    for root in datasets:
        label = check_label(dataset_label(root), f'--dataset {root}: its folder name')
        if label in labels:
            raise ValueError(f'--dataset {labels[label]} and --dataset {root}: both are named {label!r}, and the '
                             'table and file names tell datasets by their folder name; expected distinct folder '
                             'names (give one through a link of another name).')
        labels[label] = root
        where = relation(out_dir, root)
        if where:
            raise ValueError(f'--output {out_dir} is {where} --dataset {root}: the results would be written among '
                             'the test images (and read as images next time); expected an output folder apart from '
                             'every dataset.')
    for sigma in sigmas:
        check_sigma(sigma, '--sigma')
    repeated = sorted({s for s in sigmas if sigmas.count(s) > 1})
    if repeated:
        raise ValueError(f'--sigma {" ".join(f"{s:g}" for s in sigmas)}: {", ".join(f"{s:g}" for s in repeated)} '
                         'given more than once; expected each noise level once.')
    if crop_sigma is not None and crop_sigma not in sigmas:
        given = ', '.join(f'{s:g}' for s in sigmas)
        raise ValueError(f'--crop-sigma {crop_sigma:g}: not one of the --sigma values ({given}); expected one of '
                         'them, the noise level whose outputs compare_crops.png shows.')


def metric_applies(metric, paths):
    """Whether the metric ``metric`` (a key of :data:`METRICS`) can score every image (:mod:`usaid.metric_sizes`:
    NIQE needs two 96 x 96 blocks, SSIM its 11 x 11 window)."""
    for path in paths:
        with Image.open(path) as img:
            width, height = img.size
        if size_problem(METRICS[metric], height, width):
            return False
    return True


def evaluate(name, network_opt, weights, param_key, root, dataset_name, sigma, metrics, work_dir, save_img,
             inference=None):
    """One model on one dataset at one sigma through BasicSR's test path; returns ``{'mean': the test pipeline's own
    averages (``metric_results``), 'images': [{'image': name, metric: value, ...}, ...]}`` (the per-image CSV the
    model writes). ``inference``: the keyword arguments of the model's :class:`~usaid.inference.InferenceNetwork`
    (BasicSR's ``val: inference``)."""
    opt = {
        'name': name, 'model_type': 'USAIDModel', 'num_gpu': torch.cuda.device_count(), 'manual_seed': 0,
        'datasets': {'test_1': {'name': dataset_name, 'type': 'GaussianNoiseDataset', 'dataroot_gt': root,
                                'io_backend': {'type': 'disk'}, 'sigma_type': 'fixed', 'sigma': sigma,
                                'noise_seed': PROTOCOL['noise_seed']}},
        'network_g': copy.deepcopy(network_opt),
        'path': {'pretrain_network_g': weights, 'strict_load_g': True, 'param_key_g': param_key},
        'val': {'save_img': save_img, 'suffix': name, 'metrics': copy.deepcopy(metrics),
                'inference': dict(inference or {})},
    }
    check_options(opt, f'--model {name}', is_train=False)
    results_root = osp.join(work_dir, name)
    opt.update(is_train=False, dist=False, rank=0, world_size=1, auto_resume=False)
    opt['path'].update(results_root=results_root, log=results_root, visualization=osp.join(results_root, 'images'))
    opt['datasets']['test_1']['phase'] = 'test'
    os.makedirs(results_root, exist_ok=True)
    test_set = build_dataset(opt['datasets']['test_1'])
    loader = build_dataloader(test_set, opt['datasets']['test_1'], num_gpu=opt['num_gpu'], dist=False, sampler=None,
                              seed=0)
    model = build_model(opt)
    model.validation(loader, current_iter=name, tb_logger=None, save_img=save_img)
    with open(osp.join(results_root, f'{dataset_name}.csv'), newline='') as f:
        images = [{'image': row['image'], **{m: float(row[m]) for m in metrics}} for row in csv.DictReader(f)]
    return {'mean': {metric: float(value) for metric, value in model.metric_results.items()}, 'images': images}


def lpips_ready(mode, weights):
    """Whether LPIPS is scored: ``on`` (its network is built now, so that a missing package or missing weights stop
    the run before it starts, with the message that says what to install or place), ``off``, or ``auto`` (when the
    ``lpips`` package is installed and the AlexNet weights are at hand, never downloading)."""
    if mode == 'off':
        return False
    if mode == 'auto':
        try:
            import lpips  # noqa: F401
        except ImportError:
            return False
        url = torchvision.models.get_model_weights('alexnet').IMAGENET1K_V1.url
        if not weights and not osp.isfile(osp.join(torch.hub.get_dir(), 'checkpoints', osp.basename(url))):
            return False
    lpips_network('alex', weights)
    return True


def compare(models, datasets, sigmas, out_dir, use_cache=True, niqe='auto', crop_sigma=None, inference=None,
            baseline=None, lpips='auto', lpips_weights=None):
    """Run (or reuse) every job; write the table, CSVs and figures; return the rows of ``compare.csv`` and how many
    jobs came from the cache. ``inference``: keyword arguments of :class:`~usaid.inference.InferenceNetwork`.
    ``baseline``: a model's name, against which every other model is compared image by image
    (:func:`usaid.statistics.paired_comparison`). ``lpips``: ``auto``, ``on`` or ``off`` (:func:`lpips_ready`), with
    ``lpips_weights`` a local file of torchvision's AlexNet weights."""
    check_jobs(models, datasets, sigmas, out_dir, crop_sigma)
    if baseline is not None and baseline not in models:
        raise ValueError(f'--baseline {baseline}: not one of the models ({", ".join(models)}); expected the NAME of '
                         'a --model.')
    inference = dict(inference or {})
    os.makedirs(osp.join(out_dir, 'cache'), exist_ok=True)
    work_dir = osp.join(out_dir, 'runs')
    resolved = {}
    with tempfile.TemporaryDirectory() as canonical:
        for name, spec in models.items():
            network_opt, weights, param_key = resolve_model(spec)
            resolved[name] = (network_opt, param_key, *canonical_checkpoint(name, weights, network_opt, param_key,
                                                                            canonical))
        with_lpips = lpips_ready(lpips, lpips_weights)
        metric_options = {m: dict(METRICS[m], **({'backbone_weights': lpips_weights} if m == 'lpips' and lpips_weights
                                                 else {})) for m in METRICS}
        weights_key = file_sha256(lpips_weights) if with_lpips and lpips_weights else None
        sets = {}
        for root in datasets:
            key, paths = dataset_key(root)
            metrics = [m for m in ('psnr', 'ssim') if metric_applies(m, paths)]
            metrics += ['niqe'] if niqe == 'on' or (niqe == 'auto' and metric_applies('niqe', paths)) else []
            metrics += ['lpips'] if with_lpips else []
            left_out = [m for m in ('psnr', 'ssim') if m not in metrics]
            if left_out:
                tqdm.write(f'usaid-compare: {root}: {", ".join(left_out)} left out: an image is too small for it')
            sets[root] = (key, paths, metrics)
        crop_sigma = crop_sigma if crop_sigma is not None else sigmas[len(sigmas) // 2]
        jobs = [(name, root, sigma) for name in models for root in datasets for sigma in sigmas]
        rows, image_rows, crops_from, reused = [], [], {}, 0
        progress = tqdm(jobs, unit='job', desc='usaid-compare')
        for name, root, sigma in progress:
            network_opt, param_key, weights_file, weights_hash = resolved[name]
            key, paths, metrics = sets[root]
            cache_key = hashlib.sha256(json.dumps(
                [weights_hash, network_opt, param_key, key, sigma, metrics, PROTOCOL, inference, weights_key],
                sort_keys=True,
                default=str).encode()).hexdigest()
            cache_file = osp.join(out_dir, 'cache', f'{cache_key}.json')
            dataset_name = f'{dataset_label(root)}_sigma{sigma:g}'
            save_img = root == datasets[0] and sigma == crop_sigma
            crop_image = osp.join(work_dir, name, 'images', dataset_name,
                                  f'{osp.splitext(osp.basename(paths[0]))[0]}_{name}.png')
            progress.set_postfix_str(f'{name} {dataset_name}')
            if use_cache and osp.isfile(cache_file) and (not save_img or osp.isfile(crop_image)):
                with open(cache_file) as f:
                    values = json.load(f)
                reused += 1
            else:
                values = evaluate(name, network_opt, weights_file, 'params', root, dataset_name, sigma,
                                  {m: metric_options[m] for m in metrics}, work_dir, save_img, inference)
                with open(cache_file + '.partial', 'w') as f:
                    json.dump(values, f)
                os.replace(cache_file + '.partial', cache_file)
            if save_img:
                crops_from[name] = crop_image
            for metric, value in values['mean'].items():
                rows.append({'model': name, 'dataset': dataset_label(root), 'sigma': sigma,
                             'metric': metric, 'value': value})
            image_rows += [{'model': name, 'dataset': dataset_label(root), 'sigma': sigma, **row}
                           for row in values['images']]
    write_table(rows, list(models), out_dir)
    write_csv(image_rows, osp.join(out_dir, 'compare_images.csv'))
    if baseline is not None:
        lines = paired_section(paired_rows(image_rows, baseline), osp.join(out_dir, 'compare_paired.csv'), baseline,
                               ('model', 'baseline', 'dataset', 'sigma', 'metric'), 'its PSNR, SSIM, NIQE, LPIPS')
        with open(osp.join(out_dir, 'compare.md'), 'a') as f:
            f.write('\n'.join(lines) + '\n')
    plot_bars(rows, list(models), osp.join(out_dir, 'compare_psnr.png'))
    first = sets[datasets[0]][1][0]
    plot_crops(first, crop_sigma, crops_from, osp.join(out_dir, 'compare_crops.png'))
    return rows, reused


def paired_rows(image_rows, baseline):
    """For each model but ``baseline``, dataset, sigma and metric: the paired comparison with ``baseline`` over the
    images (:func:`usaid.statistics.paired_comparison`, the metric's direction taken into account)."""
    scores = {}
    for row in image_rows:
        for metric in METRICS:
            if metric in row:
                scores.setdefault((row['dataset'], row['sigma'], metric), {}).setdefault(row['model'], {})[
                    row['image']] = row[metric]
    paired = []
    for (dataset, sigma, metric), by_model in scores.items():
        reference = by_model[baseline]
        for model, values in by_model.items():
            if model == baseline:
                continue
            images = [image for image in reference if image in values]
            result = paired_comparison([reference[i] for i in images], [values[i] for i in images],
                                       higher_is_better=METRICS[metric].get('better') != 'lower')
            paired.append({'model': model, 'baseline': baseline, 'dataset': dataset, 'sigma': sigma,
                           'metric': metric, 'result': result})
    return paired


def write_table(rows, names, out_dir):
    """``compare.csv`` (long format) and ``compare.md`` (datasets x sigmas x metrics by models, best in bold)."""
    write_csv(rows, osp.join(out_dir, 'compare.csv'))
    table = {}
    for row in rows:
        table.setdefault((row['dataset'], row['sigma'], row['metric']), {})[row['model']] = row['value']
    def cell(text):  # a '|' in a name would split the Markdown cell
        return text.replace('|', '\\|')

    lines = ['| dataset | sigma | metric | ' + ' | '.join(map(cell, names)) + ' |',
             '|---|---|---|' + '---|' * len(names)]
    for (dataset, sigma, metric), values in table.items():
        pick = min if METRICS[metric].get('better') == 'lower' else max
        best = pick(values.values())
        digits = 4 if metric == 'ssim' else 2
        cells = [(f'**{values[n]:.{digits}f}**' if values[n] == best else f'{values[n]:.{digits}f}')
                 if n in values else '' for n in names]
        lines.append(f'| {cell(dataset)} | {sigma:g} | {metric.upper()} | ' + ' | '.join(cells) + ' |')
    with open(osp.join(out_dir, 'compare.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')


def plot_bars(rows, names, out_path):
    """PSNR per dataset and sigma, one bar per model."""
    groups = sorted({(r['dataset'], r['sigma']) for r in rows}, key=lambda g: (g[0], g[1]))
    psnr = {(r['model'], r['dataset'], r['sigma']): r['value'] for r in rows if r['metric'] == 'psnr'}
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4), dpi=100, layout='constrained')
    for i, name in enumerate(names):
        values = [psnr.get((name, d, s), np.nan) for d, s in groups]
        bars = ax.bar(np.arange(len(groups)) + (i - (len(names) - 1) / 2) * width, values, width, label=name)
        ax.bar_label(bars, fmt='%.2f', fontsize=7)
    ax.set_xticks(np.arange(len(groups)), [f'{d}\nsigma {s:g}' for d, s in groups])
    finite = [v for v in psnr.values() if np.isfinite(v)]
    ax.set_ylim(min(finite) - 1, max(finite) + 0.5)
    ax.set(ylabel='PSNR (dB)', title='PSNR by test set and noise level')
    ax.legend(fontsize=8)
    fig.savefig(out_path)
    plt.close(fig)


def plot_crops(clean_path, sigma, outputs, out_path):
    """The same centred crop of one image: clean, noisy (the protocol's noise) and each model's output."""
    clean = np.asarray(Image.open(clean_path).convert('RGB'))
    height, width = clean.shape[:2]
    size = max(16, min(height, width) // 3)
    top, left = (height - size) // 2, (width - size) // 2
    noisy = np.clip(add_protocol_noise(clean / 255., sigma, PROTOCOL['noise_seed']), 0, 1)
    panels = [('clean', clean), (f'noisy, sigma {sigma:g}', noisy)]
    panels += [(name, np.asarray(Image.open(path).convert('RGB'))) for name, path in outputs.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.5 * len(panels), 2.8), dpi=100, layout='constrained',
                             squeeze=False)
    for ax, (title, image) in zip(axes[0], panels):
        ax.imshow(image[top:top + size, left:left + size], interpolation='nearest')
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.savefig(out_path)
    plt.close(fig)

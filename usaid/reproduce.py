"""The paper's experiments in one run, for whatever data is at hand (``usaid-reproduce``), written as one report.

Three experiments, each run when its data and weights are here and otherwise listed as skipped, with the reason and
how to get what is missing:

1. denoising tables (:mod:`usaid.comparison`): PSNR, SSIM, NIQE and LPIPS where they apply, every model against the
   baseline image by image, on each standard test set found (Kodak24, CBSD68, McMaster, Urban100);
2. segmentation after denoising on PASCAL VOC 2012 ``val`` (:mod:`usaid.segeval`);
3. classification after denoising on an ImageNet-style folder (:mod:`usaid.taskeval`).

A rerun does only what changed: the denoising tables reuse :mod:`usaid.comparison`'s cache, and the other two are
skipped when a stamp of their inputs (models' checkpoints, data listing, sigmas, networks) matches the last run.
"""
import csv
import datetime
import hashlib
import json
import os
from os import path as osp

import matplotlib

matplotlib.use('Agg')  # files only: no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from usaid import __version__, comparison, segeval, taskeval  # noqa: E402
from usaid.denoiser import resolve_model  # noqa: E402
from usaid.errors import USAIDError  # noqa: E402
from usaid.evaluation import load_denoisers  # noqa: E402
from usaid.paths import file_sha256, output_lock  # noqa: E402
from usaid.segmentation import VOC_CLASSES  # noqa: E402

TEST_SETS = ('Kodak24', 'CBSD68', 'McMaster', 'Urban100')  # looked for in the test-set folder, in this order
# (images, SHA-256 of the listing `LC_ALL=C sha256sum *`) of the published copies that datasets/README.md names
PUBLISHED = {
    'Kodak24': (24, '8ea2bf2947a19cf2b71830abc0b91539e5b2f26458314e061cf6aca7cbd7452f'),
    'CBSD68': (68, 'c500323c4bcb5fc35ca57d9e1803f396f54054ac8720c8f5305aed6dcdaff9a5'),
    'McMaster': (18, '63ecac5a3b32f22f322a4243cfd2bf4bca8b5f5c3c20ec1f55142d32b85782eb'),
    'Urban100': (100, None),
}
DEFAULT_MODELS = {'CDnCNN-B': 'cdncnn-b', 'U-SAID': 'usaid', 'S-SAID': 'ssaid'}
HOW_TO_GET = {
    'test sets': 'datasets/README.md lists where each standard test set is published, with a checksum',
    'voc': 'PASCAL VOC 2012 (VOCtrainval_11-May-2012.tar) from http://host.robots.ox.ac.uk/pascal/VOC/voc2012/, '
           'extracted; pass its VOC2012 folder as --voc',
    'imagenet': "ImageNet's validation images arranged in one folder per synset (https://image-net.org), or any "
                'folder per class named like the classifier\'s categories; pass it as --imagenet',
}


def listing_checksum(folder):
    """``(files, what LC_ALL=C sha256sum * | LC_ALL=C sha256sum prints inside folder)``: one number for all bytes."""
    names = sorted((n for n in os.listdir(folder) if not n.startswith('.') and osp.isfile(osp.join(folder, n))),
                   key=os.fsencode)
    text = ''.join(f'{file_sha256(osp.join(folder, n))}  {n}\n' for n in names)
    return len(names), hashlib.sha256(text.encode()).hexdigest()


def provenance(folder, name):
    """Whether a test set folder holds the published copy, in words for the report."""
    count, checksum = listing_checksum(folder)
    expected_count, expected = PUBLISHED[name]
    if expected is not None and checksum == expected:
        return f'{name}: the published copy ({count} images, checksum as in datasets/README.md)'
    if expected is None:
        return f'{name}: {count} images (the published copy has {expected_count}; no checksum known)'
    return (f'{name}: NOT the published copy: {count} files, listing checksum {checksum[:12]}...; the published one '
            f'has {expected_count} images and {expected[:12]}... (datasets/README.md): its figures are not comparable')


def network_digest(net):
    """What identifies a frozen network's weights (a torchvision network or a package.module:callable alike)."""
    digest = hashlib.sha256()
    for key, value in net.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def stamp_of(*parts):
    """A digest of what a step's result depends on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def listing(paths):
    """What identifies a data set cheaply: each file's name, size and modification time."""
    return [(p, os.stat(p).st_size, int(os.stat(p).st_mtime)) for p in paths]


def model_stamps(models):
    """What identifies the models: each one's network options and the SHA-256 of its checkpoint."""
    resolved = {name: resolve_model(spec) for name, spec in models.items()}
    return {name: (network_opt, file_sha256(weights), key) for name, (network_opt, weights, key) in resolved.items()}


def step(out_dir, name, paths, settings, run, ran):
    """``run(folder)`` for step ``name`` unless its stamp (the data's :func:`listing` and ``settings``) equals that of
    its last complete run; ``ran[name]`` says which."""
    folder = osp.join(out_dir, name)
    os.makedirs(folder, exist_ok=True)
    stamp_file, stamp = osp.join(folder, '.stamp'), stamp_of(listing(paths), settings)
    if osp.isfile(stamp_file) and open(stamp_file).read() == stamp:
        ran[name] = f'reused: nothing changed since the last run ({len(paths)} files)'
        return
    run(folder)
    with open(stamp_file, 'w') as f:  # written last: an interrupted step runs again
        f.write(stamp)
    ran[name] = f'run ({len(paths)} files)'


def plot_class_iou(segeval_csv, sigma, out_path):
    """Per-class IoU bars at one sigma (from ``segeval.csv``), one bar per method, clean as the reference."""
    with open(segeval_csv, newline='') as f:
        rows = [r for r in csv.DictReader(f) if r['sigma'] in ('', f'{sigma:g}')]
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(14, 4), dpi=100, layout='constrained')
    for i, row in enumerate(rows):
        ious = [100 * float(row[f'iou_{c}']) for c in VOC_CLASSES]
        ax.bar(np.arange(len(VOC_CLASSES)) + (i - (len(rows) - 1) / 2) * width, ious, width, label=row['method'])
    ax.set_xticks(np.arange(len(VOC_CLASSES)), VOC_CLASSES, rotation=60, ha='right', fontsize=8)
    ax.set(ylabel='IoU (%)', title=f'Per-class IoU after denoising, sigma {sigma:g}')
    ax.legend(fontsize=8)
    fig.savefig(out_path)
    plt.close(fig)


def reproduce(out_dir, testsets='datasets', voc=None, imagenet=None, models=None, sigmas=(15, 25, 50),
              baseline='CDnCNN-B', segnet='deeplabv3_resnet101', classifier='resnet50', limit=None, device='cpu',
              inference=None):
    """Run every experiment whose data is here; write ``report.md``; return ``(ran, skipped)``: the steps run (or
    reused) and ``{step: reason}`` for those that could not be."""
    models = dict(models or DEFAULT_MODELS)
    if baseline not in models:
        raise ValueError(f'--baseline {baseline}: not one of the models ({", ".join(models)}); expected a NAME.')
    inference = dict(inference or {})
    sigmas = list(sigmas)
    os.makedirs(out_dir, exist_ok=True)
    with output_lock(out_dir, 'usaid-reproduce'):  # two runs into one folder would mix their tables
        return _reproduce(out_dir, testsets, voc, imagenet, models, sigmas, baseline, segnet, classifier, limit,
                          device, inference)


def _reproduce(out_dir, testsets, voc, imagenet, models, sigmas, baseline, segnet, classifier, limit, device,
               inference):
    ran, skipped, sections = {}, {}, []
    found, origins = [], []
    for name in TEST_SETS:
        folder = osp.join(testsets, name)
        if not osp.isdir(folder):
            continue
        try:
            comparison.dataset_key(folder)
        except (ValueError, OSError) as error:  # empty, or files that are no images: this set only is skipped
            skipped[f'denoising: {name}'] = str(error)
            continue
        found.append(folder)
        origins.append(provenance(folder, name))
    missing = [name for name in TEST_SETS if not osp.isdir(osp.join(testsets, name))]
    if found:
        denoising = osp.join(out_dir, 'denoising')
        _, reused = comparison.compare(models, found, sigmas, denoising, baseline=baseline, inference=inference)
        ran['denoising'] = (f'{len(found)} test set(s); {reused} job(s) reused from the cache. '
                            + '; '.join(origins))
        with open(osp.join(denoising, 'compare.md')) as f:
            sections.append(('Denoising', f.read() + '\n![PSNR](denoising/compare_psnr.png)\n\n'
                                                     '![crops](denoising/compare_crops.png)\n'))
    if missing:
        skipped['denoising: ' + ', '.join(missing)] = (f'not in {testsets}; {HOW_TO_GET["test sets"]}, put each at '
                                                       f'{testsets}/<name>')

    if not voc:
        skipped['segmentation'] = f'no --voc given; {HOW_TO_GET["voc"]}'
    else:
        def segmentation(denoisers, folder):
            pairs = data[:limit] if limit else data
            results = segeval.segeval(pairs, denoisers, sigmas, segmenter, device)
            segeval.write_results(results, folder, baseline)
        try:
            data = segeval.voc_pairs(voc, 'val')
            segmenter = segeval.build_segnet(segnet)
            step(out_dir, 'segmentation', [p for pair in data for p in pair],
                 (model_stamps(models), sigmas, segnet, network_digest(segmenter), inference, limit),
                 lambda folder: segmentation(load_denoisers(models, device, inference), folder), ran)
            folder = osp.join(out_dir, 'segmentation')
            plot_class_iou(osp.join(folder, 'segeval.csv'), sigmas[len(sigmas) // 2], osp.join(folder, 'class_iou.png'))
            with open(osp.join(folder, 'segeval.md')) as f:
                sections.append(('Segmentation after denoising (VOC 2012 val)',
                                 f.read() + '\n![per-class IoU](segmentation/class_iou.png)\n'))
        except (USAIDError, ValueError, OSError) as error:
            skipped['segmentation'] = str(error)

    if not imagenet:
        skipped['classification'] = f'no --imagenet given; {HOW_TO_GET["imagenet"]}'
    else:
        def classification(denoisers, folder):
            chosen = items[:limit] if limit else items
            results = taskeval.taskeval(chosen, names, denoisers, sigmas, classify, device)
            taskeval.write_results(results, names, folder, baseline)
        try:
            items, names = taskeval.image_folder_items(imagenet)
            classify = taskeval.build_classifier(classifier)
            step(out_dir, 'classification', [item.path for item in items],
                 (model_stamps(models), sigmas, classifier, network_digest(classify.net), inference, limit),
                 lambda folder: classification(load_denoisers(models, device, inference), folder), ran)
            with open(osp.join(out_dir, 'classification', 'taskeval.md')) as f:
                sections.append(('Classification after denoising', f.read()))
        except (USAIDError, ValueError, OSError) as error:
            skipped['classification'] = str(error)

    write_report(out_dir, models, sigmas, baseline, ran, skipped, sections)
    return ran, skipped


def write_report(out_dir, models, sigmas, baseline, ran, skipped, sections):
    lines = ['# U-SAID: the paper\'s experiments, as run here', '',
             f'{datetime.date.today()}, basicsr-usaid {__version__}, torch {torch.__version__}. Models: '
             + ', '.join(f'{name} = `{spec}`' for name, spec in models.items())
             + f'; sigma {", ".join(f"{s:g}" for s in sigmas)}; baseline of the paired comparisons: {baseline}.', '',
             '## What was run', '']
    lines += [f'- {step}: {what}' for step, what in ran.items()] or ['- nothing: no data was found']
    lines += ['', '## What was skipped, and how to run it', '']
    lines += [f'- {step}: {why}' for step, why in skipped.items()] or ['- nothing']
    for title, text in sections:
        lines += ['', f'## {title}', '', text.rstrip('\n')]
    with open(osp.join(out_dir, 'report.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')

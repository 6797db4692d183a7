"""Segmentation quality after denoising (mIoU), as ``usaid-segeval --voc VOC2012 -w NAME=MODEL ...`` runs it.

The paper's second claim, as an evaluation of any denoiser with any segmentation network: each image gets the test
protocol's noise (REFERENCE section 4: ``normal(0, sigma / 255)`` over the RGB float array, seeded with 0 per image,
unclipped), is denoised by each model, and is segmented by a frozen network that never saw noise; ``clean`` (no
noise) and ``noisy`` (no denoiser) are evaluated as references. What the segmentation network receives is an 8-bit
image: the clean, noisy or denoised image clipped to [0, 1] and rounded, as if saved and reloaded. Its scores are
upsampled bilinearly to the label size where it gives them at a lower resolution (as torchvision's own segmentation
models do inside); it must score VOC's 21 classes, and labels must hold VOC class indices (0-20, 255 ignored).

Data: a VOC layout (``JPEGImages/*.jpg``, ``SegmentationClass/*.png`` palette label maps, the list
``ImageSets/Segmentation/<split>.txt``), or a folder pair (``--images``, ``--labels``, matched by file stem). Label
255 is ignored. Images of any size are segmented at their own size; images of equal size are batched together.

Segmentation network (``--segnet``): torchvision's ``deeplabv3_resnet50``, ``deeplabv3_resnet101``,
``fcn_resnet50``, ``fcn_resnet101`` or ``lraspp_mobilenet_v3_large`` with their VOC-label weights (from
torchvision's cache ``$TORCH_HOME/hub/checkpoints``, downloaded when possible, or ``--segnet-weights FILE``), or
``package.module:factory``, any importable callable that returns an ``nn.Module`` whose output (a tensor or a dict
with ``out``) is (N, 21, H, W) logits (H, W: the input's size or a fraction of it).

Written to OUT: ``segeval.csv`` (sigma, method, mIoU, pixel accuracy, PSNR, one column per class IoU),
``segeval_images.csv`` (each image's own mIoU, pixel accuracy and PSNR) and ``segeval.md`` (the same as Markdown
tables). With ``--baseline NAME`` (a model, or ``noisy``), every other method is compared with it image by image
(:mod:`usaid.statistics`) in ``segeval_paired.csv`` and a section of ``segeval.md``.
"""
import os
from collections import defaultdict
from os import path as osp

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from basicsr.metrics import calculate_psnr
from PIL import Image
from tqdm import tqdm

from usaid.checkpoint import canonical_state_dict, check_fits
from usaid.data.data_util import add_protocol_noise
from usaid.evaluation import import_network, paired_section, to_8bit, write_csv
from usaid.errors import USAIDError
from usaid.segmentation import IGNORE_INDEX, VOC_CLASSES, confusion_matrix, segmentation_scores
from usaid.statistics import paired_comparison
from usaid.torchvision_weights import IMAGENET_MEAN, IMAGENET_STD, load_torchvision_weights

PAIRED_METRICS = ('miou', 'pixel_accuracy', 'psnr')  # per image; all three: higher is better
TORCHVISION_SEGNETS = ('deeplabv3_resnet50', 'deeplabv3_resnet101', 'fcn_resnet50', 'fcn_resnet101',
                       'lraspp_mobilenet_v3_large')


class SegevalError(USAIDError, ValueError):
    """Bad data or a segmentation network that cannot be had."""


def voc_pairs(root, split='val'):
    """``(image, label)`` paths of a VOC split."""
    list_file = osp.join(root, 'ImageSets', 'Segmentation', f'{split}.txt')
    if not osp.isfile(list_file):
        raise SegevalError(f'{list_file} does not exist; expected a VOC layout (JPEGImages, SegmentationClass, '
                           'ImageSets/Segmentation/<split>.txt).')
    with open(list_file) as f:
        names = [line.split()[0] for line in f if line.strip()]
    pairs = [(osp.join(root, 'JPEGImages', f'{n}.jpg'), osp.join(root, 'SegmentationClass', f'{n}.png')) for n in names]
    missing = [p for pair in pairs for p in pair if not osp.isfile(p)]
    if missing:
        raise SegevalError(f'{list_file}: {len(missing)} listed file(s) do not exist, e.g. {missing[0]}.')
    return pairs


def folder_pairs(images, labels):
    """``(image, label)`` paths of two folders, matched by file stem."""
    label_of = {osp.splitext(n)[0]: osp.join(labels, n) for n in os.listdir(labels) if n.lower().endswith('.png')}
    pairs = [(osp.join(images, n), label_of.get(osp.splitext(n)[0])) for n in sorted(os.listdir(images))
             if n.lower().endswith(('.jpg', '.jpeg', '.png', '.bmp'))]
    unmatched = [image for image, label in pairs if label is None]
    if unmatched or not pairs:
        raise SegevalError(f'{labels}: no label PNG for {len(unmatched)} image(s), e.g. {unmatched[0]}.' if unmatched
                           else f'{images}: no images.')
    return pairs


def read_pair(image_path, label_path):
    """RGB float64 array in [0, 1] and the label map (int64; palette indices of a VOC PNG)."""
    with Image.open(image_path) as img:
        rgb = np.asarray(img.convert('RGB'), dtype=np.float64) / 255.
    with Image.open(label_path) as lbl:
        if lbl.mode not in ('P', 'L'):
            raise SegevalError(f'{label_path}: a {lbl.mode} image; expected a palette (P) or gray (L) PNG of class '
                               'indices, as VOC SegmentationClass.')
        label = np.asarray(lbl, dtype=np.int64)
    if label.shape != rgb.shape[:2]:
        raise SegevalError(f'{label_path}: {label.shape[0]}x{label.shape[1]}, but {image_path} is '
                           f'{rgb.shape[0]}x{rgb.shape[1]}; expected the same size.')
    foreign = np.unique(label[(label >= len(VOC_CLASSES)) & (label != IGNORE_INDEX)])
    if foreign.size:  # such pixels would silently count for nothing
        raise SegevalError(f'{label_path}: holds class index(es) {", ".join(map(str, foreign[:5]))}, outside VOC\'s '
                           f'0-{len(VOC_CLASSES) - 1} ({IGNORE_INDEX} is ignored); expected a VOC label map '
                           '(SegmentationClass, not SegmentationObject).')
    return rgb, label


def build_segnet(name, weights_file=None):
    """The frozen segmentation network, in eval mode."""
    if ':' in name:
        net = import_network(name, '--segnet')
        if weights_file:
            net.load_state_dict(canonical_state_dict(weights_file, allow_bare=True, net=net))
    elif name in TORCHVISION_SEGNETS:
        state = canonical_state_dict(weights_file, allow_bare=True) if weights_file else load_torchvision_weights(
            torchvision.models.get_model_weights(name).DEFAULT, f'--segnet {name}', 'pass --segnet-weights FILE',
            SegevalError)
        aux = {'aux_loss': True} if any(k.startswith('aux_classifier') for k in state) else {}
        net = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=len(VOC_CLASSES),
                                           **aux)
        check_fits(net, state, weights_file or name)
        net.load_state_dict(state)
    else:
        raise SegevalError(f'--segnet {name}: expected one of {", ".join(TORCHVISION_SEGNETS)} or '
                           'package.module:callable.')
    return net.eval().requires_grad_(False)


def batches_by_size(pairs, batch_size):
    """Indices of ``pairs`` grouped into batches of equal image size (exact batching, no padding)."""
    by_size = defaultdict(list)
    for index, (image_path, _) in enumerate(pairs):
        with Image.open(image_path) as img:
            by_size[img.size].append(index)
    return [group[i:i + batch_size] for group in by_size.values() for i in range(0, len(group), batch_size)]


def class_scores(output, labels):
    """The (N, 21, H, W) class scores of a segmentation network's ``output`` (a tensor, or a dict with ``out``) for
    ``labels`` (N, H, W): upsampled bilinearly where the network scores at a lower resolution; ``SegevalError``
    with the numbers where it does not score VOC's classes for these images."""
    logits = output['out'] if isinstance(output, dict) else output
    num_classes = len(VOC_CLASSES)
    if not torch.is_tensor(logits) or logits.ndim != 4 or logits.shape[0] != labels.shape[0]:
        shape = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
        raise SegevalError(f'--segnet: gave {shape} for a batch of {labels.shape[0]} image(s); expected (N, '
                           f'{num_classes}, H, W) class scores (a tensor, or a dict with "out").')
    if logits.shape[1] != num_classes:
        used = int(labels[labels != IGNORE_INDEX].max()) if (labels != IGNORE_INDEX).any() else 0
        raise SegevalError(f'--segnet: scores {logits.shape[1]} classes per pixel, but the labels are VOC\'s '
                           f'{num_classes} classes (0-{num_classes - 1}; these images use classes up to {used}); '
                           f'expected a network of {num_classes} classes (VOC-label weights): the class indices of '
                           'another label set do not mean VOC\'s classes.')
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode='bilinear', align_corners=False)
    return logits


def segeval(pairs, denoisers, sigmas, segnet, device='cpu', batch_size=4, normalize=True):
    """``{(sigma, method): {'miou', 'pixel_accuracy', 'iou', 'psnr', 'images'}}`` for methods clean, noisy and each
    denoiser (``{name: nn.Module}``); sigma None for clean. ``images``: per image, its name and its own mIoU (over the
    classes in its labels or its prediction), pixel accuracy and PSNR, for paired comparisons."""
    segnet = segnet.to(device)
    mean = torch.tensor(IMAGENET_MEAN if normalize else (0., 0., 0.), device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD if normalize else (1., 1., 1.), device=device).view(1, 3, 1, 1)
    num_classes = len(VOC_CLASSES)
    confusions = defaultdict(lambda: torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device))
    per_image = defaultdict(list)
    groups = batches_by_size(pairs, batch_size)
    jobs = [(None, group) for group in groups] + [(sigma, group) for sigma in sigmas for group in groups]

    def segment(method, sigma, images, labels, clean, names):
        with torch.inference_mode():
            output = segnet((images - mean) / std)
        predictions = class_scores(output, labels).argmax(1)
        for i, name in enumerate(names):
            confusion = confusion_matrix(predictions[i], labels[i], num_classes)
            confusions[(sigma, method)] += confusion
            scores = segmentation_scores(confusion.cpu())
            if confusion.sum() == 0:  # no labelled pixel (all 255): the image has no score, rather than 0
                scores['pixel_accuracy'] = float('nan')
            psnr = float('nan') if clean is None else calculate_psnr(
                (images[i].permute(1, 2, 0).cpu().numpy() * 255).round(), clean[i], crop_border=0)
            per_image[(sigma, method)].append({'image': name, 'miou': scores['miou'],
                                               'pixel_accuracy': scores['pixel_accuracy'], 'psnr': psnr})

    for sigma, group in tqdm(jobs, unit='batch', desc='usaid-segeval'):
        read = [read_pair(*pairs[i]) for i in group]
        names = [osp.splitext(osp.basename(pairs[i][0]))[0] for i in group]
        labels = torch.from_numpy(np.stack([label for _, label in read])).to(device)
        clean = torch.from_numpy(np.stack([rgb for rgb, _ in read])).permute(0, 3, 1, 2).float().to(device)
        if sigma is None:
            segment('clean', None, to_8bit(clean), labels, None, names)
            continue
        references = [(rgb * 255).round() for rgb, _ in read]
        noisy = torch.from_numpy(np.stack([add_protocol_noise(rgb, sigma) for rgb, _ in read])).permute(
            0, 3, 1, 2).float().to(device)
        segment('noisy', sigma, to_8bit(noisy), labels, references, names)
        for name, net in denoisers.items():
            with torch.inference_mode():
                denoised = net(noisy)
            segment(name, sigma, to_8bit(denoised), labels, references, names)

    results = {}
    for key, confusion in confusions.items():
        psnrs = [row['psnr'] for row in per_image[key] if not np.isnan(row['psnr'])]
        results[key] = {**segmentation_scores(confusion.cpu()), 'psnr': float(np.mean(psnrs)) if psnrs else
                        float('nan'), 'images': per_image[key]}
    return results


def paired_rows(results, baseline):
    """For each sigma, method other than ``baseline`` (and clean) and per-image metric: the paired comparison with
    ``baseline`` (:func:`usaid.statistics.paired_comparison`; all three metrics: higher is better)."""
    paired = []
    for (sigma, method), scores in results.items():
        if sigma is None or method == baseline:
            continue
        reference = {row['image']: row for row in results[(sigma, baseline)]['images']}
        images = [row for row in scores['images'] if row['image'] in reference]
        for metric in PAIRED_METRICS:
            result = paired_comparison([reference[row['image']][metric] for row in images],
                                       [row[metric] for row in images])
            paired.append({'sigma': f'{sigma:g}', 'method': method, 'baseline': baseline, 'metric': metric,
                           'result': result})
    return paired


def write_results(results, out_dir, baseline=None):
    """``segeval.csv``, ``segeval_images.csv`` (each image's scores) and ``segeval.md``; with ``baseline``,
    ``segeval_paired.csv`` and its section of ``segeval.md``."""
    os.makedirs(out_dir, exist_ok=True)
    rows, image_rows = [], []
    for (sigma, method), scores in results.items():
        row = {'sigma': '' if sigma is None else f'{sigma:g}', 'method': method, 'miou': scores['miou'],
               'pixel_accuracy': scores['pixel_accuracy'], 'psnr': scores['psnr']}
        row.update({f'iou_{c}': v for c, v in zip(VOC_CLASSES, scores['iou'])})
        rows.append(row)
        image_rows += [{'sigma': row['sigma'], 'method': method, **image} for image in scores['images']]
    write_csv(rows, osp.join(out_dir, 'segeval.csv'))
    write_csv(image_rows, osp.join(out_dir, 'segeval_images.csv'))
    lines = ['| sigma | method | mIoU (%) | pixel accuracy (%) | PSNR (dB) |', '|---|---|---|---|---|']
    for row in rows:
        psnr = '' if np.isnan(row['psnr']) else f"{row['psnr']:.2f}"
        lines.append(f"| {row['sigma'] or '-'} | {row['method']} | {100 * row['miou']:.2f} | "
                     f"{100 * row['pixel_accuracy']:.2f} | {psnr} |")
    lines += ['', '| sigma | method | ' + ' | '.join(VOC_CLASSES) + ' |', '|---|---|' + '---|' * len(VOC_CLASSES)]
    for row in rows:
        ious = ['' if np.isnan(row[f'iou_{c}']) else f"{100 * row[f'iou_{c}']:.1f}" for c in VOC_CLASSES]
        lines.append(f"| {row['sigma'] or '-'} | {row['method']} | " + ' | '.join(ious) + ' |')
    if baseline is not None:
        lines += paired_section(paired_rows(results, baseline), osp.join(out_dir, 'segeval_paired.csv'), baseline,
                                ('sigma', 'method', 'baseline', 'metric'), "its own mIoU over the classes in its "
                                'labels or prediction, pixel accuracy, PSNR')
    with open(osp.join(out_dir, 'segeval.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return rows

"""Denoising before an unseen high-level task: image classification by a frozen classifier (``usaid-taskeval``).

Each image gets the test protocol's noise (``normal(0, sigma / 255)`` over the RGB float array, seeded with 0 per
image, unclipped), is denoised by each model at its own size, clipped and rounded to 8 bits (as if saved), and is
classified by a frozen network that never saw noise; ``clean`` and ``noisy`` are evaluated beside the denoisers. The
scores are top-1 and top-5 accuracy, overall and per class, and each image's own hits (for paired comparisons).
"""
import difflib
import os
from collections import defaultdict
from dataclasses import dataclass
from os import path as osp

import numpy as np
import torch
import torchvision
from torchvision.transforms import v2

from usaid.checkpoint import canonical_state_dict, check_fits
from usaid.data.data_util import add_protocol_noise
from usaid.evaluation import import_network, paired_section, to_8bit, write_csv
from usaid.image_io import read_image
from usaid.statistics import paired_comparison
from usaid.torchvision_weights import IMAGENET_MEAN, IMAGENET_STD, load_torchvision_weights

TOP_K = (1, 5)


@dataclass(frozen=True)
class Item:
    """One image to classify and its true class index."""
    path: str
    label: int


def image_folder_items(root):
    """``(items, class names)`` of a folder per class (torchvision's ``ImageFolder`` layout, classes sorted by name:
    ImageNet's validation set arranged by synset gives ImageNet's class indices)."""
    try:
        folder = torchvision.datasets.ImageFolder(root, allow_empty=True)
    except (FileNotFoundError, OSError) as error:
        raise ValueError(f'--images {root}: {error}; expected a folder with one subfolder of images per '
                         'class.') from None
    if not folder.samples:
        classes = ', '.join(folder.classes[:5]) or 'none'
        raise ValueError(f'--images {root}: no images in its class folders ({classes}); expected one subfolder of '
                         'images per class.')
    return [Item(path, label) for path, label in folder.samples], list(folder.classes)


def list_file_items(list_file, num_classes=None):
    """``(items, class names)`` of a list file: one ``path class_index`` per line (paths relative to the list file's
    folder; blank lines and ``#`` comments skipped); the classes are named by their index."""
    root = osp.dirname(osp.abspath(list_file))
    items = []
    with open(list_file) as f:
        for number, line in enumerate(f, 1):
            line = line.split('#', 1)[0].strip()
            if not line:
                continue
            path, _, label = line.rpartition(' ')
            if not path or not label.strip().isdigit():
                raise ValueError(f'{list_file}, line {number}: {line!r}; expected "path class_index".')
            path = osp.join(root, path.strip())
            if not osp.isfile(path):
                raise ValueError(f'{list_file}, line {number}: {path} does not exist.')
            items.append(Item(path, int(label)))
    if not items:
        raise ValueError(f'{list_file}: lists no images; expected lines "path class_index".')
    count = num_classes or max(item.label for item in items) + 1
    return items, [str(i) for i in range(count)]


@dataclass
class Classifier:
    """A frozen classifier and what it expects: ``transform`` takes a (3, H, W) float image in [0, 1];
    ``categories``: the names of its classes, where its weights name them (torchvision's)."""
    net: torch.nn.Module
    transform: object
    name: str
    categories: list | None = None

    def class_indices(self, class_names):
        """The classifier's index of each of the data's classes: by name where the data's class folders are named
        like its categories (``tench``, ``goldfish``, ...), else in order, which needs as many classes as it has (the
        1000 synsets of ImageNet's validation set, sorted, are ImageNet's order)."""
        if self.categories is None or len(class_names) == len(self.categories):
            return list(range(len(class_names)))
        lookup = {name.lower().replace('_', ' '): i for i, name in enumerate(self.categories)}
        unknown = [name for name in class_names if name.lower().replace('_', ' ') not in lookup]
        if unknown:
            raise ValueError(f'--classifier {self.name}: the data has {len(class_names)} classes and the classifier '
                             f'{len(self.categories)}, and {len(unknown)} class name(s) are none of its categories '
                             f'({", ".join(unknown[:3])}); expected all {len(self.categories)} classes in its order '
                             f'(ImageNet\'s synsets, sorted) or classes named like its categories '
                             f'({", ".join(self.categories[:3])}, ...).')
        return [lookup[name.lower().replace('_', ' ')] for name in class_names]


def build_classifier(name, weights_file=None):
    """torchvision's classifier ``name`` with its ImageNet weights (from torchvision's cache, downloaded when possible,
    or ``weights_file``) and its own preprocessing (resize, centre crop, normalisation); or ``package.module:callable``,
    which gets the image at its own size, normalised with ImageNet's statistics."""
    if ':' in name:
        net = import_network(name, '--classifier')
        if weights_file:
            net.load_state_dict(canonical_state_dict(weights_file, allow_bare=True, net=net))
        transform, categories = v2.Normalize(IMAGENET_MEAN, IMAGENET_STD), None
    else:
        try:
            weights = torchvision.models.get_model_weights(name).DEFAULT
        except (ValueError, KeyError):
            known = torchvision.models.list_models(module=torchvision.models)
            close = difflib.get_close_matches(name, known, n=3)
            hint = f'did you mean {" or ".join(close)}? ' if close else ''
            raise ValueError(f'--classifier {name}: not one of torchvision\'s classifiers; {hint}expected a name '
                             'of torchvision.models.list_models(module=torchvision.models), or '
                             'package.module:callable.') from None
        state = canonical_state_dict(weights_file, allow_bare=True) if weights_file else load_torchvision_weights(
            weights, f'--classifier {name}', 'pass --classifier-weights FILE', ValueError)
        net = torchvision.models.get_model(name, weights=None)
        check_fits(net, state, weights_file or name)
        net.load_state_dict(state)
        transform = weights.transforms()
        categories = weights.meta.get('categories')
    return Classifier(net.eval().requires_grad_(False), transform, name, categories)


def taskeval(items, class_names, denoisers, sigmas, classifier, device='cpu', batch_size=16, progress=None):
    """``{(sigma, method): [{'image', 'label', 'prediction', 'top1', 'top5'}, ...]}``: each image's hits, for
    methods ``clean`` (sigma None), ``noisy`` and each denoiser (``{name: nn.Module}``). ``label`` is the data's class
    index, ``prediction`` the classifier's (:meth:`Classifier.class_indices` maps one to the other)."""
    net = classifier.net.to(device)
    indices = classifier.class_indices(class_names)
    results = defaultdict(list)
    pending = defaultdict(list)  # (sigma, method) -> [(item, classifier input)]

    def classify(key):
        inputs = pending.pop(key)
        by_shape = defaultdict(list)
        for item, tensor in inputs:
            by_shape[tuple(tensor.shape)].append((item, tensor))
        for group in by_shape.values():
            try:
                with torch.inference_mode():
                    logits = net(torch.stack([tensor for _, tensor in group]).to(device))
            except Exception as error:  # noqa: BLE001  (the user's network may raise anything)
                raise ValueError(f'--classifier {classifier.name}: failed on a batch of {len(group)} image(s) of '
                                 f'{tuple(group[0][1].shape)} ({type(error).__name__}: {error}).') from None
            if not torch.is_tensor(logits) or logits.ndim != 2 or logits.shape[1] <= max(indices):
                shape = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
                raise ValueError(f'--classifier {classifier.name}: gave {shape} for {len(group)} image(s); expected '
                                 f'an (N, classes) tensor of scores with at least the {max(indices) + 1} classes of '
                                 'the data.')
            logits = logits.float()
            if not torch.isfinite(logits).all():
                raise ValueError(f'--classifier {classifier.name}: gave NaN or infinite scores; expected finite ones '
                                 '(a ranking of NaN is meaningless).')
            ranked = logits.topk(min(max(TOP_K), logits.shape[1]), dim=1).indices.cpu()
            for (item, _), order in zip(group, ranked):
                target = indices[item.label]
                results[key].append({'image': osp.relpath(item.path), 'label': item.label,
                                     'prediction': int(order[0]),
                                     **{f'top{k}': int(target in order[:k].tolist()) for k in TOP_K}})

    def add(key, item, image):
        pending[key].append((item, classifier.transform(to_8bit(image))))
        if len(pending[key]) >= batch_size:
            classify(key)

    for item in items:
        rgb = read_image(item.path)[0].astype(np.float64)  # RGB in [0, 1], upright; gray as three channels
        clean = torch.from_numpy(rgb).permute(2, 0, 1).float()
        add((None, 'clean'), item, clean)
        for sigma in sigmas:
            noisy = torch.from_numpy(add_protocol_noise(rgb, sigma)).permute(2, 0, 1).float()
            add((sigma, 'noisy'), item, noisy)
            for name, denoiser in denoisers.items():
                with torch.inference_mode():
                    denoised = denoiser(noisy[None].to(device))[0].cpu()
                add((sigma, name), item, denoised)
        if progress is not None:
            progress.update(1)
    for key in list(pending):
        classify(key)
    return dict(results)


def summary_rows(results, class_names):
    """The overall and per-class accuracies of :func:`taskeval`'s results: ``(overall rows, per-class rows)``."""
    overall, per_class = [], []
    for (sigma, method), rows in results.items():
        sigma_text = '' if sigma is None else f'{sigma:g}'
        overall.append({'sigma': sigma_text, 'method': method, 'images': len(rows),
                        **{f'top{k}': float(np.mean([r[f'top{k}'] for r in rows])) for k in TOP_K}})
        by_label = defaultdict(list)
        for row in rows:
            by_label[row['label']].append(row)
        for label in sorted(by_label):
            hits = by_label[label]
            per_class.append({'sigma': sigma_text, 'method': method, 'class': class_names[label],
                              'images': len(hits),
                              **{f'top{k}': float(np.mean([r[f'top{k}'] for r in hits])) for k in TOP_K}})
    return overall, per_class


def paired_rows(results, baseline):
    """Each method but ``baseline`` (and clean) against ``baseline``, per sigma and top-k, image by image."""
    paired = []
    for (sigma, method), rows in results.items():
        if sigma is None or method == baseline:
            continue
        reference = {row['image']: row for row in results[(sigma, baseline)]}
        for k in TOP_K:
            metric = f'top{k}'
            result = paired_comparison([reference[row['image']][metric] for row in rows],
                                       [row[metric] for row in rows])
            paired.append({'sigma': f'{sigma:g}', 'method': method, 'baseline': baseline, 'metric': metric,
                           'result': result})
    return paired


def write_results(results, class_names, out_dir, baseline=None):
    """The CSVs and ``taskeval.md``; returns the overall rows."""
    os.makedirs(out_dir, exist_ok=True)
    overall, per_class = summary_rows(results, class_names)
    write_csv(overall, osp.join(out_dir, 'taskeval.csv'))
    write_csv(per_class, osp.join(out_dir, 'taskeval_classes.csv'))
    write_csv([{'sigma': '' if sigma is None else f'{sigma:g}', 'method': method, **row}
               for (sigma, method), rows in results.items() for row in rows], osp.join(out_dir, 'taskeval_images.csv'))
    lines = ['| sigma | method | images | top-1 (%) | top-5 (%) |', '|---|---|---|---|---|']
    lines += [f"| {row['sigma'] or '-'} | {row['method']} | {row['images']} | {100 * row['top1']:.2f} | "
              f"{100 * row['top5']:.2f} |" for row in overall]
    if baseline is not None:
        lines += paired_section(paired_rows(results, baseline), osp.join(out_dir, 'taskeval_paired.csv'), baseline,
                                ('sigma', 'method', 'baseline', 'metric'), 'its top-1 and top-5 hit, 1 or 0')
    with open(osp.join(out_dir, 'taskeval.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return overall

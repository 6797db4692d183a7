"""``usaid-taskeval --images FOLDER -w NAME=MODEL ... -s 15 25 50``: classification accuracy after denoising.

The paper's third claim (generalisation to unseen high-level tasks), as an evaluation of any denoiser with any
frozen classifier (:mod:`usaid.taskeval`): the test protocol's noise per image, each denoiser, ``clean`` and
``noisy`` beside them, top-1 and top-5 accuracy overall and per class.

Data: a folder per class (torchvision's ``ImageFolder`` layout; ImageNet's validation set arranged by synset gives
ImageNet's class indices), or ``--list FILE`` with ``path class_index`` lines. Classifier (``--classifier``): any of
torchvision's (``resnet50``, ``vgg16``, ``mobilenet_v3_large``, ...) with its ImageNet weights and its own
preprocessing (from torchvision's cache ``$TORCH_HOME/hub/checkpoints``, downloaded when possible, or
``--classifier-weights FILE``), or ``package.module:callable`` returning an ``nn.Module`` that maps ImageNet-normalised
images at their own size to (N, classes) scores.

Written to OUT: ``taskeval.csv`` (sigma, method, images, top-1, top-5), ``taskeval_classes.csv`` (the same per class),
``taskeval_images.csv`` (each image's prediction and hits) and ``taskeval.md``; with ``--baseline NAME`` (a model, or
``noisy``), each other method compared with it image by image (:mod:`usaid.statistics`) in ``taskeval_paired.csv``
and a section of ``taskeval.md``.
"""
import argparse
import sys
from os import path as osp

from tqdm import tqdm

from usaid.arguments import check_at_least, check_sigma, resolve_device
from usaid.errors import CheckpointError, USAIDError
from usaid.evaluation import check_baseline, load_denoisers, parse_models
from usaid.inference import add_inference_arguments, inference_options
from usaid.paths import check_writable
from usaid.taskeval import build_classifier, image_folder_items, list_file_items, taskeval, write_results


def main(argv=None):
    parser = argparse.ArgumentParser(prog='usaid-taskeval', description=__doc__.splitlines()[0])
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument('--images', help='a folder with one subfolder of images per class (ImageFolder layout)')
    data.add_argument('--list', help='a file of "path class_index" lines (paths relative to the file)')
    parser.add_argument('--num-classes', type=int, help='classes of a --list (default: the largest index + 1)')
    parser.add_argument('-w', '--model', action='append', default=[], metavar='NAME=MODEL',
                        help='a denoiser: a released model (usaid, ssaid, cdncnn-b), a checkpoint, an option file '
                        'or an experiment folder (repeatable)')
    parser.add_argument('-s', '--sigma', type=float, nargs='+', default=[15, 25, 50], help='noise levels (0-255)')
    parser.add_argument('--classifier', default='resnet50', help="one of torchvision's classifiers (resnet50, vgg16, "
                        'mobilenet_v3_large, ...) or package.module:callable')
    parser.add_argument('--classifier-weights', help="a local state dict for --classifier (default: torchvision's "
                        'cache)')
    parser.add_argument('--baseline', metavar='NAME', help='compare every other method with this one (a model NAME, '
                        'or noisy) image by image: mean difference, bootstrap 95%% interval, Wilcoxon p-value')
    parser.add_argument('--batch-size', type=int, default=16, help='images per classifier batch')
    parser.add_argument('--limit', type=int, help='only the first N images (a quick run)')
    parser.add_argument('--device', default='auto', help='auto (a GPU when there is one), cpu, cuda, cuda:1, ...')
    parser.add_argument('-o', '--output', default='results/taskeval')
    add_inference_arguments(parser)
    args = parser.parse_args(argv)
    try:  # the checks that cost nothing first: a long evaluation must not end in a mistake found at its end
        for sigma in args.sigma:
            check_sigma(sigma, '--sigma')
        check_at_least(args.batch_size, 1, '--batch-size')
        for option, value in (('--limit', args.limit), ('--num-classes', args.num_classes)):
            if value is not None:
                check_at_least(value, 1, option)
        device = resolve_device(args.device)
        if osp.exists(args.output) and not osp.isdir(args.output):
            raise ValueError(f'--output {args.output}: exists and is a file; expected a folder.')
        check_writable(args.output, '--output')
        items, class_names = (image_folder_items(args.images) if args.images
                              else list_file_items(args.list, args.num_classes))
        outside = [item for item in items if item.label >= len(class_names)]
        if outside:
            raise ValueError(f'--list {args.list}: {outside[0].path} has class {outside[0].label}, but --num-classes '
                             f'is {len(class_names)}; expected indices from 0 to {len(class_names) - 1}.')
        items = items[:args.limit] if args.limit else items
        specs = parse_models(args.model)
        check_baseline(args.baseline, specs)
        denoisers = load_denoisers(specs, device, inference_options(args))
        classifier = build_classifier(args.classifier, args.classifier_weights)
        with tqdm(total=len(items), unit='image', desc='usaid-taskeval') as progress:
            results = taskeval(items, class_names, denoisers, args.sigma, classifier, device, args.batch_size,
                               progress)
    except (USAIDError, ValueError, CheckpointError, OSError) as error:
        sys.exit(f'usaid-taskeval: {error}')
    write_results(results, class_names, args.output, args.baseline)
    with open(osp.join(args.output, 'taskeval.md')) as f:
        print(f.read())
    print(f'{len(items)} images; written to {args.output}')


if __name__ == '__main__':
    main()

"""``usaid-segeval --voc VOC2012 -w NAME=MODEL ... -s 15 25 50``: segmentation quality after denoising (mIoU).

The evaluation itself (data layouts, segmentation networks, scores, tables, paired statistics) is
:mod:`usaid.segeval`.
"""
import argparse
import os.path as osp
import sys

from usaid.arguments import check_at_least, check_sigma, resolve_device
from usaid.errors import CheckpointError, USAIDError
from usaid.evaluation import check_baseline, load_denoisers, parse_models
from usaid.inference import add_inference_arguments, inference_options
from usaid.paths import check_writable
from usaid.segeval import (TORCHVISION_SEGNETS, SegevalError, build_segnet, folder_pairs, segeval, voc_pairs,
                           write_results)

def main(argv=None):
    parser = argparse.ArgumentParser(prog='usaid-segeval', description=__doc__.splitlines()[0])
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument('--voc', help='a VOC root (JPEGImages, SegmentationClass, ImageSets/Segmentation)')
    data.add_argument('--images', help='a folder of images (with --labels)')
    parser.add_argument('--labels', help='a folder of label PNGs named like the images')
    parser.add_argument('--split', default='val', help='the VOC list to read (default: val)')
    parser.add_argument('-w', '--model', action='append', default=[], metavar='NAME=MODEL',
                        help='a denoiser: a released model (usaid, ssaid, cdncnn-b), a checkpoint, an option file '
                        'or an experiment folder (repeatable)')
    parser.add_argument('-s', '--sigma', type=float, nargs='+', default=[15, 25, 50], help='noise levels (0-255)')
    parser.add_argument('--segnet', default='deeplabv3_resnet101',
                        help=f'{", ".join(TORCHVISION_SEGNETS)}, or package.module:callable')
    parser.add_argument('--segnet-weights', help='a local state dict for --segnet (default: torchvision\'s cache)')
    parser.add_argument('--no-segnet-norm', dest='normalize', action='store_false',
                        help='feed [0, 1] images without ImageNet normalisation (for networks trained so)')
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--limit', type=int, help='only the first N images (a quick run)')
    parser.add_argument('--device', default='auto', help='auto (a GPU when there is one), cpu, cuda, cuda:1, ...')
    parser.add_argument('--baseline', metavar='NAME', help='compare every other method with this one (a model NAME, '
                        'or noisy) image by image: mean difference, bootstrap 95%% interval, Wilcoxon p-value')
    parser.add_argument('-o', '--output', default='results/segeval')
    add_inference_arguments(parser)
    args = parser.parse_args(argv)
    try:  # the checks that cost nothing first: a long evaluation must not end in a mistake found at its end
        for sigma in args.sigma:
            check_sigma(sigma, '--sigma')
        check_at_least(args.batch_size, 1, '--batch-size')
        if args.limit is not None:
            check_at_least(args.limit, 1, '--limit')
        device = resolve_device(args.device)
        if osp.exists(args.output) and not osp.isdir(args.output):
            raise SegevalError(f'--output {args.output}: exists and is a file; expected a folder for segeval.csv and '
                               'segeval.md.')
        check_writable(args.output, '--output')
        if args.voc:
            pairs = voc_pairs(args.voc, args.split)
        elif not args.labels:
            raise SegevalError('--images needs --labels.')
        else:
            pairs = folder_pairs(args.images, args.labels)
        pairs = pairs[:args.limit] if args.limit else pairs
        specs = parse_models(args.model)
        check_baseline(args.baseline, specs)
        denoisers = load_denoisers(specs, device, inference_options(args))
        segnet = build_segnet(args.segnet, args.segnet_weights)
        results = segeval(pairs, denoisers, args.sigma, segnet, device, args.batch_size, args.normalize)
    except (USAIDError, ValueError, CheckpointError, OSError) as error:
        sys.exit(f'usaid-segeval: {error}')
    write_results(results, args.output, args.baseline)
    with open(osp.join(args.output, 'segeval.md')) as f:
        print(f.read().split('\n\n')[0])
    names = ('segeval.csv', 'segeval_images.csv') + (('segeval_paired.csv',) if args.baseline else ()) + ('segeval.md',)
    written = ', '.join(osp.join(args.output, name) for name in names)
    print(f'{len(pairs)} images; written: {written}')


if __name__ == '__main__':
    main()

"""``usaid-reproduce -o OUT [--testsets DIR] [--voc DIR] [--imagenet DIR]``: the paper's experiments, one report.

Denoising tables on every standard test set found in ``--testsets`` (default ``datasets``: Kodak24, CBSD68, McMaster,
Urban100), segmentation after denoising on VOC 2012 ``val`` (``--voc``), classification after denoising on an
ImageNet-style folder (``--imagenet``); each model against ``--baseline`` with intervals. ``OUT/report.md`` says what
was run, what was skipped and how to get what is missing. A rerun does only what changed (:mod:`usaid.reproduce`).
"""
import argparse
import sys

from usaid.arguments import check_at_least, check_sigma, resolve_device
from usaid.errors import USAIDError
from usaid.evaluation import parse_models
from usaid.inference import add_inference_arguments, inference_options
from usaid.paths import check_writable
from usaid.reproduce import DEFAULT_MODELS, reproduce


def main(argv=None):
    parser = argparse.ArgumentParser(prog='usaid-reproduce', description=__doc__.splitlines()[0])
    parser.add_argument('-o', '--output', default='results/reproduce', help='folder for report.md and its parts')
    parser.add_argument('--testsets', default='datasets', help='the folder holding Kodak24, CBSD68, McMaster, '
                        'Urban100 (those present are used)')
    parser.add_argument('--voc', help='the VOC2012 folder (JPEGImages, SegmentationClass, ImageSets)')
    parser.add_argument('--imagenet', help='a folder with one subfolder of images per class')
    parser.add_argument('-m', '--model', action='append', metavar='NAME=MODEL', help='a denoiser (default: '
                        + ', '.join(f'{n}={s}' for n, s in DEFAULT_MODELS.items()) + ')')
    parser.add_argument('--baseline', default='CDnCNN-B', help='the model every other is compared with')
    parser.add_argument('-s', '--sigma', type=float, nargs='+', default=[15, 25, 50], help='noise levels (0-255)')
    parser.add_argument('--segnet', default='deeplabv3_resnet101', help='as usaid-segeval --segnet')
    parser.add_argument('--classifier', default='resnet50', help='as usaid-taskeval --classifier')
    parser.add_argument('--limit', type=int, help='only the first N images of VOC and ImageNet (a quick run)')
    parser.add_argument('--device', default='auto', help='auto (a GPU when there is one), cpu, cuda, cuda:1, ...')
    add_inference_arguments(parser)
    args = parser.parse_args(argv)
    try:
        for sigma in args.sigma:
            check_sigma(sigma, '--sigma')
        if args.limit is not None:
            check_at_least(args.limit, 1, '--limit')
        device = resolve_device(args.device)
        check_writable(args.output, '--output')
        models = parse_models(args.model) if args.model else None
        ran, skipped = reproduce(args.output, args.testsets, args.voc, args.imagenet, models, args.sigma, args.baseline,
                                 args.segnet, args.classifier, args.limit, device, inference_options(args))
    except (USAIDError, ValueError, OSError) as error:
        sys.exit(f'usaid-reproduce: {error}')
    except KeyboardInterrupt:
        sys.exit('usaid-reproduce: interrupted; finished steps are kept and reused by the next run, the interrupted '
                 'one runs again.')
    for step, what in ran.items():
        print(f'ran {step}: {what}')
    for step, why in skipped.items():
        print(f'skipped {step}: {why}')
    print(f'report: {args.output}/report.md')


if __name__ == '__main__':
    main()

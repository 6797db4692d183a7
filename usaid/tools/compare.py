"""``usaid-compare -m NAME=MODEL ... -d DATASET ... -s 15 25 50 -o OUT``: several models on the same test sets.

The comparison itself (jobs, cache, tables, figures, paired statistics) is :mod:`usaid.comparison`.
"""
import argparse
import os.path as osp
import sys

from usaid.comparison import compare
from usaid.errors import USAIDError
from usaid.inference import add_inference_arguments, inference_options

def main(argv=None):
    parser = argparse.ArgumentParser(prog='usaid-compare', description=__doc__.splitlines()[0])
    parser.add_argument('-m', '--model', action='append', required=True, metavar='NAME=MODEL',
                        help='a name and a released model (usaid, ssaid, cdncnn-b), checkpoint, option file or '
                        'experiment folder (repeat for each model)')
    parser.add_argument('-d', '--dataset', action='append', required=True, help='a folder of clean test images')
    parser.add_argument('-s', '--sigma', type=float, nargs='+', default=[25], help='noise levels (0-255 scale)')
    parser.add_argument('-o', '--output', default='results/compare', help='folder for the table, CSV and figures')
    parser.add_argument('--niqe', choices=('auto', 'on', 'off'), default='auto',
                        help='auto: where every image holds two 96 x 96 blocks (e.g. 192 x 96)')
    parser.add_argument('--lpips', choices=('auto', 'on', 'off'), default='auto', help='LPIPS (AlexNet), lower is '
                        'better; auto: when the lpips package (the perceptual extra) and the AlexNet weights are here')
    parser.add_argument('--lpips-weights', help="a local file of torchvision's AlexNet ImageNet weights for LPIPS")
    parser.add_argument('--crop-sigma', type=float, help='the sigma of compare_crops.png (default: the middle one)')
    parser.add_argument('--baseline', metavar='NAME', help='compare every other model with this one image by image: '
                        'mean difference, bootstrap 95%% interval, Wilcoxon p-value (compare_paired.csv)')
    parser.add_argument('--no-cache', dest='cache', action='store_false', help='recompute every job')
    add_inference_arguments(parser)
    args = parser.parse_args(argv)
    models = {}
    for entry in args.model:
        name, sep, spec = entry.partition('=')
        if not sep or not name or not spec:
            sys.exit(f'usaid-compare: --model {entry!r}: expected NAME=MODEL')
        if name in models:
            sys.exit(f'usaid-compare: --model {name}={models[name]} and --model {entry}: two models named {name!r}, '
                     'and the table tells models by their name; expected a distinct NAME for each model.')
        models[name] = spec
    try:
        rows, reused = compare(models, args.dataset, args.sigma, args.output, args.cache, args.niqe, args.crop_sigma,
                               inference_options(args), args.baseline, args.lpips, args.lpips_weights)
    except (ValueError, OSError, USAIDError) as error:
        sys.exit(f'usaid-compare: {error}')
    with open(osp.join(args.output, 'compare.md')) as f:
        print(f.read())
    print(f'{reused} of {len({(r["model"], r["dataset"], r["sigma"]) for r in rows})} jobs reused from the cache.')
    written = ('compare.md', 'compare.csv', 'compare_images.csv') + (('compare_paired.csv',) if args.baseline else ())
    written += ('compare_psnr.png', 'compare_crops.png')
    print(f'Written: {", ".join(osp.join(args.output, name) for name in written)}')


if __name__ == '__main__':
    main()

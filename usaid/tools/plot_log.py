"""``usaid-plot-log RUN [RUN ...] -o curves.png``: training losses and validation metrics against iterations.

A RUN is a BasicSR training log (``train_<name>_<time>.log``), an experiment folder (its newest log is read), or a
TensorBoard run folder (``tb_logger/<name>``, with ``events.out.tfevents.*``). Several runs are overlaid: one colour
per run, one line style per loss term. Any BasicSR model's log works, not only U-SAID's.

TensorBoard gives every value at its exact iteration. BasicSR's text log does not print the iteration of a
validation; it is taken from the last training line printed before it, which is exact when ``val_freq`` is a
multiple of ``logger: print_freq``.
"""
import argparse
import glob
import os
import re
import sys
from collections import defaultdict
from os import path as osp

import matplotlib

matplotlib.use('Agg')  # files only: no display needed

import matplotlib.pyplot as plt  # noqa: E402

# BasicSR's MessageLogger: "[name..][epoch:  0, iter:   1,000, lr:(1.000e-03,)] [eta: ...] l_pix: 5.8385e+00 ..."
_TRAIN_LINE = re.compile(r'\]\[epoch:\s*\d+, iter:\s*([\d,]+), lr:\(([^)]*)\)\].*?\]\s(.*)$')
_VALUE = re.compile(r'([\w/]+): ([-+]?[\d.]+(?:[eE][-+]?\d+)?|nan|inf)')
# BaseModel._log_validation_metric_values: "Validation <dataset>" then "\t # psnr: 25.1234\tBest: ..."
_VALIDATION = re.compile(r'Validation (.+)$')
_METRIC = re.compile(r'^\s*# (\w+): ([-+]?[\d.]+)')


def read_log(path):
    """``{'losses': {name: [(iter, value)]}, 'metrics': {'<dataset>/<metric>': [(iter, value)]}}`` of a BasicSR
    training log (``lr`` is kept with the losses' iterations under ``lr``)."""
    curves = {'losses': defaultdict(list), 'metrics': defaultdict(list)}
    current_iter, dataset = 0, None
    with open(path, errors='replace') as f:
        for line in f:
            train = _TRAIN_LINE.search(line)
            if train:
                current_iter, dataset = int(train.group(1).replace(',', '')), None
                curves['losses']['lr'].append((current_iter, float(train.group(2).split(',')[0])))
                for name, value in _VALUE.findall(train.group(3)):
                    if name.startswith('l_'):
                        curves['losses'][name].append((current_iter, float(value)))
                continue
            validation = _VALIDATION.search(line)
            if validation:
                dataset = validation.group(1).strip()
                continue
            metric = _METRIC.match(line)
            if metric and dataset:
                curves['metrics'][f'{dataset}/{metric.group(1)}'].append((current_iter, float(metric.group(2))))
    return curves


def read_tensorboard(folder):
    """The same curves from a TensorBoard run: ``losses/*`` and ``lr`` scalars, and ``metrics/<dataset>/<metric>``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(folder, size_guidance={'scalars': 0}).Reload()
    curves = {'losses': defaultdict(list), 'metrics': defaultdict(list)}
    for tag in events.Tags()['scalars']:
        points = [(e.step, e.value) for e in events.Scalars(tag)]
        if tag.startswith('losses/') or tag == 'lr':
            curves['losses'][tag.split('/', 1)[-1]] = points
        elif tag.startswith('metrics/'):
            curves['metrics'][tag.split('/', 1)[1]] = points
    return curves


def read_run(run):
    """Curves of a log file, an experiment folder (its newest ``train_*.log``) or a TensorBoard folder."""
    if osp.isfile(run):
        return read_log(run)
    if glob.glob(osp.join(run, 'events.out.tfevents.*')):
        return read_tensorboard(run)
    logs = sorted(glob.glob(osp.join(run, 'train_*.log')), key=os.path.getmtime)
    if logs:
        return read_log(logs[-1])
    raise ValueError(f'{run}: neither a BasicSR training log, nor a folder with train_*.log, nor a TensorBoard run '
                     '(events.out.tfevents.*).')


def plot(runs, out_path):
    """``runs``: ``{name: curves}``. Left: the loss terms (log scale); right: the validation metrics."""
    fig, (losses_ax, metrics_ax) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100, layout='constrained')
    styles = ['-', '--', ':', '-.']
    for colour, (name, curves) in zip(plt.get_cmap('tab10').colors * 10, runs.items()):
        terms = [t for t in curves['losses'] if t != 'lr']
        for style, term in zip(styles * 10, terms):
            steps, values = zip(*curves['losses'][term])
            losses_ax.plot(steps, values, style, color=colour, label=f'{name}: {term}')
        for style, metric in zip(styles * 10, curves['metrics']):
            steps, values = zip(*curves['metrics'][metric])
            metrics_ax.plot(steps, values, style, marker='o', color=colour, label=f'{name}: {metric}')
    losses_ax.set(xlabel='iteration', ylabel='loss', title='training losses', yscale='log')
    metrics_ax.set(xlabel='iteration', ylabel='value', title='validation')
    for ax in (losses_ax, metrics_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.savefig(out_path)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(prog='usaid-plot-log', description=__doc__.splitlines()[0])
    parser.add_argument('runs', nargs='+', help='training logs, experiment folders or TensorBoard run folders')
    parser.add_argument('--names', nargs='+', help='a legend name per run (default: the folder or file name)')
    parser.add_argument('-o', '--output', default='training_curves.png', help='the PNG to write')
    args = parser.parse_args(argv)
    names = args.names or [osp.basename(osp.normpath(run)) for run in args.runs]
    if len(names) != len(args.runs):
        sys.exit(f'usaid-plot-log: --names: {len(names)} names for {len(args.runs)} runs; expected one per run.')
    try:
        runs = {name: read_run(run) for name, run in zip(names, args.runs)}
    except (ValueError, OSError) as error:
        sys.exit(f'usaid-plot-log: {error}')
    plot(runs, args.output)
    for name, curves in runs.items():
        last = {k: v[-1][1] for k, v in curves['metrics'].items()}
        print(f"{name}: {len(curves['losses'].get('l_total', curves['losses'].get('l_pix', [])))} loss points, "
              f'last validation {last}')
    print(f'Figure: {osp.abspath(args.output)}')


if __name__ == '__main__':
    main()

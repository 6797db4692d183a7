"""What the evaluation tools (``usaid-compare``, ``usaid-segeval``, ``usaid-taskeval``) share: denoisers named on the
command line, frozen networks given as ``package.module:callable``, the test protocol's noisy 8-bit images, CSV
files."""
import csv
import importlib

from torch import nn

from usaid.denoiser import load_denoiser, resolve_model
from usaid.inference import InferenceNetwork
from usaid.statistics import CONFIDENCE, MIN_IMAGES, RESAMPLES, SEED, paired_fields

REFERENCE_METHODS = ('clean', 'noisy')  # evaluated beside the denoisers: no noise, and noise without a denoiser


def parse_models(entries, option='--model'):
    """``{NAME: MODEL}`` of ``NAME=MODEL`` entries; ``ValueError`` for an entry without a name, a name of
    :data:`REFERENCE_METHODS`, or a name given twice (results tell models by their name)."""
    specs = {}
    for entry in entries:
        name, sep, spec = entry.partition('=')
        if not sep or not name or not spec or name in REFERENCE_METHODS:
            raise ValueError(f'{option} {entry!r}: expected NAME=MODEL with a NAME other than '
                             f'{" and ".join(REFERENCE_METHODS)}.')
        if name in specs:
            raise ValueError(f'{option} {entry!r}: a second model named {name!r}, and the results tell models by '
                             'their name; expected a distinct NAME for each model.')
        specs[name] = spec
    return specs


def check_baseline(baseline, specs, option='--baseline'):
    """``baseline`` if it names a method the results will hold (a model, or ``noisy``), else ``ValueError``."""
    methods = ['noisy', *specs]
    if baseline is not None and baseline not in methods:
        raise ValueError(f'{option} {baseline}: not one of the methods ({", ".join(methods)}); expected the NAME of a '
                         '--model, or noisy.')
    return baseline


def load_denoisers(specs, device, inference):
    """``{name: InferenceNetwork}`` of ``{name: MODEL}`` (:func:`usaid.denoiser.resolve_model`: a released model's
    name, a checkpoint, an option file or an experiment folder), in eval mode on ``device``."""
    denoisers = {}
    for name, spec in specs.items():
        network_opt, weights, param_key = resolve_model(spec)
        denoisers[name] = InferenceNetwork(load_denoiser(weights, network_opt, device, param_key or 'params_ema'),
                                           **inference)
    return denoisers


def import_network(spec, option):
    """The ``nn.Module`` that ``package.module:callable`` returns when called without arguments; ``ValueError``
    naming ``option`` otherwise."""
    module, _, attr = spec.partition(':')
    try:
        net = getattr(importlib.import_module(module), attr)()
    except (ImportError, AttributeError) as error:
        raise ValueError(f'{option} {spec}: cannot be imported ({error}); expected package.module:callable.') from None
    if not isinstance(net, nn.Module):
        raise ValueError(f'{option} {spec}: returned a {type(net).__name__}; expected an nn.Module.')
    return net


def to_8bit(image):
    """What a network after the denoiser receives: the image clipped to [0, 1] and rounded to 8 bits, as if saved
    and reloaded."""
    return image.clamp(0, 1).mul(255).round().div(255)


def write_csv(rows, path):
    """``rows`` (dicts) as a CSV with the union of their keys as columns, in order of appearance."""
    fields = list(dict.fromkeys(key for row in rows for key in row)) or ['method']
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def paired_section(paired, csv_path, baseline, columns, per_image):
    """Write the paired comparisons ``paired`` (rows of identifying ``columns`` and ``result``, a
    :class:`~usaid.statistics.PairedComparison`) to ``csv_path``; return the Markdown section that shows them.
    ``per_image`` says what an image's value is, for the section's first sentence."""
    write_csv([{key: row[key] for key in columns} | paired_fields(row['result']) for row in paired], csv_path)
    lines = ['', f'Paired with {baseline}, image by image ({per_image}): mean difference (each minus {baseline}) with '
             f'its {CONFIDENCE:.0%} bootstrap interval (BCa, {RESAMPLES} resamples, seed {SEED}), two-sided Wilcoxon '
             f'signed-rank p-value, and the verdict (the interval excludes 0, read in the metric\'s direction; none '
             f'under {MIN_IMAGES} images).', '',
             '| ' + ' | '.join(columns) + ' | images | difference [95 % CI] | p | verdict |',
             '|' + '---|' * (len(columns) + 4)]
    for row in paired:
        difference, p_value = row['result'].cells(3 if row['metric'] in ('psnr', 'niqe', 'lpips') else 4)
        cells = [f'{row[key]:g}' if isinstance(row[key], float) else str(row[key]) for key in columns]
        lines.append(f'| {" | ".join(cells)} | {row["result"].images} | {difference} | {p_value} | '
                     f'{row["result"].verdict} |')
    return lines if paired else []

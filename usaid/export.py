"""Exports of a denoiser for programs outside this package (``usaid-export``'s library).

Formats (:data:`FORMATS`):

- ``spandrel``: the state dict that spandrel (chaiNNer, ComfyUI) detects. U-SAID's DnCNN goes into KAIR's DnCNN
  layout (``model.{0,2,...}.weight/bias``, each convolution with a bias, BatchNorm folded into it); any other network
  keeps its BasicSR layout, which spandrel detects for the architectures it knows.
- ``onnx``: torch's ONNX exporter (``torch.onnx.export(dynamo=True)``), batch, height and width dynamic; float32, or
  float16 inputs, weights and outputs with ``fp16``.
- ``safetensors``: BasicSR's checkpoint layout (``params`` and ``params_ema`` kept apart, see
  :func:`usaid.checkpoint.safetensors_bytes`), with the ``network_g`` options in its metadata, so that every tool
  and ``path: pretrain_network_g`` load it without an option file.
- ``pt2``: ``torch.export`` with dynamic batch, height and width; ``torch.export.load(path).module()`` runs it.

A network that takes only sizes that are multiples of some number (SwinIR's window) is exported with the padding
and cropping that :class:`~usaid.inference.InferenceNetwork` applies, so that ONNX and pt2 take any size from that
multiple up. Every export is checked before anything is written: the exported bytes are loaded by the program that
will run them (spandrel, onnxruntime, ``torch.export.load``, this package's loader), run on two probe batches of
noisy images, and compared with the source network; an export that computes something else is refused, and the file
is written atomically (:func:`usaid.checkpoint.write_atomically`).
"""
import contextlib
import copy
import inspect
import io
import logging
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from os import path as osp

import torch
from basicsr.archs import build_network
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from usaid.archs.usaid_arch import USAID
from usaid.checkpoint import (canonical_state_dict, load_checkpoint, safetensors_bytes, stored_param_key,
                              write_atomically)
from usaid.denoiser import build_denoiser_network, resolve_model
from usaid.extras import require
from usaid.network_probe import PROBE_SIZE, size_multiple
from usaid.paths import check_writable
from usaid.released import RELEASED


@dataclass(frozen=True)
class ExportFormat:
    """What one format writes: its file extensions (the first is the usual one), the extra of this package that
    brings the modules it needs, and what loads it (and checks it before it is written)."""
    extensions: tuple
    extra: str | None
    modules: tuple
    loaded_by: str


FORMATS = {
    'spandrel': ExportFormat(('.pth', '.pt', '.safetensors'), 'spandrel', ('spandrel',), 'spandrel'),
    'onnx': ExportFormat(('.onnx',), 'onnx', ('onnx', 'onnxscript', 'onnxruntime'), 'onnxruntime'),
    'safetensors': ExportFormat(('.safetensors',), 'safetensors', ('safetensors',), 'basicsr-usaid\'s loader'),
    'pt2': ExportFormat(('.pt2',), None, (), 'torch.export.load'),
}
# The format an output name implies when --format is not given (spandrel writes .safetensors only when asked).
DEFAULT_FORMAT = {'.pth': 'spandrel', '.pt': 'spandrel', '.onnx': 'onnx', '.safetensors': 'safetensors',
                  '.pt2': 'pt2'}
# The least agreement (PSNR of the exported network's output against the source's, in dB) an export must reach to be
# written: float32 rounding gives 110 dB or more (max differences near 1e-6), float16 about 70 dB; a wrong layout or a
# lost BatchNorm gives 20-40, a batch size fixed inside a SwinIR 60-80.
MIN_AGREEMENT_DB = {'fp32': 90.0, 'fp16': 45.0}
# (batch, height, width): two sizes, one odd, and batch sizes other than the exporters' example's (2): an export that
# fixed the batch size somewhere inside (BasicSR's SwinIR divides by it) is caught
PROBE_BATCHES = ((1, 64, 96), (3, PROBE_SIZE[0], PROBE_SIZE[1] + 30))
PROBE_SIGMA = 25 / 255
CHANNEL_KEYS = ('num_in_ch', 'in_chans', 'in_channels')  # how BasicSR's architectures name their input channels
# spandrel detects KAIR's DnCNN by the weights of its first 8 convolutions (model.0 to model.14)
SPANDREL_MIN_DNCNN_LAYERS = 8


@dataclass
class Source:
    """The network an export starts from, and the checkpoint entries it was loaded from."""
    spec: str
    network_opt: dict
    net: nn.Module
    param_key: str | None  # the checkpoint entry in ``net``; None for a bare state dict (the released files)
    states: dict = field(repr=False)  # every entry of BasicSR's layout the checkpoint holds, for safetensors
    weights: str = ''

    @property
    def channels(self):
        """The image channels the network takes: its ``num_in_ch`` (or ``in_chans``, ``in_channels``) option, given
        or by default; else 3, as the tools feed it."""
        parameters = inspect.signature(type(self.net)).parameters
        for key in CHANNEL_KEYS:
            if key in self.network_opt:
                return self.network_opt[key]
            if key in parameters and isinstance(parameters[key].default, int):
                return parameters[key].default
        return 3


def load_source(spec, network_opt=None, param_key=None):
    """The :class:`Source` that ``spec`` names (as the tools take it: a released model's name, a checkpoint, an option
    file or an experiment folder); ``param_key`` picks the entry to export (default: what ``spec`` implies, BasicSR's
    ``params_ema`` when stored, else ``params``)."""
    resolved_opt, weights, implied_key = resolve_model(spec)
    network_opt = dict(network_opt or resolved_opt)
    net = build_denoiser_network(network_opt, spec)
    checkpoint = load_checkpoint(weights)
    stored = [key for key in ('params', 'params_ema') if isinstance(checkpoint, dict) and key in checkpoint]
    if param_key is not None and param_key not in stored:
        raise ValueError(f'--param-key {param_key}: {weights} has no such entry (it has '
                         f'{", ".join(stored) or "a bare state dict"}); expected one of its entries.')
    key = stored_param_key(checkpoint, weights, param_key or implied_key, allow_bare=True)
    states = {k: canonical_state_dict(weights, k, net=net, checkpoint=checkpoint) for k in stored}
    if key is None:
        states = {'params': canonical_state_dict(weights, None, allow_bare=True, net=net, checkpoint=checkpoint)}
    net.load_state_dict(states[key or 'params'])
    return Source(spec, network_opt, net.eval().requires_grad_(False), key, states, weights)


def probe_batches(channels):
    """Noisy smooth images (two batches of two sizes, seeded): the inputs every export is checked on."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for batch, height, width in PROBE_BATCHES:
        y = torch.linspace(0, 3 * math.pi, height).view(1, 1, height, 1)
        x = torch.linspace(0, 2 * math.pi, width).view(1, 1, 1, width)
        phase = torch.rand(batch, channels, 1, 1, generator=generator) * 2 * math.pi
        clean = 0.5 + 0.3 * torch.sin(y + phase) * torch.cos(x - phase)
        batches.append(clean + PROBE_SIGMA * torch.randn(clean.shape, generator=generator))
    return batches


class PaddedDenoiser(nn.Module):
    """``net`` on inputs of any size from ``multiple`` up: padded at the bottom and right to a multiple of it by
    reflection, and cropped back, as :class:`~usaid.inference.InferenceNetwork` does. Always padding (by zero pixels
    where the size fits) keeps the traced graph free of branches on the input size.

    Args:
        net (nn.Module): The network, in eval mode.
        multiple (int): The multiple its input height and width must have.
    """

    def __init__(self, net, multiple):
        super().__init__()
        self.net, self.multiple = net, multiple

    def forward(self, x):
        height, width = x.shape[-2:]
        padded = nn.functional.pad(x, (0, -width % self.multiple, 0, -height % self.multiple), mode='reflect')
        return self.net(padded)[..., :height, :width]


def traceable(source):
    """The source network on images of any size (itself, or :class:`PaddedDenoiser` around it: what ONNX and pt2
    export), and the multiple it needs; ValueError for a network that is not a denoiser (it changes the size)."""
    example = probe_batches(source.channels)[1][:1, :, :PROBE_SIZE[0], :PROBE_SIZE[1]]
    try:
        multiple = size_multiple(source.net, example)
    except ValueError as error:
        raise ValueError(f'{source.spec}: {type(source.net).__name__} is not a denoiser of {source.channels}-channel '
                         f'images: it {error}; expected a network that keeps the image size.') from None
    return (source.net if multiple == 1 else PaddedDenoiser(source.net, multiple).eval()), multiple


def dynamic_example(source, multiple):
    """An input for the exporters, and the dynamic dimensions: batch 2 and sizes other than 1 and each other, so
    that the tracer keeps them symbolic instead of specialising to the example's values."""
    height, width = (-(-size // multiple) * multiple for size in (48, 64))
    dims = {0: torch.export.Dim('batch', min=1),
            2: torch.export.Dim('height', min=multiple), 3: torch.export.Dim('width', min=multiple)}
    return torch.rand(2, source.channels, height, width), dims


def kair_dncnn_state(net):
    """U-SAID's DnCNN as KAIR's ``DnCNN(act_mode='R')`` state dict: each convolution (with the BatchNorm after it
    folded in by torch's ``fuse_conv_bn_weights``) at ``model.{2i}``, with a bias (zero where there was none), the
    ReLUs between them holding no weights."""
    state, index, layers = {}, 0, list(net.dncnn)
    for position, layer in enumerate(layers):
        if not isinstance(layer, nn.Conv2d):
            continue
        weight, bias = layer.weight, layer.bias if layer.bias is not None else torch.zeros(layer.out_channels)
        following = layers[position + 1] if position + 1 < len(layers) else None
        if isinstance(following, nn.BatchNorm2d):
            weight, bias = fuse_conv_bn_weights(weight, bias, following.running_mean, following.running_var,
                                                following.eps, following.weight, following.bias)
        state[f'model.{index}.weight'], state[f'model.{index}.bias'] = weight.detach(), bias.detach()
        index += 2
    return state


def agreement(expected, found):
    """``(max |difference|, PSNR in dB)`` of ``found`` against ``expected``, both clipped to [0, 1] as images are
    written; the PSNR is infinite for identical outputs."""
    expected, found = expected.float().clamp(0, 1), found.float().clamp(0, 1)
    mse = torch.mean((expected - found) ** 2).item()
    return (expected - found).abs().max().item(), (math.inf if mse == 0 else 10 * math.log10(1 / mse))


@dataclass
class Export:
    """The bytes of one export, what runs them (``run(batch) -> output``) and a description of them."""
    content: bytes
    run: object
    details: str
    precision: str = 'fp32'


def export_spandrel(source, module, multiple, output):
    spandrel = require('spandrel', 'spandrel', feature='--format spandrel')
    if isinstance(source.net, USAID):
        layers = sum(isinstance(m, nn.Conv2d) for m in source.net.modules())
        if layers < SPANDREL_MIN_DNCNN_LAYERS:
            raise ValueError(f'{source.spec}: a {layers}-layer DnCNN cannot be exported for spandrel, which detects '
                             f'KAIR\'s DnCNN from {SPANDREL_MIN_DNCNN_LAYERS} layers up; use --format onnx, pt2 or '
                             'safetensors instead.')
    state = kair_dncnn_state(source.net) if isinstance(source.net, USAID) else source.net.state_dict()
    what = ('U-SAID\'s DnCNN in KAIR\'s DnCNN layout, BatchNorm folded' if isinstance(source.net, USAID)
            else f'{type(source.net).__name__} in its BasicSR layout')
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(state).eval()
    except Exception as error:  # noqa: BLE001  (spandrel raises its UnsupportedModelError, or a builder's error)
        why = f': {str(error).strip().splitlines()[0]}' if str(error).strip() else ''
        raise ValueError(f'{source.spec}: spandrel {spandrel.__version__} does not recognise {what} '
                         f'({type(error).__name__}{why}); use --format onnx, pt2 or safetensors instead.') from None
    if osp.splitext(output)[1].lower() == '.safetensors':
        content = require('safetensors', 'safetensors.torch', feature='a .safetensors file').save(
            {k: v.contiguous() for k, v in state.items()})
    else:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        content = buffer.getvalue()
    return Export(content, descriptor, f'{what}; spandrel detects {descriptor.architecture.id} '
                  f'({", ".join(descriptor.tags)})')


def export_onnx(source, module, multiple, output, fp16=False, opset=None):
    onnx, _, onnxruntime = require('onnx', 'onnx', 'onnxscript', 'onnxruntime', feature='--format onnx')
    example, dims = dynamic_example(source, multiple)
    dtype = torch.float16 if fp16 else torch.float32
    module = copy.deepcopy(module).to(dtype)  # a copy: the program reads the module's tensors when it is saved
    try:
        with quiet_exporter():
            program = torch.onnx.export(module, (example.to(dtype),), dynamo=True, verbose=False, opset_version=opset,
                                        input_names=['input'], output_names=['output'], dynamic_shapes=(dims,))
    except Exception as error:  # noqa: BLE001  (the exporter wraps many failure types)
        raise ValueError(f'{source.spec}: torch.onnx.export cannot export {type(source.net).__name__}'
                         f'{" in float16" if fp16 else ""} ({first_line(error)}); use --format pt2 or safetensors'
                         f'{", or float32" if fp16 else ""} instead.') from None
    buffer = io.BytesIO()
    program.save(buffer)
    content = buffer.getvalue()
    session = onnxruntime.InferenceSession(content, providers=['CPUExecutionProvider'])
    opset_found = next(o.version for o in onnx.load_from_string(content).opset_import if o.domain in ('', 'ai.onnx'))
    if opset is not None and opset_found != opset:  # torch keeps its own when it cannot convert, and only logs it
        raise ValueError(f'--opset {opset}: torch\'s exporter cannot write this network in opset {opset} (it wrote '
                         f'opset {opset_found}); expected an opset it writes (18 and above) or converts to (17 '
                         'here), or no --opset.')

    def run(batch):
        return torch.from_numpy(session.run(None, {'input': batch.to(dtype).numpy()})[0]).float()
    return Export(content, run, f'opset {opset_found}, input "input" and output "output" of shape (batch, '
                  f'{source.channels}, height, width), all three dynamic{size_note(multiple)}; '
                  f'{"float16" if fp16 else "float32"}',
                  'fp16' if fp16 else 'fp32')


def export_safetensors(source, module, multiple, output):
    content = safetensors_bytes(source.states, source.network_opt)
    states = load_checkpoint(output, content)
    loaded = {}
    for key in source.states:  # each entry loads back on its own, into a network built from the stored options
        net = build_network(dict(source.network_opt))
        net.load_state_dict(canonical_state_dict(output, key, net=net, checkpoint=states))
        loaded[key] = PaddedDenoiser(net.eval(), multiple) if multiple > 1 else net.eval()
    shown = source.param_key or 'params'
    return Export(content, loaded[shown], f'BasicSR layout, entries {", ".join(source.states)} (checked: {shown}); '
                  f'network_g {source.network_opt} in its metadata')


def export_pt2(source, module, multiple, output):
    example, dims = dynamic_example(source, multiple)
    try:
        program = torch.export.export(module, (example,), dynamic_shapes=(dims,))
    except Exception as error:  # noqa: BLE001
        raise ValueError(f'{source.spec}: torch.export cannot export {type(source.net).__name__} with a dynamic '
                         f'batch, height and width ({first_line(error)}); use --format onnx or '
                         'safetensors instead.') from None
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    loaded = torch.export.load(io.BytesIO(buffer.getvalue())).module()
    return Export(buffer.getvalue(), loaded, f'torch.export program, batch, height and width dynamic'
                  f'{size_note(multiple)}; run it with torch.export.load(path).module()')


@contextlib.contextmanager
def quiet_exporter():
    """torch's ONNX exporter and onnxscript log their progress, fallbacks and caught tracebacks to stderr; the tool
    reports the outcome itself (what was written, or one message)."""
    loggers = [logging.getLogger(name) for name in ('torch.onnx', 'torch.export', 'onnxscript', 'onnx_ir')]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter('ignore')
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def first_line(error):
    """The first line of an exporter's error that says something (its messages start with log lines, colour codes
    and blank lines)."""
    text = re.sub(r'\x1b\[[0-9;]*m', '', str(error))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith('[')]
    return lines[0] if lines else type(error).__name__


def size_note(multiple):
    return '' if multiple == 1 else f' (padded to multiples of {multiple} inside, from {multiple} pixels up)'


WRITERS = {'spandrel': export_spandrel, 'onnx': export_onnx, 'safetensors': export_safetensors, 'pt2': export_pt2}


def check_output(output, format_name, source_path=None, overwrite=False):
    """The format to write ``output`` in (``format_name``, or the one its extension implies), after checking that the
    extension fits it, that ``output`` can be written, exists only with ``overwrite`` and is not the source file."""
    extension = osp.splitext(output)[1].lower()
    if format_name is None:
        if extension not in DEFAULT_FORMAT:
            raise ValueError(f'OUTPUT {output}: the extension {extension or "(none)"} names no format; expected '
                             f'{", ".join(DEFAULT_FORMAT)}, or --format with one of {", ".join(FORMATS)}.')
        format_name = DEFAULT_FORMAT[extension]
    if format_name not in FORMATS:
        raise ValueError(f'--format {format_name}: expected one of {", ".join(FORMATS)}.')
    if extension not in FORMATS[format_name].extensions:
        raise ValueError(f'OUTPUT {output}: the {format_name} format writes '
                         f'{" or ".join(FORMATS[format_name].extensions)} files; expected one of these extensions.')
    if osp.isdir(output):
        raise ValueError(f'OUTPUT {output}: is a folder; expected a file name.')
    if source_path and osp.exists(output) and osp.samefile(output, source_path):
        raise ValueError(f'OUTPUT {output}: is the source checkpoint; an export never replaces the file it is made '
                         'from (even with --force).')
    if any(osp.exists(output) and osp.exists(model.cached_path) and osp.samefile(output, model.cached_path)
           for model in RELEASED.values()):
        raise ValueError(f'OUTPUT {output}: is a released model\'s file in torch\'s hub cache, which is checked by its '
                         'SHA-256 and removed when it differs; expected another name (even with --force).')
    if osp.lexists(output) and not overwrite:
        raise ValueError(f'OUTPUT {output}: exists; expected a new file name, or --force to replace it.')
    check_writable(output, 'OUTPUT')
    return format_name


@dataclass
class ExportReport:
    """What :func:`export` wrote and how close it computes to the source network."""
    output: str
    format_name: str
    size: int
    details: str
    source: str
    differences: list  # (input shape, max |difference|, PSNR in dB) per probe batch

    def __str__(self):
        lines = [f'{self.output}: {self.format_name}, {self.size / 1e6:.2f} MB; {self.details}',
                 f'  from {self.source}']
        for shape, max_diff, psnr in self.differences:
            agreement_db = 'identical' if math.isinf(psnr) else f'PSNR {psnr:.1f} dB'
            lines.append(f'  difference from the source network on a noisy {"x".join(map(str, shape))} probe, run by '
                         f'{FORMATS[self.format_name].loaded_by}: '
                         f'max {max_diff:.2e} (0-1 scale), {agreement_db}')
        return '\n'.join(lines)


def export(spec, output, format_name=None, network_opt=None, param_key=None, fp16=False, opset=None,
           overwrite=False):
    """Export the denoiser ``spec`` names to ``output``; returns an :class:`ExportReport`. Everything is checked and
    the export run and compared before the file is written; nothing is written on any error."""
    format_name = check_output(output, format_name, overwrite=overwrite)
    if fp16 and format_name != 'onnx':
        raise ValueError(f'--fp16: applies to --format onnx only (this export is {format_name}).')
    if opset is not None and format_name != 'onnx':
        raise ValueError(f'--opset: applies to --format onnx only (this export is {format_name}).')
    spec_of_format = FORMATS[format_name]
    for module in spec_of_format.modules:  # before the network is loaded: a missing package costs nothing
        require(spec_of_format.extra, module, feature=f'--format {format_name}')
    source = load_source(spec, network_opt, param_key)
    check_output(output, format_name, source.weights, overwrite)
    options = {'fp16': fp16, 'opset': opset} if format_name == 'onnx' else {}
    module, multiple = traceable(source)
    made = WRITERS[format_name](source, module, multiple, output, **options)
    differences = []
    with torch.inference_mode():
        for batch in probe_batches(source.channels):
            max_diff, psnr = agreement(module(batch), made.run(batch))
            differences.append((tuple(batch.shape), max_diff, psnr))
    worst = min(psnr for _, _, psnr in differences)
    if worst < MIN_AGREEMENT_DB[made.precision]:
        others = ', '.join(f for f in FORMATS if f != format_name)
        raise ValueError(f'{source.spec}: the {format_name} export computes something else than the source network '
                         f'(PSNR {worst:.1f} dB against it on the probe images, expected at least '
                         f'{MIN_AGREEMENT_DB[made.precision]:.0f} dB: more than float rounding); nothing was written. '
                         f'Use another --format instead ({others}).')
    os.makedirs(osp.dirname(osp.abspath(output)), exist_ok=True)
    write_atomically(output, lambda f: f.write(made.content), replace=overwrite, then='run usaid-export again')
    key = f' [{source.param_key}]' if source.param_key else ''
    return ExportReport(output, format_name, len(made.content), made.details,
                        f'{type(source.net).__name__} ({sum(p.numel() for p in source.net.parameters()):,} '
                        f'parameters), {source.weights}{key}', differences)

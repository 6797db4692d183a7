"""Fast inference for any BasicSR denoiser, without changing its results.

:class:`InferenceNetwork` turns a trained network into an equivalent one for inference:

- BatchNorm folded into the preceding convolution (``torch.fx.experimental.optimization.fuse``): 18 fewer passes over
  the feature maps of a DnCNN;
- convolutions on the CPU computed with NNPACK's Winograd algorithm (torch's own ``_nnpack_spatial_convolution``):
  about 1.4x oneDNN's direct convolution for 3x3 kernels on 64 channels, with float32 rounding differences only;
- or, where Winograd does not apply (GPU, bf16), ``channels_last`` tensors for oneDNN / cuDNN.

An opt-in bf16 mode trades a measured PSNR cost for speed. Measured speeds and PSNR in docs/benchmarks.md.
"""
import contextlib
import copy
import warnings
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.optimization import fuse

from usaid.declarations import Declaration, declared, option
from usaid.network_probe import PROBE_SIZE, pad_to_multiple, size_multiple

ConvAlgo = Literal['auto', 'winograd', 'direct']
Precision = Literal['fp32', 'bf16']
TrainingPrecision = Literal['fp32', 'bf16', 'fp16']  # fp16 needs a gradient scaler: training only (USAIDModel)
CONV_ALGOS = get_args(ConvAlgo)
PRECISIONS = get_args(Precision)
AUTOCAST_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}


def check_precision(precision, key='precision'):
    """``precision`` if it is one of :data:`PRECISIONS`, else a ValueError naming the option ``key``."""
    if precision not in PRECISIONS:
        raise ValueError(f'{key} {precision!r}: expected one of {", ".join(PRECISIONS)}.')
    return precision


def winograd_available():
    """Whether this torch has NNPACK and can run it on this CPU (the call also initialises NNPACK)."""
    return hasattr(torch, '_nnpack_spatial_convolution') and torch._nnpack_available()


class WinogradConv2d(nn.Module):
    """A float32 CPU ``nn.Conv2d`` (stride 1, no dilation, one group, zero padding) computed by NNPACK, which picks
    Winograd for 3x3 kernels. Inference only: batch 1 uses NNPACK's low-latency inference path.

    Args:
        conv (nn.Conv2d): The convolution whose weights (and bias, if any) are used.
    """

    def __init__(self, conv):
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach().contiguous(), requires_grad=False)
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.bias = nn.Parameter(bias.contiguous(), requires_grad=False)
        self.padding = list(conv.padding)

    @staticmethod
    def supports(conv):
        """Whether NNPACK computes ``conv`` and is worth it: layers with fewer than 16 input or output channels (a
        denoiser's first and last) measured faster with oneDNN's direct convolution."""
        kernel = conv.kernel_size
        return (type(conv) is nn.Conv2d and min(conv.in_channels, conv.out_channels) >= 16
                and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
                and conv.padding_mode == 'zeros' and isinstance(conv.padding, tuple)
                and all(p < k for p, k in zip(conv.padding, kernel)) and max(kernel) <= 16
                and conv.weight.device.type == 'cpu' and conv.weight.dtype == torch.float32)

    def forward(self, x):
        return torch._nnpack_spatial_convolution(x.contiguous(), self.weight, self.bias, self.padding)


def _replace_convolutions(module):
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d) and WinogradConv2d.supports(child):
            setattr(module, name, WinogradConv2d(child))
        else:
            _replace_convolutions(child)


def resolve_conv_algo(conv_algo, device, precision):
    """The convolution algorithm ``auto`` stands for: Winograd for float32 on a CPU with NNPACK, else direct."""
    if conv_algo not in CONV_ALGOS:
        raise ValueError(f'conv_algo {conv_algo!r}: expected one of {", ".join(CONV_ALGOS)}.')
    check_precision(precision)
    winograd_possible = torch.device(device).type == 'cpu' and precision == 'fp32' and winograd_available()
    if conv_algo == 'winograd' and not winograd_possible:
        raise ValueError('conv_algo winograd needs float32 on a CPU with NNPACK '
                         f'(device {device}, precision {precision}, NNPACK available: {winograd_available()}).')
    if conv_algo == 'auto':
        return 'winograd' if winograd_possible else 'direct'
    return conv_algo


@declared
class InferenceNetwork(nn.Module):
    """An inference-only copy of a trained network (eval mode, no gradients) that computes the same function faster.

    Call it under ``torch.inference_mode()``; it takes and returns float32 NCHW tensors like the original. The fast copy
    is made at the first call, from the first image: the network is run on a small crop of it
    (:mod:`usaid.network_probe`) to learn the multiple its input size must have, and the fast copy is kept only if it
    computes what the plain eval-mode network computes on that crop (within float rounding); otherwise the next safer
    copy is tried (unfolded, then the plain network with direct convolutions), with a warning. Every copy is made from
    an untouched deep copy, so a BatchNorm fold (``torch.fx``) that fails half-way, or a ``forward`` that assigns
    attributes (BasicSR's EDSR and SwinIR do), never leaves a broken network in use. Images whose height or width is not
    a multiple the network needs (RRDBNet at scale 1: 4; SwinIR: its window) are padded (mirrored) and cropped back.

    Args:
        net (nn.Module): The trained network, a restorer at scale 1; left unchanged.
    """

    @dataclass(frozen=True, kw_only=True)
    class Options(Declaration):
        owner, kind = 'val:inference', 'option'
        fold_bn: bool = option(True, 'Fold eval-mode BatchNorm into the preceding convolutions, where there is '
                                     'BatchNorm and torch.fx can trace the network')
        conv_algo: ConvAlgo = option('auto', "winograd (NNPACK, float32 CPU only), direct (oneDNN / cuDNN) or auto "
                                             '(Winograd where it applies)')
        channels_last: bool = option(True, 'channels_last tensors with direct convolutions (Winograd needs NCHW)')
        precision: Precision = option('fp32', 'fp32, or bf16 autocast: faster where the hardware has bf16 '
                                              'instructions, at a measured PSNR cost; opt-in')

    def __init__(self, net, **options):
        super().__init__()
        opt = self.Options.parse(options, 'InferenceNetwork')
        self.device = next(net.parameters()).device
        self.conv_algo = resolve_conv_algo(opt.conv_algo, self.device, opt.precision)
        self.precision = opt.precision
        self.fold_bn = opt.fold_bn and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
        self.channels_last = opt.channels_last
        self.plain = copy.deepcopy(net).eval().requires_grad_(False)
        self.net = None  # the fast copy, made by the first call
        self.size_multiple = 1
        self.memory_format = torch.contiguous_format

    def prepare(self, x):
        """Make the fast copy from ``x`` (an input like those to come) if it is not made yet; returns
        :attr:`size_multiple`, the multiple the network needs image heights and widths to have."""
        if self.net is None:
            self._prepare(x)
        return self.size_multiple

    def forward(self, x):
        self.prepare(x)
        height, width = x.shape[-2:]
        x = pad_to_multiple(x, self.size_multiple)
        with precision_autocast(self.device, self.precision):
            out = self.net(x.contiguous(memory_format=self.memory_format))
        return out[..., :height, :width].float().contiguous()

    def _prepare(self, x):
        """Choose ``self.net``: the fastest copy that computes the plain network's output on a crop of ``x``."""
        example = x[:1].float()
        pad_h, pad_w = max(PROBE_SIZE[0] - example.shape[-2], 0), max(PROBE_SIZE[1] - example.shape[-1], 0)
        example = F.pad(example, (0, pad_w, 0, pad_h), mode='replicate')[..., :PROBE_SIZE[0], :PROBE_SIZE[1]]
        try:
            self.size_multiple = size_multiple(self.plain, example)
        except ValueError as error:
            raise ValueError(f'{type(self.plain).__name__} cannot be used as a denoiser of {example.shape[1]}-channel '
                             f'images: it {error}.') from None
        example = pad_to_multiple(example, self.size_multiple)
        expected = self.plain(example)
        candidates = ([True] if self.fold_bn else []) + [False]
        for fold in candidates:
            fast, memory_format = self._fast_copy(fold)
            if fast is None:
                continue
            try:
                same = torch.allclose(fast(example.contiguous(memory_format=memory_format)).float(), expected,
                                      rtol=1e-3, atol=1e-4)
            except Exception as error:  # a folded copy may fail where the plain network runs
                same, reason = False, f'{type(error).__name__}: {error}'
            else:
                reason = 'its output differs from the plain network\'s'
            if same:
                self.net, self.memory_format = fast, memory_format
                break
            warnings.warn(f'{type(self.plain).__name__}: {"folded BatchNorm" if fold else "the fast copy"} not used '
                          f'({reason}).')
        else:
            self.net, self.memory_format, self.conv_algo = self.plain, torch.contiguous_format, 'direct'
        if self.net is not self.plain:
            del self.plain  # no second copy of the weights kept

    def _fast_copy(self, fold):
        """A converted deep copy of the plain network and its input memory format, or (None, None) if ``fold`` fails."""
        fast = copy.deepcopy(self.plain)
        if fold:
            try:
                fast = fuse(fast, inplace=True)
            except Exception as error:  # torch.fx raises many types for untraceable control flow
                warnings.warn(f'{type(self.plain).__name__}: BatchNorm not folded (torch.fx cannot trace it: {error}).')
                return None, None
        if self.conv_algo == 'winograd':
            _replace_convolutions(fast)
            return fast, torch.contiguous_format
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        return fast.to(memory_format=memory_format), memory_format


def precision_autocast(device, precision='fp32'):
    """The autocast context of ``precision`` on ``device``: none for 'fp32', bfloat16 autocast for 'bf16', float16
    autocast for 'fp16' (training only: its gradients need :class:`torch.amp.GradScaler`, which USAIDModel owns)."""
    if precision == 'fp32':
        return contextlib.nullcontext()
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f'precision {precision!r}: expected one of fp32, {", ".join(AUTOCAST_DTYPES)}.')
    return torch.autocast(torch.device(device).type, dtype=AUTOCAST_DTYPES[precision])


def add_inference_arguments(parser):
    """Add the switches of :class:`InferenceNetwork` to the ``argparse`` ``parser`` of a tool that runs a network, the
    same in every tool; returns the argument group, for a tool's own speed switches."""
    defaults = InferenceNetwork.Options()
    group = parser.add_argument_group('speed (defaults: the fastest settings that keep the float32 results)')
    group.add_argument('--precision', choices=PRECISIONS, default=defaults.precision,
                       help='bf16: bfloat16 autocast, faster on CPUs with bf16 instructions and on GPUs, '
                       'about 0.1 dB lower PSNR (docs/benchmarks.md)')
    group.add_argument('--conv-algo', choices=CONV_ALGOS, default=defaults.conv_algo,
                       help='winograd: NNPACK (float32 CPU); direct: oneDNN / cuDNN; auto: winograd where it applies')
    group.add_argument('--no-fold-bn', dest='fold_bn', action='store_false',
                       help='keep BatchNorm layers instead of folding them into the convolutions')
    group.add_argument('--no-channels-last', dest='channels_last', action='store_false',
                       help='NCHW instead of channels_last tensors for direct convolutions')
    return group


def inference_options(args):
    """The keyword arguments of :class:`InferenceNetwork` that the switches of :func:`add_inference_arguments` give
    (also the ``val: inference`` mapping of BasicSR options)."""
    return {'fold_bn': args.fold_bn, 'conv_algo': args.conv_algo, 'channels_last': args.channels_last,
            'precision': args.precision}

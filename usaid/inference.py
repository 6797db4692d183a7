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

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

CONV_ALGOS = ('auto', 'winograd', 'direct')
PRECISIONS = ('fp32', 'bf16')


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
                and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == 'zeros' and isinstance(conv.padding, tuple)
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


class InferenceNetwork(nn.Module):
    """An inference-only copy of a trained network (eval mode, no gradients) that computes the same function faster.

    Call it under ``torch.inference_mode()``; it takes and returns float32 NCHW tensors like the original.

    Args:
        net (nn.Module): The trained network; left unchanged.
        fold_bn (bool): Fold eval-mode BatchNorm into the preceding convolutions. Networks that ``torch.fx`` cannot
            trace are kept unfolded, with a warning. Default: True.
        conv_algo (str): 'winograd' (NNPACK, float32 CPU only), 'direct' (oneDNN / cuDNN) or 'auto' (Winograd where
            it applies). Default: 'auto'.
        channels_last (bool): Use channels_last tensors with direct convolutions (ignored with Winograd, which needs
            NCHW). Default: True.
        precision (str): 'fp32', or 'bf16' (bfloat16 autocast: faster where the hardware has bf16 instructions, at a
            measured PSNR cost; opt-in). Default: 'fp32'.
    """

    def __init__(self, net, fold_bn=True, conv_algo='auto', channels_last=True, precision='fp32'):
        super().__init__()
        self.device = next(net.parameters()).device
        self.conv_algo = resolve_conv_algo(conv_algo, self.device, precision)
        self.precision = precision
        fast = copy.deepcopy(net).eval().requires_grad_(False)
        if fold_bn:
            try:
                fast = fuse(fast, inplace=True)
            except Exception as error:  # torch.fx raises many types for untraceable control flow
                warnings.warn(f'{type(net).__name__}: BatchNorm not folded (torch.fx cannot trace it: {error}).')
        if self.conv_algo == 'winograd':
            _replace_convolutions(fast)
            self.memory_format = torch.contiguous_format
        else:
            self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
            fast = fast.to(memory_format=self.memory_format)
        self.net = fast

    def forward(self, x):
        with precision_autocast(self.device, self.precision):
            out = self.net(x.contiguous(memory_format=self.memory_format))
        return out.float().contiguous()


def precision_autocast(device, precision='fp32'):
    """The autocast context of ``precision`` on ``device``: none for 'fp32', bfloat16 autocast for 'bf16'."""
    if check_precision(precision) == 'fp32':
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)

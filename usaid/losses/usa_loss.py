from dataclasses import dataclass

import torch
import torch.nn.functional as F
from basicsr.archs import build_network
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn

from usaid.archs.usanet_arch import batch_statistics_problem
from usaid.basicsr_sections import Network
from usaid.declarations import Declaration, declared, option
from usaid.inference import Precision, precision_autocast


def focal_uncertainty(logits, gamma=2.0, eps=1e-7):
    """Per-pixel U-SAID uncertainty ``-(1 - p*)^gamma * log(p*)`` of segmentation logits (N, K, h, w), where
    ``p*`` is the softmax probability of the arg-max class, clamped to [eps, 1 - eps]. Returns (N, h, w)."""
    confidence = torch.softmax(logits, dim=1).amax(dim=1).clamp(eps, 1 - eps)
    return -(1 - confidence).pow(gamma) * torch.log(confidence)


@LOSS_REGISTRY.register()
@declared
class USALoss(nn.Module):
    """Unsupervised segmentation-aware (USA) loss of U-SAID.

    Segments the denoised image, clamped to [0, 1], with a frozen network (by default :class:`USANet`) and returns
    ``loss_weight`` times the mean over all pixels of :func:`focal_uncertainty`: a focal loss against the network's
    own arg-max labels, small where the segmentation is confident.

    The network is built from ``network`` and frozen: its parameters never require grad, no optimizer holds them,
    and it computes no weight gradients. With ``detach_input: false`` the gradient of this loss reaches the denoiser
    through the frozen network (the paper's method); with ``true`` it never does, which is what the authors'
    released script computes (its USA input is a detached NumPy copy).

    ``precision: bf16`` runs the segmentation network under bfloat16 autocast (faster where the hardware has bf16
    instructions; the loss itself is computed in float32). Opt-in: it changes the gradient the denoiser receives
    (docs/benchmarks.md).
    """

    @dataclass(frozen=True, kw_only=True)
    class Options(Declaration):
        network: Network | None = option(None, "The frozen segmentation network: type and options; default: USANet's "
                                               'defaults (ResNet-101, 21 classes, ImageNet weights)')
        loss_weight: float = option(1.0, 'Weight of this loss')
        gamma: float = option(2.0, 'Focusing exponent', minimum=0)
        detach_input: bool = option(False, "Stop the gradient at the network's input (what the authors' script "
                                           'computes)')
        eps: float = option(1e-7, 'Clamp of the arg-max probability', minimum=0, maximum=0.5)
        precision: Precision = option('fp32', 'fp32, or bf16 autocast of the segmentation network')

    def __init__(self, **options):
        super().__init__()
        opt = self.Options.parse(options, 'USALoss')
        self.net = build_network(dict(opt.network or {'type': 'USANet'}))
        self.net.requires_grad_(False)
        self.loss_weight = opt.loss_weight
        self.gamma = opt.gamma
        self.detach_input = opt.detach_input
        self.eps = opt.eps
        self.precision = opt.precision

    def segment(self, image):
        """Segmentation logits of ``image`` (clamped to [0, 1]) by the frozen network."""
        with precision_autocast(image.device, self.precision):
            # NCHW: for a ResNet on 48x48 patches measured faster than channels_last, forward and backward
            logits = self.net(image.clamp(0, 1).contiguous())
        return logits.float()

    @torch.inference_mode()
    def segmentation_maps(self, image):
        """``(labels, uncertainty)`` of (N, 3, H, W) images at full resolution: the arg-max class (N, H, W) and
        ``1 - p*`` (N, H, W) of the network's logits, upsampled bilinearly from the network's stride."""
        problem = batch_statistics_problem(getattr(self.net, 'bn_mode', 'eval'), *image.shape[:1], *image.shape[-2:])
        if problem:
            raise ValueError(problem)
        logits = F.interpolate(self.segment(image), size=image.shape[-2:], mode='bilinear', align_corners=False)
        confidence, labels = torch.softmax(logits, dim=1).max(dim=1)
        return labels, 1 - confidence

    def forward(self, pred):
        if self.detach_input:
            with torch.no_grad():
                logits = self.segment(pred)
        else:
            logits = self.segment(pred)
        return self.loss_weight * focal_uncertainty(logits, self.gamma, self.eps).mean()

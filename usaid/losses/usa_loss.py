import torch
import torch.nn.functional as F
from basicsr.archs import build_network
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn

from usaid.archs.usanet_arch import batch_statistics_problem
from usaid.inference import check_precision, precision_autocast


def focal_uncertainty(logits, gamma=2.0, eps=1e-7):
    """Per-pixel U-SAID uncertainty ``-(1 - p*)^gamma * log(p*)`` of segmentation logits (N, K, h, w), where
    ``p*`` is the softmax probability of the arg-max class, clamped to [eps, 1 - eps]. Returns (N, h, w)."""
    confidence = torch.softmax(logits, dim=1).amax(dim=1).clamp(eps, 1 - eps)
    return -(1 - confidence).pow(gamma) * torch.log(confidence)


@LOSS_REGISTRY.register()
class USALoss(nn.Module):
    """Unsupervised segmentation-aware (USA) loss of U-SAID.

    Segments the denoised image, clamped to [0, 1], with a frozen network (by default :class:`USANet`) and returns
    ``loss_weight`` times the mean over all pixels of :func:`focal_uncertainty`: a focal loss against the network's
    own arg-max labels, small where the segmentation is confident.

    The network is built from ``network`` and frozen: its parameters never require grad, no optimizer holds them,
    and it computes no weight gradients. With ``detach_input: false`` the gradient of this loss reaches the denoiser
    through the frozen network (the paper's method); with ``true`` it never does, which is what the authors'
    released script computes (its USA input is a detached NumPy copy).

    Args:
        network (dict): Options of the segmentation network, with its ``type``. Default: a ``USANet`` with its
            defaults (ResNet-101, 21 classes, ImageNet weights).
        loss_weight (float): Weight of this loss. Default: 1.0.
        gamma (float): Focusing exponent. Default: 2.
        detach_input (bool): Stop the gradient at the network's input. Default: False.
        eps (float): Clamp of the arg-max probability. Default: 1e-7.
        precision (str): 'fp32', or 'bf16' to run the segmentation network under bfloat16 autocast (faster where
            the hardware has bf16 instructions; the loss itself is computed in float32). Opt-in: it changes the
            gradient the denoiser receives (docs/benchmarks.md). Default: 'fp32'.
    """

    def __init__(self, network=None, loss_weight=1.0, gamma=2.0, detach_input=False, eps=1e-7, precision='fp32'):
        super().__init__()
        self.net = build_network(network or {'type': 'USANet'})
        self.net.requires_grad_(False)
        self.loss_weight = loss_weight
        self.gamma = gamma
        self.detach_input = detach_input
        self.eps = eps
        self.precision = check_precision(precision, 'USALoss: precision')

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

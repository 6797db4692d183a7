import functools

import numpy as np
import torch
import torchvision
from basicsr.utils.registry import METRIC_REGISTRY

from usaid.checkpoint import canonical_state_dict
from usaid.extras import require
from usaid.torchvision_weights import load_torchvision_weights

# the torchvision network whose ImageNet weights each LPIPS variant's features use
BACKBONES = {'alex': 'alexnet', 'vgg': 'vgg16'}


@METRIC_REGISTRY.register()
def calculate_lpips(img, img2, crop_border=0, net='alex', backbone_weights=None, **kwargs):
    """LPIPS (Zhang et al. 2018, https://github.com/richzhang/PerceptualSimilarity) between two images, computed by
    the authors' ``lpips`` package (version 0.1 linear layers, which it ships); lower is more similar.

    Args:
        img (ndarray): An H x W x 3 BGR image in [0, 255] (BasicSR's metric convention).
        img2 (ndarray): The reference, the same shape.
        crop_border (int): Pixels cut off each border before scoring.
        net (str): ``alex`` (the paper's default) or ``vgg``.
        backbone_weights (str, optional): A local state dict of torchvision's AlexNet / VGG16 ImageNet weights
            (default: torchvision's cache, downloaded when possible; offline, a message names the file to place).
    """
    if img.shape != img2.shape:
        raise ValueError(f'calculate_lpips: images of shapes {img.shape} and {img2.shape}; expected the same shape.')
    if crop_border:
        img, img2 = img[crop_border:-crop_border, crop_border:-crop_border], img2[crop_border:-crop_border,
                                                                                  crop_border:-crop_border]
    model = lpips_network(net, backbone_weights)

    def as_tensor(image):  # BGR [0, 255] -> RGB (1, 3, H, W) in [-1, 1], LPIPS' input range
        rgb = np.ascontiguousarray(image[..., ::-1], dtype=np.float32)
        return torch.from_numpy(rgb).permute(2, 0, 1)[None] / 127.5 - 1
    with torch.inference_mode():
        return float(model(as_tensor(img), as_tensor(img2)))


@functools.lru_cache(maxsize=4)
def lpips_network(net='alex', backbone_weights=None):
    """The LPIPS network, built once per process: lpips' linear layers, torchvision's ImageNet backbone."""
    lpips = require('perceptual', 'lpips', feature='The LPIPS metric')
    if net not in BACKBONES:
        raise ValueError(f'calculate_lpips: net {net!r}; expected one of {", ".join(BACKBONES)}.')
    name = BACKBONES[net]
    backbone = torchvision.models.get_model(name, weights=None)
    state = canonical_state_dict(backbone_weights, allow_bare=True) if backbone_weights else load_torchvision_weights(
        torchvision.models.get_model_weights(name).IMAGENET1K_V1, f'LPIPS ({net})',
        'pass the metric option backbone_weights (usaid-compare: --lpips-weights FILE)', ValueError)
    backbone.load_state_dict(state)
    # lpips builds its backbone with torchvision's downloading constructor unless pnet_rand; its slices keep the
    # features' indices as names, so the weights go in module by module
    model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    for stage in model.net.children():
        for index, module in stage.named_children():
            module.load_state_dict(backbone.features[int(index)].state_dict())
    return model.eval().requires_grad_(False)

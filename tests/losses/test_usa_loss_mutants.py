"""Tests written for mutants of usaid/losses/usa_loss.py that survived `make mutation` (docs/testing.md#mutation-
testing): ``p*`` is clamped to [eps, 1 - eps] at both ends, with the loss's own ``eps``; ``precision: bf16`` really runs
the segmentation network under bfloat16 autocast."""
import math

import pytest
import torch

from usaid.losses import USALoss
from usaid.losses.usa_loss import focal_uncertainty

SMALL_USA = {'type': 'USANet', 'backbone': 'resnet18', 'pretrained': 'none'}

# two pixels of K = 3 classes: a confident one (p* = 0.95) and an uncertain one (p* = 0.4)
PROBABILITIES = torch.tensor([[0.95, 0.03, 0.02], [0.4, 0.35, 0.25]])
LOGITS = PROBABILITIES.log().T.reshape(1, 3, 1, 2)


def by_hand(p_star, eps, gamma=2.0):
    """REFERENCE section 1 for one pixel: p* clamped to [eps, 1 - eps], then -(1 - p*)^gamma log p*."""
    p = min(max(p_star, eps), 1 - eps)
    return -(1 - p) ** gamma * math.log(p)


def test_the_arg_max_probability_is_clamped_at_both_ends():
    for eps, expected in ((0.45, [by_hand(0.55, 0.45), by_hand(0.45, 0.45)]),  # 0.95 -> 0.55, 0.4 -> 0.45
                          (0.02, [by_hand(0.95, 0.02), by_hand(0.4, 0.02)])):  # unchanged
        assert torch.allclose(focal_uncertainty(LOGITS, eps=eps).flatten(), torch.tensor(expected), rtol=1e-5)


def test_the_loss_clamps_with_its_own_eps():
    loss = USALoss(network=SMALL_USA, eps=0.45, loss_weight=0.7)
    loss.segment = lambda image: LOGITS  # the network's logits, fixed
    expected = 0.7 * (by_hand(0.95, 0.45) + by_hand(0.4, 0.45)) / 2
    assert math.isclose(loss(torch.rand(1, 3, 8, 8)).item(), expected, rel_tol=1e-5)


def test_bf16_precision_segments_under_bfloat16_autocast():
    loss = USALoss(network=SMALL_USA, precision='bf16')
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.1
    with torch.autocast('cpu', dtype=torch.bfloat16):
        by_hand = loss.net(image.clamp(0, 1)).float()
    fp32 = loss.net(image.clamp(0, 1))
    logits = loss.segment(image)
    assert logits.dtype == torch.float32 and torch.equal(logits, by_hand)
    assert not torch.equal(logits, fp32)  # bfloat16 rounding shows


def test_a_bad_option_is_named_with_the_loss():
    with pytest.raises(ValueError, match=r'^USALoss: gamma: found -1; expected a number >= 0$'):
        USALoss(network=SMALL_USA, gamma=-1)


def test_without_a_network_option_the_loss_segments_with_usanets_defaults(monkeypatch):
    """REFERENCE section 1: a ResNet-101/FPN with ImageNet weights and 21 classes, which is USANet with no options."""
    import torchvision

    import usaid.archs.usanet_arch
    from usaid.archs import USANet
    loaded = []

    def random_imagenet_weights(backbone):  # no download in tests: torchvision's architecture, random weights
        loaded.append(backbone)
        return getattr(torchvision.models, backbone)(weights=None).state_dict()

    monkeypatch.setattr(usaid.archs.usanet_arch, 'load_imagenet_state_dict', random_imagenet_weights)
    loss = USALoss()
    assert type(loss.net) is USANet and loaded == ['resnet101']
    assert [len(stage) for stage in loss.net.stages] == [3, 4, 23, 3]  # ResNet-101's blocks
    assert loss.segment(torch.rand(1, 3, 64, 64)).shape[1] == 21

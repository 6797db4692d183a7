"""Tests written for mutants of usaid/losses/usa_loss.py that survived `make mutation` (docs/testing.md#mutation-
testing): ``precision: bf16`` really runs the segmentation network under bfloat16 autocast."""
import torch

from usaid.losses import USALoss

SMALL_USA = {'type': 'USANet', 'backbone': 'resnet18', 'pretrained': 'none'}


def test_bf16_precision_segments_under_bfloat16_autocast():
    loss = USALoss(network=SMALL_USA, precision='bf16')
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.1
    with torch.autocast('cpu', dtype=torch.bfloat16):
        by_hand = loss.net(image.clamp(0, 1)).float()
    fp32 = loss.net(image.clamp(0, 1))
    logits = loss.segment(image)
    assert logits.dtype == torch.float32 and torch.equal(logits, by_hand)
    assert not torch.equal(logits, fp32)  # bfloat16 rounding shows

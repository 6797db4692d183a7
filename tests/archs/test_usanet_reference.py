"""USANet against a literal construction of REFERENCE section 1's USA module, with the same weights.

The reference below is written from the spec, not from ``usanet_arch.py``: a torchvision ResNet gives C2..C5, 1x1
laterals to 256 channels with a bilinear top-down path give M5..M2, two 3x3 convolutions 256 -> 256 -> 128 per level
give P2..P5, P3..P5 are upsampled bilinearly to P2's size and concatenated with P2, and one 3x3 convolution gives the
K logits. The input is the image minus the authors' RGB mean, with no division by a standard deviation.
"""
import pytest
import torch
import torch.nn.functional as F
import torchvision

from usaid.archs import USANet

AUTHORS_MEAN = (0.48109378172, 0.4575245789, 0.4078705409)  # REFERENCE section 1
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision's documented statistics


def shared_resnet(net, backbone):
    """A torchvision ResNet holding ``net``'s backbone weights (torchvision's own names)."""
    resnet = getattr(torchvision.models, backbone)(weights=None)
    state = {}
    for key, value in net.state_dict().items():
        if key.startswith('stem.0.'):
            state['conv1.' + key[7:]] = value
        elif key.startswith('stem.1.'):
            state['bn1.' + key[7:]] = value
        elif key.startswith('stages.'):
            stage, rest = key[7:].split('.', 1)
            state[f'layer{int(stage) + 1}.{rest}'] = value
    missing, _ = resnet.load_state_dict(state, strict=False)
    assert [k for k in missing if not k.startswith('fc.')] == []
    return resnet


def literal_usa(resnet, laterals, smooth, classifier, x, mean, std):
    """REFERENCE section 1, written out: logits of images ``x`` in [0, 1]."""
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    out = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
    c2 = resnet.layer1(out)
    c3 = resnet.layer2(c2)
    c4 = resnet.layer3(c3)
    c5 = resnet.layer4(c4)

    def lateral(conv, c):
        return F.conv2d(c, conv.weight, conv.bias)

    def up(t, like):
        return F.interpolate(t, size=like.shape[-2:], mode='bilinear', align_corners=False)

    m5 = lateral(laterals[3], c5)
    m4 = lateral(laterals[2], c4) + up(m5, c4)
    m3 = lateral(laterals[1], c3) + up(m4, c3)
    m2 = lateral(laterals[0], c2) + up(m3, c2)

    def smoothed(pair, m):
        first, second = pair
        return F.conv2d(F.conv2d(m, first.weight, first.bias, padding=1), second.weight, second.bias, padding=1)

    p2, p3, p4, p5 = (smoothed(pair, m) for pair, m in zip(smooth, (m2, m3, m4, m5)))
    features = torch.cat([p2, up(p3, p2), up(p4, p2), up(p5, p2)], dim=1)
    assert features.shape[1] == 512
    return F.conv2d(features, classifier.weight, classifier.bias, padding=1)


def perturbed(net, seed):
    """Give the FPN and head larger random weights and non-zero biases, so every path shows in the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (*net.laterals, *net.smooth, net.classifier):
            for conv in module.modules():
                if isinstance(conv, torch.nn.Conv2d):
                    fan_in = conv.weight[0].numel()
                    conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) / fan_in ** 0.5)
                    conv.bias.copy_(0.1 * torch.randn(conv.bias.shape, generator=generator))
    return net


@pytest.mark.parametrize('backbone, bn_mode, input_norm, size', [
    ('resnet18', 'train', 'seed', (50, 37)),
    ('resnet18', 'eval', 'seed', (48, 48)),
    ('resnet18', 'eval', 'imagenet', (40, 56)),
    ('resnet50', 'train', 'seed', (36, 44)),
])
def test_logits_equal_the_literal_construction(backbone, bn_mode, input_norm, size):
    net = perturbed(USANet(backbone=backbone, pretrained='none', num_classes=5, bn_mode=bn_mode,
                           input_norm=input_norm, init_seed=3), seed=1)
    resnet = shared_resnet(net, backbone)
    resnet.train(bn_mode == 'train')  # batch statistics, as the original code runs it
    stage_channels = [64, 128, 256, 512] if backbone == 'resnet18' else [256, 512, 1024, 2048]
    # the spec's layer shapes, independent of the module's attribute layout
    laterals = [net.laterals[i] for i in range(4)]
    assert [tuple(c.weight.shape) for c in laterals] == [(256, c, 1, 1) for c in stage_channels]
    smooth = [tuple(pair) for pair in net.smooth]
    assert all(tuple(a.weight.shape) == (256, 256, 3, 3) and tuple(b.weight.shape) == (128, 256, 3, 3)
               for a, b in smooth)
    assert tuple(net.classifier.weight.shape) == (5, 512, 3, 3)
    mean, std = (AUTHORS_MEAN, (1., 1., 1.)) if input_norm == 'seed' else (IMAGENET_MEAN, IMAGENET_STD)

    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = literal_usa(resnet, laterals, smooth, net.classifier, x, mean, std)
        logits = net(x)
    assert logits.shape == expected.shape == (2, 5, (size[0] + 3) // 4, (size[1] + 3) // 4)
    scale = expected.abs().max().item()
    assert scale > 0.1
    assert torch.allclose(logits, expected, rtol=1e-4, atol=1e-5 * scale), (logits - expected).abs().max()


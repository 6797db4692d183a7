import os
from dataclasses import dataclass
from typing import Annotated, Literal, get_args

import torch
import torch.nn.functional as F
import torchvision
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from usaid.checkpoint import canonical_state_dict
from usaid.declarations import Declaration, ExistingFile, declared, option
from usaid.torchvision_weights import IMAGENET_MEAN, IMAGENET_STD, load_imagenet_state_dict

# The RGB mean the authors subtract (no division by a standard deviation).
SEED_MEAN = (0.48109378172, 0.4575245789, 0.4078705409)

Backbone = Literal['resnet18', 'resnet34', 'resnet50', 'resnet101']
BACKBONES = get_args(Backbone)


def batch_statistics_problem(bn_mode, batch, height, width):
    """Why a USANet with ``bn_mode`` cannot segment ``batch`` images of ``height`` x ``width``, or None if it can.

    With ``bn_mode: train`` (the original's) BatchNorm normalises with the batch's own statistics, which PyTorch
    refuses for one value per channel: at the ResNet's deepest stage (stride 32, each of its five halvings rounding
    up) a batch must hold at least two values, e.g. one image of 33 x 33 or more, or two images of any size.
    """
    deepest_h, deepest_w = height, width
    for _ in range(5):
        deepest_h, deepest_w = (deepest_h + 1) // 2, (deepest_w + 1) // 2
    if bn_mode != 'train' or batch * deepest_h * deepest_w >= 2:
        return None
    return (f'the USA network (bn_mode: train, batch statistics) cannot segment {batch} image(s) of {height}x{width}: '
            'its deepest stage (stride 32) would hold one value per channel; expected a batch of at least 2, or '
            'images of at least 33x33')


@ARCH_REGISTRY.register()
@declared
class USANet(nn.Module):
    """The USA module of U-SAID: a ResNet + FPN feature embedding and an unsupervised K-way segmentation head.

    ResNet stages C2..C5 (strides 4..32) -> 1x1 laterals to 256 channels with a bilinear top-down path (M5..M2)
    -> per level two 3x3 convolutions 256 -> 256 -> 128 (P2..P5) -> P3..P5 upsampled bilinearly to P2's size and
    concatenated with P2 (512 channels) -> one 3x3 convolution to ``num_classes`` logits at stride 4.

    The FPN and head are initialised N(0, 0.01) with zero bias and never trained; only the backbone may carry
    pretrained weights. Parameters are built from ``init_seed`` inside a forked RNG, so the same options always
    give the same network, on every rank and after a resume, without touching the global random state.

    ``pretrained`` 'imagenet' takes torchvision's ImageNet weights from $TORCH_HOME (downloaded once); ``input_norm``
    'seed' subtracts the authors' RGB mean only (as the original), 'imagenet' also divides by ImageNet's std;
    ``bn_mode`` 'train' normalises with batch statistics (as the original) without updating the running statistics,
    and the mode is fixed: ``.train()``/``.eval()`` of a parent module do not change it.
    """

    @dataclass(frozen=True, kw_only=True)
    class Options(Declaration):
        backbone: Backbone = option('resnet101', 'torchvision ResNet of the feature embedding')
        num_classes: int = option(21, 'Segmentation classes K', minimum=1)
        pretrained: Annotated[str, ExistingFile('imagenet', 'none', what='torchvision ResNet weights file')] = option(
            'imagenet', "Backbone weights: 'imagenet' (torchvision's), a state dict file, or 'none' (random)")
        input_norm: Literal['seed', 'imagenet'] = option('seed', "Input normalisation: the authors' mean, or "
                                                                 "ImageNet's mean and std")
        bn_mode: Literal['train', 'eval'] = option('train', 'BatchNorm with batch statistics (train) or running '
                                                            'statistics (eval)')
        init_seed: int = option(0, 'Seed of the random initialisation (FPN, head, and an unpretrained backbone)',
                                minimum=0)

    def __init__(self, **options):
        super().__init__()
        opt = self.Options.parse(options, 'USANet')
        backbone, bn_mode = opt.backbone, opt.bn_mode
        self.bn_mode = bn_mode
        self.num_classes = opt.num_classes

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(opt.init_seed)
            resnet = getattr(torchvision.models, backbone)(weights=None)
            stage_channels = [getattr(resnet, f'layer{i}')[-1].conv1.in_channels for i in range(1, 5)]
            self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
            self.stages = nn.ModuleList([resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4])
            self.laterals = nn.ModuleList([nn.Conv2d(c, 256, 1) for c in stage_channels])
            self.smooth = nn.ModuleList([
                nn.Sequential(nn.Conv2d(256, 256, 3, padding=1), nn.Conv2d(256, 128, 3, padding=1)) for _ in range(4)
            ])
            self.classifier = nn.Conv2d(4 * 128, opt.num_classes, 3, padding=1)
            for module in [*self.laterals, *self.smooth, self.classifier]:
                for conv in module.modules():
                    if isinstance(conv, nn.Conv2d):
                        nn.init.normal_(conv.weight, 0, 0.01)
                        nn.init.zeros_(conv.bias)
        if opt.pretrained != 'none':
            self._load_backbone(backbone, opt.pretrained)

        if opt.input_norm == 'seed':
            mean, std = SEED_MEAN, (1., 1., 1.)
        else:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        self.register_buffer('mean', torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std).view(1, 3, 1, 1), persistent=False)

        if bn_mode == 'train':
            # batch statistics without updating the running ones, so the frozen network never changes
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.track_running_stats = False
        self.train()

    def _load_backbone(self, backbone, pretrained):
        if pretrained == 'imagenet':
            state = load_imagenet_state_dict(backbone)
        else:
            state = canonical_state_dict(os.path.expanduser(pretrained), allow_bare=True)
        # torchvision's key names, mapped onto stem / stages; the classifier 'fc' is not used
        renamed = {}
        for key, value in state.items():
            prefix, _, rest = key.partition('.')
            if prefix in ('conv1', 'bn1'):
                renamed[f"stem.{0 if prefix == 'conv1' else 1}.{rest}"] = value
            elif prefix.startswith('layer'):
                renamed[f'stages.{int(prefix[5:]) - 1}.{rest}'] = value
        own = {k: v for k, v in self.state_dict().items() if k.startswith(('stem.', 'stages.'))}
        missing, unexpected = sorted(set(own) - set(renamed)), sorted(set(renamed) - set(own))
        wrong = sorted(k for k in set(own) & set(renamed) if own[k].shape != renamed[k].shape)
        if missing or unexpected or wrong:
            raise ValueError(f'USANet: {pretrained} does not fit a torchvision {backbone}: missing keys {missing[:5]}, '
                             f'unexpected keys {unexpected[:5]}, wrong shapes {wrong[:5]}.')
        self.load_state_dict(renamed, strict=False)

    def train(self, mode=True):
        return super().train(self.bn_mode == 'train')

    def forward(self, x):
        """Segmentation logits (N, num_classes, ceil(H/4), ceil(W/4)) of RGB images ``x`` in [0, 1]."""
        return self.forward_normalized((x - self.mean) / self.std)

    def forward_normalized(self, x):
        """Segmentation logits of images already normalised by ``input_norm`` (as the authors' script feeds it)."""
        features = []
        out = self.stem(x)
        for stage in self.stages:
            out = stage(out)
            features.append(out)
        merged = self.laterals[3](features[3])
        pyramid = [merged]
        for level in (2, 1, 0):
            merged = self.laterals[level](features[level]) + F.interpolate(
                merged, size=features[level].shape[-2:], mode='bilinear', align_corners=False)
            pyramid.insert(0, merged)
        levels = [smooth(m) for smooth, m in zip(self.smooth, pyramid)]
        size = levels[0].shape[-2:]
        levels = [levels[0]] + [F.interpolate(p, size=size, mode='bilinear', align_corners=False) for p in levels[1:]]
        return self.classifier(torch.cat(levels, dim=1))

import os

import torch
import torch.nn.functional as F
import torchvision
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

# The RGB mean the authors subtract (no division by a standard deviation), and torchvision's ImageNet statistics.
SEED_MEAN = (0.48109378172, 0.4575245789, 0.4078705409)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BACKBONES = ('resnet18', 'resnet34', 'resnet50', 'resnet101')


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


def imagenet_weights_path(backbone):
    """Where torchvision keeps (and looks for) the ImageNet weights of ``backbone``."""
    weights = torchvision.models.get_model_weights(backbone).IMAGENET1K_V1
    return weights.url, os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(weights.url))


def load_imagenet_state_dict(backbone):
    """torchvision's ImageNet weights, from its cache or downloaded; a clear error says what to place where."""
    url, path = imagenet_weights_path(backbone)
    try:
        return torch.hub.load_state_dict_from_url(url, map_location='cpu', check_hash=True, weights_only=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a bad hash is a RuntimeError
        raise RuntimeError(
            f"USANet: pretrained='imagenet' needs torchvision's {backbone} ImageNet weights, which are neither in "
            f'the cache nor downloadable here ({error}). Download {url} and place it at {path} '
            "(the folder is $TORCH_HOME/hub/checkpoints), or set the USANet option 'pretrained' to a local "
            "weights file or to 'none'.") from error


@ARCH_REGISTRY.register()
class USANet(nn.Module):
    """The USA module of U-SAID: a ResNet + FPN feature embedding and an unsupervised K-way segmentation head.

    ResNet stages C2..C5 (strides 4..32) -> 1x1 laterals to 256 channels with a bilinear top-down path (M5..M2)
    -> per level two 3x3 convolutions 256 -> 256 -> 128 (P2..P5) -> P3..P5 upsampled bilinearly to P2's size and
    concatenated with P2 (512 channels) -> one 3x3 convolution to ``num_classes`` logits at stride 4.

    The FPN and head are initialised N(0, 0.01) with zero bias and never trained; only the backbone may carry
    pretrained weights. Parameters are built from ``init_seed`` inside a forked RNG, so the same options always
    give the same network, on every rank and after a resume, without touching the global random state.

    Args:
        backbone (str): torchvision ResNet: resnet18, resnet34, resnet50 or resnet101. Default: resnet101.
        num_classes (int): Segmentation classes K. Default: 21.
        pretrained (str): Backbone weights: 'imagenet' (torchvision's ImageNet weights, from $TORCH_HOME),
            a path to a torchvision ResNet state dict, or 'none' (random). Default: 'imagenet'.
        input_norm (str): 'seed' subtracts the authors' RGB mean only (as the original); 'imagenet' subtracts the
            ImageNet mean and divides by its std. Default: 'seed'.
        bn_mode (str): 'train' normalises with batch statistics (as the original) without updating the running
            statistics; 'eval' uses the running statistics. The mode is fixed: ``.train()``/``.eval()`` of a
            parent module do not change it. Default: 'train'.
        init_seed (int): Seed of the random initialisation (FPN, head, and the backbone when not pretrained).
            Default: 0.
    """

    def __init__(self, backbone='resnet101', num_classes=21, pretrained='imagenet', input_norm='seed',
                 bn_mode='train', init_seed=0):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f'USANet: backbone {backbone!r} is not supported; expected one of {", ".join(BACKBONES)}.')
        if input_norm not in ('seed', 'imagenet'):
            raise ValueError(f"USANet: input_norm {input_norm!r}: expected 'seed' or 'imagenet'.")
        if bn_mode not in ('train', 'eval'):
            raise ValueError(f"USANet: bn_mode {bn_mode!r}: expected 'train' or 'eval'.")
        self.bn_mode = bn_mode
        self.num_classes = num_classes

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            resnet = getattr(torchvision.models, backbone)(weights=None)
            stage_channels = [getattr(resnet, f'layer{i}')[-1].conv1.in_channels for i in range(1, 5)]
            self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
            self.stages = nn.ModuleList([resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4])
            self.laterals = nn.ModuleList([nn.Conv2d(c, 256, 1) for c in stage_channels])
            self.smooth = nn.ModuleList([
                nn.Sequential(nn.Conv2d(256, 256, 3, padding=1), nn.Conv2d(256, 128, 3, padding=1)) for _ in range(4)
            ])
            self.classifier = nn.Conv2d(4 * 128, num_classes, 3, padding=1)
            for module in [*self.laterals, *self.smooth, self.classifier]:
                for conv in module.modules():
                    if isinstance(conv, nn.Conv2d):
                        nn.init.normal_(conv.weight, 0, 0.01)
                        nn.init.zeros_(conv.bias)
        if pretrained != 'none':
            self._load_backbone(backbone, pretrained)

        if input_norm == 'seed':
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
        elif os.path.isfile(pretrained):
            state = torch.load(pretrained, map_location='cpu', weights_only=True)
            state = state.get('params', state)
        else:
            raise FileNotFoundError(f"USANet: pretrained {pretrained!r} is neither 'imagenet', 'none' nor an "
                                    'existing weights file.')
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

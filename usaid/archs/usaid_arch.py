import math

from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn


@ARCH_REGISTRY.register()
class USAID(nn.Module):
    """The U-SAID denoiser: a colour DnCNN with residual learning (Zhang et al. 2017; Wang et al. 2019).

    ``num_layers`` 3x3 convolutions without bias: Conv+ReLU, then ``num_layers - 2`` x (Conv+BN+ReLU), then Conv.
    The body predicts the noise; :meth:`forward` returns the restored image ``x - body(x)`` (BasicSR's convention).
    The modules sit in one ``nn.Sequential`` named ``dncnn`` with the authors' indices (conv at 0, 2, 5, ..., BN at
    3, 6, ...), so the released checkpoints map key for key onto this layout.

    Args:
        num_in_ch (int): Channels of the noisy input. Default: 3.
        num_out_ch (int): Channels of the predicted noise; must equal ``num_in_ch`` for the residual. Default: 3.
        num_feat (int): Feature channels. Default: 64.
        num_layers (int): Convolution layers in all (at least 2). Default: 20, which gives 669,312 parameters.
        use_bn (bool): BatchNorm after the middle convolutions. Default: True.
    """

    def __init__(self, num_in_ch=3, num_out_ch=3, num_feat=64, num_layers=20, use_bn=True):
        super().__init__()
        if num_out_ch != num_in_ch:
            raise ValueError(f'USAID: num_out_ch ({num_out_ch}) must equal num_in_ch ({num_in_ch}): the network '
                             'subtracts its output from its input.')
        if num_layers < 2:
            raise ValueError(f'USAID: num_layers must be at least 2, got {num_layers}.')
        layers = [nn.Conv2d(num_in_ch, num_feat, 3, padding=1, bias=False), nn.ReLU(inplace=True)]
        for _ in range(num_layers - 2):
            layers.append(nn.Conv2d(num_feat, num_feat, 3, padding=1, bias=False))
            if use_bn:
                layers.append(nn.BatchNorm2d(num_feat))
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Conv2d(num_feat, num_out_ch, 3, padding=1, bias=False))
        self.dncnn = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self):
        """The authors' initialisation: Kaiming-normal (fan_in) convolutions; BN weights ~ N(0, sqrt(2/9/64))
        clamped to +-0.025, BN biases 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, a=0, mode='fan_in')
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 0, math.sqrt(2. / 9. / 64.)).data.clamp_(-0.025, 0.025)
                nn.init.zeros_(module.bias)

    def forward(self, x):
        return x - self.dncnn(x)

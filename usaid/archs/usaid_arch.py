import math
from dataclasses import dataclass

from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from usaid.declarations import Declaration, declared, option


@ARCH_REGISTRY.register()
@declared
class USAID(nn.Module):
    """The U-SAID denoiser: a colour DnCNN with residual learning (Zhang et al. 2017; Wang et al. 2019).

    ``num_layers`` 3x3 convolutions without bias: Conv+ReLU, then ``num_layers - 2`` x (Conv+BN+ReLU), then Conv.
    The body predicts the noise; :meth:`forward` returns the restored image ``x - body(x)`` (BasicSR's convention).
    The modules sit in one ``nn.Sequential`` named ``dncnn`` with the authors' indices (conv at 0, 2, 5, ..., BN at
    3, 6, ...), so the released checkpoints map key for key onto this layout. The defaults give 669,312 parameters.
    """

    @dataclass(frozen=True, kw_only=True)
    class Options(Declaration):
        num_in_ch: int = option(3, 'Channels of the noisy input', minimum=1)
        num_out_ch: int = option(3, 'Channels of the predicted noise; must equal num_in_ch for the residual',
                                 minimum=1)
        num_feat: int = option(64, 'Feature channels', minimum=1)
        num_layers: int = option(20, 'Convolution layers in all', minimum=2)
        use_bn: bool = option(True, 'BatchNorm after the middle convolutions')

        def rules(self):
            if self.num_out_ch != self.num_in_ch:
                yield 'num_out_ch', (f'found {self.num_out_ch}, but num_in_ch is {self.num_in_ch}; expected the same: '
                                     'the network subtracts its output from its input')

    def __init__(self, **options):
        super().__init__()
        opt = self.Options.parse(options, 'USAID')
        num_in_ch, num_feat, num_layers = opt.num_in_ch, opt.num_feat, opt.num_layers
        layers = [nn.Conv2d(num_in_ch, num_feat, 3, padding=1, bias=False), nn.ReLU(inplace=True)]
        for _ in range(num_layers - 2):
            layers.append(nn.Conv2d(num_feat, num_feat, 3, padding=1, bias=False))
            if opt.use_bn:
                layers.append(nn.BatchNorm2d(num_feat))
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Conv2d(num_feat, opt.num_out_ch, 3, padding=1, bias=False))
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

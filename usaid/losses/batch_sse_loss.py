from dataclasses import dataclass

from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn

from usaid.declarations import Declaration, declared, option


@LOSS_REGISTRY.register()
@declared
class BatchSSELoss(nn.Module):
    """Squared error summed over each image, averaged over the batch and halved: ``sum ||pred - target||^2 / (2N)``.

    The normalisation of DnCNN and the U-SAID authors' script. BasicSR's ``MSELoss`` averages over pixels instead,
    which only rescales the loss (by H*W*C/2); with Adam the two train alike, but the weights against other loss
    terms differ.
    """

    @dataclass(frozen=True, kw_only=True)
    class Options(Declaration):
        loss_weight: float = option(1.0, 'Weight of this loss')

    def __init__(self, **options):
        super().__init__()
        self.loss_weight = self.Options.parse(options, 'BatchSSELoss').loss_weight

    def forward(self, pred, target, weight=None):
        if weight is not None:
            raise ValueError('BatchSSELoss does not take a per-pixel weight.')
        return self.loss_weight * (pred - target).pow(2).sum() / (2 * pred.shape[0])

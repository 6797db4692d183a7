from usaid.losses.batch_sse_loss import BatchSSELoss
from usaid.losses.usa_loss import USALoss

__all__ = ['BatchSSELoss', 'USALoss']

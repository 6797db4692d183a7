from usaid.archs.usaid_arch import USAID
from usaid.archs.usanet_arch import USANet

__all__ = ['USAID', 'USANet']

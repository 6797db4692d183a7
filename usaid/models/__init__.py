from usaid.models.usaid_model import USAIDModel

__all__ = ['USAIDModel']

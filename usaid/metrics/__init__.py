"""Metrics registered in BasicSR's ``METRIC_REGISTRY`` (usable in any option file's ``val: metrics``)."""
from usaid.metrics.lpips_metric import calculate_lpips  # noqa: F401  (registration by import)

"""U-SAID for BasicSR: importing this package registers its components in BasicSR's registries and makes BasicSR's
pipelines check option files first (:mod:`usaid.options`). From Python: ``usaid.load_denoiser`` and
``usaid.denoise`` (:mod:`usaid.api`).

``compat`` is applied first, because BasicSR 1.4.2 cannot be imported on a current torchvision without it.
"""
from usaid import compat

compat.apply()

from usaid import archs, data, losses, metrics, models, options  # noqa: E402,F401  (registration by import)

options.install()

from usaid.api import denoise, load_denoiser  # noqa: E402,F401  (the Python API)

__version__ = '0.1.0'

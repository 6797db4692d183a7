"""Optional dependencies, imported where a feature needs them, with one message that names the extra to install.

Training needs only the core requirements; exports and their checks bring their own (``setup.py``
``extras_require``): ``safetensors``, ``onnx`` (onnx, onnxscript for torch's exporter, onnxruntime to check and run
the result), ``spandrel``; ``export`` is all of them.
"""
import importlib

from usaid.errors import MissingExtraError


def require(extra, *modules, feature):
    """The imported ``modules`` (a tuple of them, or the module when one is named) that ``feature`` needs, or
    :class:`~usaid.errors.MissingExtraError` naming the extra of this package that installs them."""
    imported = []
    for name in modules:
        try:
            imported.append(importlib.import_module(name))
        except ImportError as error:
            raise MissingExtraError(f'{feature} needs the Python package {name!r}, which is not installed ({error}); '
                                    f'install it with: pip install "basicsr-usaid[{extra}]"') from None
    return imported[0] if len(imported) == 1 else tuple(imported)

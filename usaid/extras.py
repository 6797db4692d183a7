"""Optional dependencies, imported where a feature needs them, with one message that names the extra to install.

Training needs only the core requirements; exports and their checks bring their own (``setup.py``
``extras_require``): ``safetensors``, ``onnx`` (onnx, onnxscript for torch's exporter, onnxruntime to check and run
the result), ``spandrel``; ``export`` is all of them.
"""
import importlib
import importlib.metadata
import re

from usaid.errors import MissingExtraError

DISTRIBUTION = 'basicsr-usaid'


def require(extra, *modules, feature):
    """The imported ``modules`` (a tuple of them, or the module when one is named) that ``feature`` needs, or
    :class:`~usaid.errors.MissingExtraError` naming the extra of this package that installs them."""
    imported = []
    for name in modules:
        try:
            imported.append(importlib.import_module(name))
        except ImportError as error:
            raise MissingExtraError(f'{feature} needs the Python package {name!r}, which is not installed ({error}); '
                                    f'install the {extra} extra: pip install {" ".join(packages_of(extra))} (in a '
                                    f'checkout of this package: pip install ".[{extra}]")') from None
    return imported[0] if len(imported) == 1 else tuple(imported)


def packages_of(extra):
    """The requirements of ``extra`` as setup.py declares them (read from the installed metadata), quoted for a
    shell; the extra itself where the metadata is not there."""
    try:
        requirements = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        requirements = []
    marker = re.compile(r';\s*extra\s*==\s*["\']' + re.escape(extra) + r'["\']')
    found = [f"'{r.split(';')[0].strip()}'" for r in requirements if marker.search(r)]
    return found or [f'"{DISTRIBUTION}[{extra}]"']

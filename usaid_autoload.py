"""Make BasicSR's own entry points see U-SAID once basicsr-usaid is installed.

``usaid-autoload.pth`` (installed into site-packages) calls :func:`install` at interpreter start. That only
puts a small finder on ``sys.meta_path``: nothing is imported, so a process that never imports ``basicsr``
pays nothing. When ``basicsr`` is first imported, the finder imports ``usaid`` instead, which applies the
compatibility fixes, imports ``basicsr`` as usual and registers U-SAID's components; the importer then gets
that same ``basicsr`` module.

Switch it off with the environment variable ``USAID_AUTOLOAD=0``.
"""
import importlib.abc
import importlib.util
import os
import sys
import warnings


class _ImportUSAIDWithBasicSR(importlib.abc.MetaPathFinder, importlib.abc.Loader):

    def find_spec(self, fullname, path=None, target=None):
        if fullname != 'basicsr':
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=True)

    def create_module(self, spec):
        sys.meta_path.remove(self)  # one shot: from here on basicsr is found as usual
        try:
            import usaid  # noqa: F401  (imports basicsr, then registers U-SAID)
        except Exception as error:  # a broken plugin must not take BasicSR down with it
            warnings.warn(f'basicsr-usaid could not register U-SAID in BasicSR ({error!r}); '
                          'set USAID_AUTOLOAD=0 to skip it.')
        module = importlib.import_module('basicsr')
        self._real_spec = module.__spec__
        return module

    def exec_module(self, module):
        # the import system stamped our spec on the already executed module: give it its own back
        module.__spec__ = self._real_spec


def install():
    if os.environ.get('USAID_AUTOLOAD', '1') == '0' or 'basicsr' in sys.modules:
        return
    if not any(isinstance(finder, _ImportUSAIDWithBasicSR) for finder in sys.meta_path):
        sys.meta_path.insert(0, _ImportUSAIDWithBasicSR())

"""Packaging for basicsr-usaid.

``usaid-autoload.pth`` is installed next to the packages (site-packages) through ``data_files`` so that it
also lands there for editable installs: it makes BasicSR's own entry points see U-SAID (see README).
"""
import os
import sysconfig

from setuptools import find_packages, setup
from setuptools.dist import Distribution


class _Distribution(Distribution):
    # setuptools' editable_wheel installs data files only if the distribution has `has_data`, a name it never
    # defines (it has `has_data_files`): without this an editable install silently drops the .pth.
    def has_data(self):
        return self.has_data_files()


# data_files are installed relative to the scheme's data root (sys.prefix for a venv); site-packages is
# purelib, so the .pth goes to purelib's path relative to that root.
_paths = sysconfig.get_paths()
SITE_PACKAGES = os.path.relpath(_paths['purelib'], _paths['data'])

EXTRA_SAFETENSORS = ['safetensors>=0.4']
EXTRA_ONNX = ['onnx>=1.16', 'onnxscript>=0.2', 'onnxruntime>=1.18']  # onnxscript: torch's ONNX exporter needs it
EXTRA_SPANDREL = ['spandrel>=0.4']
EXTRA_PERCEPTUAL = ['lpips>=0.1.4']  # LPIPS, the authors' package (ships its linear layers)
EXTRA_MUTATION = ['mutmut==3.8.1']  # make mutation (docs/testing.md#mutation-testing); its config is in setup.cfg

setup(
    distclass=_Distribution,
    name='basicsr-usaid',
    version='0.1.0',
    description='U-SAID (segmentation-aware image denoising) as a BasicSR plugin',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='MIT',
    python_requires='>=3.9',
    packages=find_packages(include=['usaid', 'usaid.*']),
    py_modules=['usaid_autoload'],
    data_files=[(SITE_PACKAGES, ['usaid-autoload.pth'])],
    install_requires=[
        'basicsr==1.4.2',
        'torch>=2.5',  # torch.serialization.safe_globals
        'torchvision>=0.16',
        'numpy',
        'opencv-python',
        'lmdb',
        'pyyaml',
        'tensorboard',
        'scipy',
        'tqdm',
        'scikit-image',
        'matplotlib',
        # imported by basicsr 1.4.2 itself; listed because it is installed without its own requirement set
        'addict',
        'future',
        'requests',
        'yapf',
        'Pillow',
    ],
    extras_require={
        # optional: exports (usaid-export), safetensors checkpoints, perceptual metrics; training needs none of them
        'safetensors': EXTRA_SAFETENSORS,
        'onnx': EXTRA_ONNX,
        'spandrel': EXTRA_SPANDREL,
        'export': EXTRA_SAFETENSORS + EXTRA_ONNX + EXTRA_SPANDREL,
        'perceptual': EXTRA_PERCEPTUAL,
        'mutation': EXTRA_MUTATION,
        # the tests also check every export, and make mutation's set-up and score
        'test': ['pytest>=7', 'pytest-timeout', 'ruff==0.17.6', 'jsonschema>=4.18', *EXTRA_SAFETENSORS, *EXTRA_ONNX,
                 *EXTRA_SPANDREL, *EXTRA_PERCEPTUAL, *EXTRA_MUTATION],
    },
    entry_points={
        'console_scripts': [
            'usaid-train = usaid.train:main',
            'usaid-test = usaid.test:main',
            'usaid-convert = usaid.tools.convert:main',
            'usaid-denoise = usaid.tools.denoise:main',
            'usaid-make-lmdb = usaid.tools.make_lmdb:main',
            'usaid-visualize = usaid.tools.visualize:main',
            'usaid-plot-log = usaid.tools.plot_log:main',
            'usaid-compare = usaid.tools.compare:main',
            'usaid-segeval = usaid.tools.segeval:main',
            'usaid-export = usaid.tools.export:main',
            'usaid-taskeval = usaid.tools.taskeval:main',
            'usaid-reproduce = usaid.tools.reproduce:main',
        ],
    },
)

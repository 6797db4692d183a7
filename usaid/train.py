"""``usaid-train -opt OPTIONS.yml``: BasicSR's training pipeline with U-SAID registered.

Takes all of BasicSR's flags (``--auto_resume``, ``--debug``, ``--force_yml``, ``--launcher``). Experiments,
TensorBoard logs and checkpoints go under the current directory. Also ``python -m usaid.train`` and
``torchrun --nproc_per_node=N -m usaid.train -opt OPTIONS.yml --launcher pytorch``.
"""
import os
import sys

import usaid  # noqa: F401  (applies the compatibility fixes and registers U-SAID)
from basicsr.train import train_pipeline

from usaid import compat
from usaid.errors import USAIDError


def main():
    try:
        train_pipeline(os.getcwd())
    except USAIDError as error:  # a message for the user, not a bug: no traceback
        compat.note_failure()
        sys.exit(f'usaid-train: {error}')


if __name__ == '__main__':
    main()

"""``usaid-test -opt OPTIONS.yml``: BasicSR's test pipeline with U-SAID registered; results under ./results."""
import os
import sys

import usaid  # noqa: F401  (applies the compatibility fixes and registers U-SAID)
from basicsr.test import test_pipeline

from usaid.errors import USAIDError


def main():
    try:
        test_pipeline(os.getcwd())
    except USAIDError as error:  # a message for the user, not a bug: no traceback
        sys.exit(f'usaid-test: {error}')


if __name__ == '__main__':
    main()

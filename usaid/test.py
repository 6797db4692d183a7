"""``usaid-test -opt OPTIONS.yml``: BasicSR's test pipeline with U-SAID registered; results under ./results."""
import os

import usaid  # noqa: F401  (applies the compatibility fixes and registers U-SAID)
from basicsr.test import test_pipeline


def main():
    test_pipeline(os.getcwd())


if __name__ == '__main__':
    main()

"""``python -m sonossl``: the same as the ``sonossl`` console script."""

import sys

from sonossl.cli import main

sys.exit(main())

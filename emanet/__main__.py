"""``python -m emanet``: the ``emanet`` command without an installed entry point (e.g. a checkout
on ``PYTHONPATH``)."""

import sys

from emanet.cli import main

sys.exit(main())

"""``python -m emanet.training``: what ``torchrun`` launches in every process (the same options
as ``emanet train``)."""

import sys

from emanet.training.loop import main

sys.exit(main())

"""``python -m vprompt`` (and ``torchrun -m vprompt``) runs the command line."""

import sys

from .cli import main

sys.exit(main())

"""``python -m ctpress``: the ``ctpress`` command."""

import sys

from .cli import main

sys.exit(main())
